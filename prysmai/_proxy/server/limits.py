"""Per-project limits: requests per minute and a monthly budget in USD.

Both are checked on the request path before a request is forwarded, in memory and without
waiting on anything. The rate limit is a sliding window: a project with ``requests_per_minute = N``
gets its N+1th request within any 60 seconds refused, and ``retry-after`` says when the oldest of
the N leaves the window.

The budget compares what the project spent this UTC calendar month (:func:`~..store.budgets.month_start`,
the month the budgets read shows too) with ``monthly_budget_usd``:
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

Across replicas (a PostgreSQL store): each replica also holds what the others counted, as the
proxy's sharing thread last read it (:meth:`Limits.share`, :mod:`.sharing`), and enforces the
total. The others' requests of the last minute are held by when each leaves the window (rounded up
to the second, so never sooner than it does); their spend of the month as a sum. Both checks stay
in memory: the request path never waits on the database. Between two exchanges a replica does not
see what the others admit, so the overshoot is at most what the replicas admit in about one
second (two sharing intervals plus a round trip to the database). While the database cannot be
reached, a replica goes on with its own counts on top of the last shared ones (the others'
requests still leave the window as they age).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..store.budgets import WINDOW_SECONDS, month_start

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config.projects import Project


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: what the proxy answers with ``429``."""

    message: str
    type: str
    code: str
    headers: tuple[tuple[bytes, bytes], ...]


class Limits:
    """The counters behind every project's limits (one instance per proxy)."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._spent: dict[str, float] = {}
        self._month = month_start(time.time())
        self._lock = threading.Lock()  # spend is added by the writer thread
        #: The other replicas' counts (empty on a proxy alone), replaced whole by :meth:`share`:
        #: per project, their requests by the second after ``_shared_at`` they leave the window.
        self._others_rate: dict[str, list[int]] = {}
        self._shared_at = 0.0
        #: Per project, USD spent this month beyond what this replica counted.
        self._others_spent: dict[str, float] = {}

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
        """USD spent by ``project`` this month, as counted so far (by every replica, as last shared)."""
        self._roll(time.time())
        return self._spent.get(project, 0.0) + self._others_spent.get(project, 0.0)

    # -- sharing with other replicas (called by the sharing thread) --------------------------------
    def month(self) -> float:
        """The month counted now (unix seconds of its start)."""
        self._roll(time.time())
        return self._month

    def own_spend(self) -> dict[str, float]:
        """USD this replica counted this month, by project."""
        self._roll(time.time())
        with self._lock:
            return dict(self._spent)

    def own_rates(self, now: float | None = None) -> dict[str, list[int]]:
        """This replica's requests of the last minute, by project: ``[i]`` counts those between
        ``i`` and ``i + 1`` seconds old."""
        now = time.monotonic() if now is None else now
        found: dict[str, list[int]] = {}
        for project, window in list(self._windows.items()):
            counts = [0] * int(WINDOW_SECONDS)
            for t in _copy(window):
                age = int(now - t)
                if 0 <= age < WINDOW_SECONDS:
                    counts[age] += 1
            if any(counts):
                found[project] = counts
        return found

    def share(
        self,
        month: float,
        rates: dict[str, list[int]],
        spend: dict[str, float],
        stored: dict[str, float] | None,
        own: dict[str, float],
        at: float | None = None,
    ) -> None:
        """Take the other replicas' counts, read at ``at`` (monotonic): ``rates`` as
        :attr:`~..store.postgres.replicas.Shared.rates`, ``spend`` the USD they counted in
        ``month``, ``stored`` the month's spend in the store (``None``: not read this time; the
        last figure stays) and ``own`` what this replica had published of its own then. The spend
        beyond this replica's is the larger of the others' and the store's less this replica's."""
        at = time.monotonic() if at is None else at
        self._others_rate = rates
        self._shared_at = at
        if month != self.month():
            return
        with self._lock:
            previous = self._others_spent
            projects = set(spend) | set(stored or ()) | (set(previous) if stored is None else set())
            others: dict[str, float] = {}
            for project in projects:
                beyond = spend.get(project, 0.0)
                if stored is not None:
                    beyond = max(beyond, stored.get(project, 0.0) - own.get(project, 0.0))
                else:  # the store was not read this time: its last figure holds
                    beyond = max(beyond, previous.get(project, 0.0))
                if beyond > 0:
                    others[project] = beyond
            self._others_spent = others

    def _others_now(self, project: str, now: float) -> tuple[list[int], int]:
        """The others' requests of ``project`` still in the window at ``now``: the counts by the
        second after the last exchange they leave, and the first of those seconds not yet past."""
        counts = self._others_rate.get(project)
        if counts is None:
            return [], 0
        first = max(0, math.floor(now - self._shared_at))  # counts[k] leave at shared_at + k + 1
        return counts, first

    def _roll(self, now: float) -> None:
        start = month_start(now)
        if start != self._month:
            with self._lock:
                if start != self._month:
                    self._month = start
                    self._spent.clear()
                    self._others_spent = {}

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
        others, first = self._others_now(project.name, now)
        in_window = len(window) + (sum(others[first:]) if others else 0)
        if in_window >= rpm:
            wait = _wait(window, others, first, self._shared_at, rpm, horizon)
            return Refusal(
                f"Project {project.name!r} is limited to {rpm} requests per minute; retry in {wait} s "
                "(or raise requests_per_minute in the proxy's config).",
                "rate_limit_error",
                "project_rate_limit_exceeded",
                ((b"retry-after", str(wait).encode()),),
            )
        window.append(now)
        return None


def _copy(window: deque[float]) -> tuple[float, ...]:
    """A copy of a window the event loop appends to while another thread reads it: ``tuple()``
    of a deque runs in C under the GIL, so it sees the deque between two appends."""
    while True:
        try:
            return tuple(window)
        except RuntimeError:  # mutated during the copy (only if the GIL was released): again
            continue


def _wait(window: deque[float], others: list[int], first: int, shared_at: float, rpm: int, horizon: float) -> int:
    """Whole seconds until fewer than ``rpm`` requests are in the window: this replica's (each
    leaves ``WINDOW_SECONDS`` after it was admitted) and the others' (``others[k]`` leave at
    ``shared_at + k + 1``)."""
    if not others:
        return max(1, math.ceil(window[len(window) - rpm] - horizon))
    mine = list(window)  # oldest first: each leaves at t + WINDOW
    theirs = others[first:]
    total = len(mine) + sum(theirs)
    gone = i = 0
    for second in range(1, int(WINDOW_SECONDS) + 2):
        at = horizon + second  # from now + second, requests admitted at or before it have left
        while i < len(mine) and mine[i] <= at:
            i += 1
        leaving_at = shared_at + first + 1  # the others' that have left by then
        gone_theirs = sum(n for k, n in enumerate(theirs) if leaving_at + k <= at + WINDOW_SECONDS)
        gone = i + gone_theirs
        if total - gone < rpm:
            return second
    return int(WINDOW_SECONDS)
