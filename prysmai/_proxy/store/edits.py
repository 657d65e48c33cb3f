"""Running the store's few writes that are not traces (scores) off the event loop.

An :class:`EditRunner` calls a write function (:mod:`.scores`) in its one worker thread, on one
connection of its own, in one short write transaction (:meth:`~.engine.Engine.editing`). It is
not the trace writer: on SQLite it takes the file's write lock between the writer's batches,
waiting for it up to the busy timeout; on PostgreSQL it writes to the shared database directly.
One thread: edits come from people and apps judging traces, a handful a second at most, and
one at a time they never contend with each other for the lock.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from .engine import Engine

    T = TypeVar("T")


class EditRunner:
    """``await runner.run(fn, *args)`` calls ``fn(conn, *args)`` in one write transaction, in the
    runner's thread; the connection is opened on first use (and again after a failure closed it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prysmai-edit")
        self._lock = threading.Lock()
        self._conn: Any = None

    def __repr__(self) -> str:
        return f"EditRunner({self.engine!r})"

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            if self._conn is None or getattr(self._conn, "closed", False):
                self._conn = self.engine.edit_connection()
            with self.engine.editing(self._conn):
                return fn(self._conn, *args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`run_sync`, in the runner's thread; the event loop stays free meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self.run_sync, fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
