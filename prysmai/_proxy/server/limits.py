"""Per-project limits: requests per minute and a monthly budget in USD.

Both are checked on the request path before a request is forwarded, in memory and without
waiting on anything. The rate limit is a sliding window: a project with ``requests_per_minute = N``
gets its N+1th request within any 60 seconds refused, and ``retry-after`` says when the oldest of
the N leaves the window.

The budget compares what the project spent this UTC calendar month with ``monthly_budget_usd``:
the spend is read from the store at start-up (its rollups), then each answer's cost is counted by
the proxy as the answer completes, before its last bytes reach the client (the forwarder prices its
usage: :func:`~..store.capture.answer_cost`); what the proxy could not count then (an answer cut
off, a failure) the writer counts when it prices the trace. A request is admitted while the spend
is below the budget, so:

* a client that waits for each answer before sending the next stops exactly at the budget: the
  request whose cost reaches it is the last one admitted;
* with concurrent requests, the overshoot is at most the requests already in flight when the
  budget is reached (each is answered, and counted): with C requests at a time, at most C - 1
  requests beyond the one that reached it. They are never cut off.

Counters are kept by project name, so a reload that changes a limit keeps what was counted.
"""

from __future__ import annotations

import calendar
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config.projects import Project

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: what the proxy answers with ``429``."""

    message: str
    type: str
    code: str
    headers: tuple[tuple[bytes, bytes], ...]


def month_start(now: float) -> float:
    """The first second of ``now``'s UTC calendar month (unix time)."""
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


class Limits:
    """The counters behind every project's limits (one instance per proxy)."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._spent: dict[str, float] = {}
        self._month = month_start(time.time())
        self._lock = threading.Lock()  # spend is added by the writer thread

    def seed(self, spent: Mapping[str, float], since: float) -> None:
        """Start the month's spend from the store's figures (USD by project since ``since``)."""
        with self._lock:
            if since == self._month:
                for project, usd in spent.items():
                    self._spent[project] = self._spent.get(project, 0.0) + usd

    def add_spend(self, project: str, usd: float | None, created_at: float) -> None:
        """Count the cost of a finished trace (called by the writer thread)."""
        if not usd:
            return
        with self._lock:
            if created_at >= self._month:
                self._spent[project] = self._spent.get(project, 0.0) + usd

    def spent(self, project: str) -> float:
        """USD spent by ``project`` this month, as counted so far."""
        self._roll(time.time())
        return self._spent.get(project, 0.0)

    def _roll(self, now: float) -> None:
        start = month_start(now)
        if start != self._month:
            with self._lock:
                if start != self._month:
                    self._month = start
                    self._spent.clear()

    def check(self, project: Project, now: float | None = None) -> Refusal | None:
        """``None`` if ``project`` may send one more request now (which is then counted), else
        why not."""
        limits = project.limits
        if limits.monthly_budget_usd is not None:
            spent = self.spent(project.name)
            if spent >= limits.monthly_budget_usd:
                return Refusal(
                    f"Project {project.name!r} has used its monthly budget of "
                    f"${limits.monthly_budget_usd:g} (spent ${spent:.4f} this month, UTC). Raise "
                    "monthly_budget_usd in the proxy's config, or wait for the next month.",
                    "insufficient_quota",
                    "project_budget_exceeded",
                    ((b"x-should-retry", b"false"),),
                )
        rpm = limits.requests_per_minute
        if rpm is None:
            return None
        now = time.monotonic() if now is None else now
        window = self._windows.get(project.name)
        if window is None:
            window = self._windows[project.name] = deque()
        horizon = now - WINDOW_SECONDS
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= rpm:
            wait = max(1, math.ceil(window[len(window) - rpm] - horizon))
            return Refusal(
                f"Project {project.name!r} is limited to {rpm} requests per minute; retry in {wait} s "
                "(or raise requests_per_minute in the proxy's config).",
                "rate_limit_error",
                "project_rate_limit_exceeded",
                ((b"retry-after", str(wait).encode()),),
            )
        window.append(now)
        return None
