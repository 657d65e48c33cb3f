"""Running read queries off the event loop, each under a time limit.

A :class:`ReadRunner` calls query functions (:mod:`.queries`) on the engine's read-only
connections, one per worker thread, each call in one read transaction (one consistent snapshot)
stopped once it runs past its time limit: a slow read can neither block the proxy's event loop
nor run on.
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

#: Seconds a read may take by default (the dashboard's and the read API's).
DEFAULT_TIME_LIMIT = 1.5


class ReadRunner:
    """``await runner.run(overview, f)`` calls ``overview(conn, f)`` in a worker thread;
    ``run_sync`` does the same in the calling thread (the CLI). ``time_limit``: seconds per call
    (``None``: none)."""

    def __init__(self, engine: Engine, *, time_limit: float | None = DEFAULT_TIME_LIMIT, workers: int = 2) -> None:
        if time_limit is not None and time_limit <= 0:
            raise ValueError("time_limit must be > 0 seconds (or None: no limit)")
        self.engine = engine
        self.time_limit = time_limit
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prysmai-read")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[Any] = []

    def __repr__(self) -> str:
        return f"ReadRunner({self.engine!r}, time_limit={self.time_limit})"

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(conn, "closed", False):  # (a shared store's, after an outage)
            conn = self._local.conn = self.engine.read_connection()
            with self._lock:
                self._conns.append(conn)
        return conn

    def run_sync(self, fn: Callable[..., T], *args: Any, time_limit: float | None = None, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` in one read transaction; ``time_limit`` overrides the
        runner's for this call (a page made of several queries)."""
        conn = self._connection()
        with self.engine.time_limited(conn, time_limit if time_limit is not None else self.time_limit):
            return fn(conn, *args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, time_limit: float | None = None, **kwargs: Any) -> T:
        """Like :meth:`run_sync`, in a worker thread; the event loop stays free meanwhile."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.run_sync, fn, *args, time_limit=time_limit, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
