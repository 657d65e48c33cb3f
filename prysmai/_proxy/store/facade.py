"""The store facade: one object that owns a trace store's writes and its reads.

As Datasette's ``Database`` owns both ``execute_fn`` and ``execute_write_fn``, a :class:`Store`
owns its engine (where the traces are), its writer (the queue the request path appends to, and
the thread or process that writes it) and its read runner (time-limited queries off the event
loop). The proxy's server, the read API, the dashboard, the limits and the CLI are handed a
``Store``; none of them opens a connection of its own.
"""

from __future__ import annotations

from .engine import StoreError
from .reader import DEFAULT_TIME_LIMIT, ReadRunner
from .sqlite import SQLiteEngine

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from .engine import Engine
    from .writer import TraceWriter

    T = TypeVar("T")


def engine_for(location: str) -> Engine:
    """The engine of a ``--db`` value: today a SQLite file's path."""
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise StoreError(f"--db: {scheme}:// stores are not supported; give the path of a SQLite file")
    return SQLiteEngine(location)


class Store:
    """A trace store: ``engine`` (where), ``writer`` (``None``: a store only read, as by
    ``prysmai traces`` or ``prysmai ui``) and a read runner with ``read_time_limit`` seconds per
    read (``None``: no limit)."""

    def __init__(
        self,
        engine: Engine,
        writer: TraceWriter | None = None,
        *,
        read_time_limit: float | None = DEFAULT_TIME_LIMIT,
        read_workers: int = 2,
    ) -> None:
        self.engine = engine
        self.writer = writer
        self.reader = ReadRunner(engine, time_limit=read_time_limit, workers=read_workers)

    @classmethod
    def existing(cls, location: str, *, read_time_limit: float | None = DEFAULT_TIME_LIMIT) -> Store | None:
        """The store at ``location`` for reading, brought to the current schema first (its
        traces are kept as they are); ``None`` if there is none. Raises :class:`StoreError`."""
        engine = engine_for(location)
        if not engine.migrate_existing():
            return None
        return cls(engine, read_time_limit=read_time_limit)

    def __repr__(self) -> str:
        kind = None if self.writer is None else self.writer.kind
        return f"Store({self.engine.location!r}, writer={kind})"

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Create or migrate the store and start its writer (errors surface here, at start-up)."""
        if self.writer is not None:
            self.writer.open()

    def close(self) -> None:
        """Write everything pending, stop the writer, close the read connections."""
        if self.writer is not None:
            self.writer.close()
        self.reader.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes (the request path calls submit and wait_for_room only) -----------------------------
    def submit(self, item: Any) -> bool:
        assert self.writer is not None, "a store opened for reading takes no traces"
        return self.writer.submit(item)

    async def wait_for_room(self) -> None:
        if self.writer is not None:
            await self.writer.wait_for_room()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is written (read your own writes)."""
        return True if self.writer is None else self.writer.flush(timeout)

    def health(self) -> tuple[str, str | None]:
        return ("ok", None) if self.writer is None else self.writer.health()

    def counters(self) -> dict[str, int]:
        return {} if self.writer is None else self.writer.counters()

    # -- reads -----------------------------------------------------------------------------------
    async def read(self, fn: Callable[..., T], *args: Any, time_limit: float | None = None, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` (a function of :mod:`.queries`) in a worker thread, on a
        read-only connection, in one snapshot, under the time limit."""
        return await self.reader.run(fn, *args, time_limit=time_limit, **kwargs)

    def read_sync(self, fn: Callable[..., T], *args: Any, time_limit: float | None = None, **kwargs: Any) -> T:
        """Like :meth:`read`, in the calling thread (the CLI)."""
        return self.reader.run_sync(fn, *args, time_limit=time_limit, **kwargs)
