"""Retention: a background thread that deletes traces older than their project's retention.

Every ``interval`` seconds (and once at start) it asks ``plan()`` for the retention of each
project (:attr:`~..config.policy.StoragePolicy.retention_seconds`, from the config file or the
flags) and of traces of no current project (``--retention``), then deletes what is older in
batches of ``batch`` traces -- each its own short write transaction, with a pause between them so
the writer takes the lock whenever it has rows -- and gives the freed space back to the disk. It
never runs on the request path and never holds the write lock for long; a failed pass is logged
and tried again at the next interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from .engine import Engine

    #: (retention in seconds of each current project: None = kept for ever; retention of the
    #: traces of no current project).
    Plan = tuple[Mapping[str, "float | None"], "float | None"]

log = logging.getLogger("prysmai.proxy")

INTERVAL = 60.0
BATCH = 500
#: Seconds between two batches: the writer's turn at the lock.
PAUSE = 0.02


class Retention:
    """The retention thread of one store (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        plan: Callable[[], Plan],
        *,
        interval: float = INTERVAL,
        batch: int = BATCH,
        pause: float = PAUSE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.interval = interval
        self.batch = batch
        self.pause = pause
        self.clock = clock
        self.deleted = 0
        self.passes = 0
        self.last_pass: float | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._told_no_vacuum = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prysmai-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def counters(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "passes": self.passes, "last_pass": self.last_pass, "error": self.last_error}

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.run_once()
                    self.last_error = None
                except Exception as exc:  # a pass that fails is tried again: retention never stops the proxy
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    log.warning("retention: a pass failed (%s); trying again in %.0f s", self.last_error, self.interval)
                    self._close()
                self._stop.wait(self.interval)
        finally:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def run_once(self) -> int:
        """One pass: delete everything expired now, batch by batch; how many traces."""
        projects, others = self.plan()
        if others is None and all(seconds is None for seconds in projects.values()):
            self.passes += 1
            return 0  # nothing has a retention (a reload may give one)
        if self._conn is None:
            self._conn = self.engine.open_for_writing()
        now = self.clock()
        deleted = 0
        for project, seconds in sorted(projects.items()):
            if seconds is not None:
                deleted += self._delete(project, now - seconds, ())
        if others is not None:
            deleted += self._delete(None, now - others, tuple(sorted(projects)))
        if deleted:
            free, returned = self.engine.reclaim(self._conn)
            if free and not returned and not self._told_no_vacuum:
                self._told_no_vacuum = True
                log.info(
                    "retention: this store was created before prysmai gave freed space back to the disk; new "
                    "traces reuse it instead (see docs/operations.md, 'Retention', to convert the store)"
                )
            log.info("retention: deleted %d trace(s) older than their retention", deleted)
        self.deleted += deleted
        self.passes += 1
        self.last_pass = now
        return deleted

    def _delete(self, project: str | None, before: float, exclude: tuple[str, ...]) -> int:
        total = 0
        while not self._stop.is_set():
            n = self.engine.delete_expired(self._conn, project, before, exclude, self.batch)
            total += n
            if n < self.batch:
                break
            time.sleep(self.pause)
        return total
