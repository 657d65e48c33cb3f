"""The store facade: one object that owns a trace store's writes and its reads.

As Datasette's ``Database`` owns both ``execute_fn`` and ``execute_write_fn``, a :class:`Store`
owns its engine (where the traces are), its writer (the queue the request path appends to, and
the thread or process that writes it) and its read runner (time-limited queries off the event
loop). The proxy's server, the read API, the dashboard, the limits and the CLI are handed a
``Store``; none of them opens a connection of its own.
"""

from __future__ import annotations

import asyncio
import time

from .edits import EditRunner
from .engine import StoreError
from .reader import DEFAULT_TIME_LIMIT, ReadRunner
from .sqlite import SQLiteEngine

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from .engine import Engine
    from .outbox import Shipper
    from .retention import Retention
    from .scores import Edit
    from .writer import TraceWriter

    T = TypeVar("T")


def engine_for(location: str, *, search_index: bool | None = None) -> Engine:
    """The engine of a ``--db`` value: a PostgreSQL URL (``postgresql://…``), else a SQLite file's
    path. ``search_index``: keep the search index of the bodies (``--search-index``), or
    leave the store as it is (``None``)."""
    if location.startswith(("postgresql://", "postgres://")):
        from .postgres.engine import PostgresEngine

        return PostgresEngine(location, search_index=search_index)
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise StoreError(f"--db: {scheme}:// is not a store; give a SQLite file's path or a postgresql:// URL")
    return SQLiteEngine(location, search_index=search_index)


class Store:
    """A trace store: ``engine`` (where), ``writer`` (``None``: a store only read, as by
    ``prysmai traces`` or ``prysmai ui``), ``shipper`` (when the writer writes a local outbox that
    is shipped to a shared ``engine``) and a read runner with ``read_time_limit`` seconds per read
    (``None``: no limit)."""

    def __init__(
        self,
        engine: Engine,
        writer: TraceWriter | None = None,
        *,
        shipper: Shipper | None = None,
        read_time_limit: float | None = DEFAULT_TIME_LIMIT,
        read_workers: int = 2,
        retention: Retention | None = None,
    ) -> None:
        self.engine = engine
        self.writer = writer
        self.shipper = shipper
        self.reader = ReadRunner(engine, time_limit=read_time_limit, workers=read_workers)
        #: The store's edits (scores), beside the trace writer.
        self.editor = EditRunner(engine)
        #: Deletes expired traces in the background (``None``: a store only read).
        self.retention = retention

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
        """Create or migrate the store and start its writer and retention (errors surface here,
        at start-up)."""
        if self.writer is not None:
            self.writer.open()
        if self.retention is not None:
            self.retention.start()
        if self.shipper is not None:
            self.shipper.start()

    def close(self, ship_seconds: float = 5.0) -> None:
        """Stop retention, write everything pending, give the shipper ``ship_seconds`` to send it
        on (what it has not sent waits in the outbox for the next start), stop, close the read
        connections."""
        if self.retention is not None:
            self.retention.stop()
        if self.writer is not None:
            self.writer.close()
        if self.shipper is not None:
            self.shipper.flush(ship_seconds)
            self.shipper.stop()
        self.reader.close()
        self.editor.close()

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
        """Block until everything submitted so far is written, and shipped when the store is
        shared (read your own writes); ``False`` if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        if self.writer is not None and not self.writer.flush(timeout):
            return False
        return self.shipper is None or self.shipper.flush(max(0.0, deadline - time.monotonic()))

    def health(self, detail: bool = True) -> tuple[str, str | None]:
        """``("ok", None)`` or ``("degraded", reason)``: the writer's, then the shipper's; without
        ``detail`` the writer's reason names what happened but no count (for a key that should not
        learn the proxy's volume)."""
        if self.writer is not None:
            status, reason = self.writer.health(detail)
            if status != "ok":
                return status, reason
        return ("ok", None) if self.shipper is None else self.shipper.health()

    def counters(self) -> dict[str, int]:
        counters = {} if self.writer is None else self.writer.counters()
        if self.shipper is not None:
            counters.update(self.shipper.counters())
        return counters

    # -- reads -----------------------------------------------------------------------------------
    async def read(self, fn: Callable[..., T], *args: Any, time_limit: float | None = None, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` (a function of :mod:`.queries`) in a worker thread, on a
        read-only connection, in one snapshot, under the time limit."""
        return await self.reader.run(fn, *args, time_limit=time_limit, **kwargs)

    async def edit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` (a write of :mod:`.scores`) in one short write
        transaction, in the edit runner's thread: never on the event loop, never on the trace
        writer's connection."""
        return await self.editor.run(fn, *args, **kwargs)

    async def score(self, edit: Edit, wait: float) -> tuple[bool, Any]:
        """Apply a score edit (:class:`~.scores.Edit`): ``(True, its answer)``. On a store of this
        proxy's own, in one short write transaction of the edit runner. On a shared store, through
        this replica's outbox, in order with the traces it wrote before, durable from the moment
        it is queued: the answer once the shared store has it (up to ``wait`` seconds), or
        ``(False, None)`` while it waits there (the shared store unreachable: it is applied when
        it is back, never answered ``503``)."""
        if self.shipper is None:
            return True, await self.edit(edit.apply)
        return await asyncio.to_thread(self.shipper.edit, edit, wait)

    def edit_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`edit`, in the calling thread (the CLI, tests)."""
        return self.editor.run_sync(fn, *args, **kwargs)

    def read_sync(self, fn: Callable[..., T], *args: Any, time_limit: float | None = None, **kwargs: Any) -> T:
        """Like :meth:`read`, in the calling thread (the CLI)."""
        return self.reader.run_sync(fn, *args, time_limit=time_limit, **kwargs)
