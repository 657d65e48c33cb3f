"""The trace store: SQLite in WAL mode, written by one background thread in batches.

The request path only calls :meth:`TraceStore.submit`, which appends to a bounded in-memory queue
(never blocks, never touches the disk). The writer thread drains the queue, turns each captured
exchange into a row (``finalize``, see :mod:`.capture`) and inserts a batch per transaction.
A full queue drops the trace, counts it (``dropped``) and logs it at most every 10 seconds.
:meth:`close` writes everything pending before returning.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time

from . import private_files
from .migrations import SCHEMA_VERSION, ensure_functions, migrate, version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

log = logging.getLogger("prysmai.proxy")

COLUMNS = (
    "id",  # ours: uuid4 hex, never the provider's id
    "created_at",  # unix time (seconds, float) at which the proxy received the request
    "method",
    "endpoint",  # path below /api/v1, e.g. "chat/completions"
    "model",  # the model the client asked for
    "stream",  # 0/1
    "status",  # success | error | timeout | cancelled
    "http_status",  # status sent to the client
    "latency_ms",
    "ttft_ms",  # streams only; see docs/proxy.md
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",  # NULL when unknown
    "request_body",
    "response_body",  # for streams: the reassembled content and tool calls
    "error",
    "user_id",
    "session_id",
    "metadata",  # JSON object text
    "notes",  # JSON array of strings (e.g. malformed metadata)
    "response_model",  # the model the provider says answered
    "provider_request_id",  # the provider's x-request-id, for cross-reference only
    "key_id",  # which accepted key sent it (an id derived from the key, never the key); schema 2
)
_INSERT = f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_STOP = object()
_BATCH = 512
_LINGER = 0.025
_DROP_LOG_INTERVAL = 10.0


class StoreError(RuntimeError):
    """The store cannot be opened (bad path, newer schema, not a database)."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    ensure_functions(conn)  # the rollup triggers call ln()
    return conn


def _refuse_newer(conn: sqlite3.Connection, path: str) -> None:
    found = version(conn)
    if found > SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            f"{path} has trace schema version {found}, newer than this prysmai "
            f"understands ({SCHEMA_VERSION}); upgrade prysmai or use another --db"
        )


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    before, after = migrate(conn)
    if before not in (0, after):
        log.info("trace store %s migrated in place from schema %d to %d", path, before, after)


def open_db(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` with the current schema."""
    private_files.prepare(path)  # 0600 in a 0700 directory, before SQLite creates anything
    try:
        conn = _connect(path)
        _refuse_newer(conn, path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn, path)  # a store of an earlier prysmai is upgraded in place, never refused
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the trace store {path}: {exc}") from None
    return conn


def open_existing(path: str) -> sqlite3.Connection | None:
    """Open an existing store for reading (migrating an older schema in place first); ``None``
    if there is none at ``path``."""
    if not os.path.exists(path):
        return None
    try:
        conn = _connect(path)
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces'").fetchone()
        if has_table:
            _refuse_newer(conn, path)
            if version(conn) < SCHEMA_VERSION:
                _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read the trace store {path}: {exc}") from None
    if not has_table:
        conn.close()
        return None
    conn.row_factory = sqlite3.Row
    return conn


class TraceStore:
    """Bounded queue + one writer thread. ``submit`` is called from the event loop thread only."""

    def __init__(
        self,
        path: str,
        finalize: Callable[[Any], dict[str, Any]],
        queue_size: int = 10_000,
    ) -> None:
        self.path = path
        self._finalize = finalize
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self.enqueued = 0
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self._last_drop_log = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        self._conn = open_db(self.path)
        self._thread = threading.Thread(target=self._run, name="prysmai-trace-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything pending, stop the writer and close the database."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:  # pragma: no cover - the writer is wedged
            log.error("trace writer did not drain its queue in %.0fs", timeout)
        self._thread.join(timeout)
        self._thread = None
        if self.dropped:
            log.warning("%d trace(s) were dropped because the trace queue was full", self.dropped)

    # -- request path ----------------------------------------------------------------------------
    def submit(self, item: Any) -> bool:
        """Queue a captured exchange; ``False`` (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
                self._last_drop_log = now
                log.warning("trace queue full: %d trace(s) dropped so far", self.dropped)
            return False
        self.enqueued += 1
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted before the call is written (or failed)."""
        target = self.enqueued
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.written + self.failed < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._cond.wait(remaining)
        return True

    def counters(self) -> dict[str, int]:
        return {
            "queued": self.pending,
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.failed,
            "queue_capacity": self._queue.maxsize,
        }

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        stop = False
        while not stop:
            batch = [self._queue.get()]
            if batch[0] is not _STOP and self._queue.qsize() < _BATCH:
                # Linger a moment so traces are written in batches: fewer wake-ups of this thread,
                # less contention with the event loop for the GIL.
                time.sleep(_LINGER)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows: list[tuple[Any, ...]] = []
            failed = 0
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                try:
                    row = self._finalize(item)
                    rows.append(tuple(row.get(c) for c in COLUMNS))
                except Exception:
                    failed += 1
                    log.exception("could not build a trace row")
            written, write_failed = self._write(conn, rows)
            with self._cond:
                self.written += written
                self.failed += failed + write_failed
                self._cond.notify_all()
        conn.close()
        self._conn = None

    def _write(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        try:
            with conn:  # one transaction per batch
                conn.execute("BEGIN")
                conn.executemany(_INSERT, rows)
            return len(rows), 0
        except sqlite3.Error:
            log.exception("batch write of %d trace(s) failed; retrying one by one", len(rows))
        ok = bad = 0
        for row in rows:  # isolate the bad row(s) so one cannot lose the batch
            try:
                conn.execute(_INSERT, row)
                ok += 1
            except sqlite3.Error as exc:
                bad += 1
                log.error("trace %s could not be written: %s", row[0], exc)
        return ok, bad


# -- reads: thin wrappers over the query layer (.queries), kept for the CLI's and demo's callers ----
def list_traces(conn: sqlite3.Connection, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """Newest first, without bodies; ``filters`` are :class:`~.queries.TraceFilter` fields."""
    from . import queries

    return queries.list_traces(conn, _filter(filters), limit=limit)[0]


def get_trace(conn: sqlite3.Connection, trace_id: str) -> dict[str, Any] | None:
    """One trace in full, by id or unique id prefix (``None`` if there is no such trace)."""
    from . import queries

    try:
        return queries.get_trace(conn, trace_id)
    except ValueError:
        return None


def compute_stats(conn: sqlite3.Connection, **filters: Any) -> dict[str, Any]:
    """Totals and a per-model breakdown, as ``prysmai stats --json`` prints them."""
    from . import queries

    return queries.stats(conn, _filter(filters))


def _filter(filters: dict[str, Any]) -> Any:
    from .queries import TraceFilter

    renamed = {"user": "user_id", "session": "session_id", "key": "key_id"}
    return TraceFilter(**{renamed.get(k, k): v for k, v in filters.items()})
