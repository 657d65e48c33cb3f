"""Warnings that can come in floods (every request a 502, a client retrying a rejected key) are
logged the first time at once, then summarised: at most one summary per kind per interval.

Cheap on the request path: a dict lookup and a counter; the summary is written by a timer on the
event loop (or at the next event, or at :meth:`close`, when no loop is running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

DEFAULT_INTERVAL = 30.0


class _Window:
    __slots__ = ("last", "start", "suppressed", "timer")

    def __init__(self, start: float) -> None:
        self.start = start
        self.suppressed = 0
        self.last = ""
        self.timer: asyncio.TimerHandle | None = None


class RateLimitedLog:
    """``event(kind, message)``: the first of a kind is logged; others within ``interval`` seconds
    are counted and reported in one summary line when the interval ends."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL, level: int = logging.WARNING):
        self.logger = logger
        self.interval = interval
        self.level = level
        self._windows: dict[str, _Window] = {}

    def event(self, kind: str, message: str) -> None:
        now = time.monotonic()
        window = self._windows.get(kind)
        if window is not None and now - window.start < self.interval:
            window.suppressed += 1
            window.last = message
            if window.timer is None and window.suppressed == 1:
                with contextlib.suppress(RuntimeError):  # no running loop: summarised later
                    loop = asyncio.get_running_loop()
                    window.timer = loop.call_later(window.start + self.interval - now, self._summarise, kind)
            return
        if window is not None:
            self._summarise(kind)
        self._windows[kind] = _Window(now)
        self.logger.log(self.level, "%s", message)

    def _summarise(self, kind: str) -> None:
        window = self._windows.pop(kind, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.suppressed:
            seconds = min(time.monotonic() - window.start, self.interval)
            self.logger.log(
                self.level,
                "%d more like this in the last %.0f s (latest: %s)",
                window.suppressed,
                max(seconds, 1.0),
                window.last,
            )

    def close(self) -> None:
        """Write every pending summary (at shutdown)."""
        for kind in list(self._windows):
            self._summarise(kind)
