"""The trace store: SQLite in WAL mode, written in batches off the request path.

The request path only calls :meth:`TraceStore.submit`, which appends to a bounded in-memory queue
(never blocks, never touches the disk). The writer thread drains the queue; each batch's captured
exchanges become rows (``finalize``, see :mod:`.capture`), inserted in one transaction, either by
a child process the thread hands them to (:mod:`.writerproc`, what ``prysmai proxy`` does) or on
the thread itself.
A full queue drops the trace, counts it (``dropped``) and logs it at most every 10 seconds.
:meth:`close` writes everything pending before returning.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from itertools import chain

from ..config.projects import DEFAULT_PROJECT
from . import private_files, rollups
from .migrations import SCHEMA_VERSION, ensure_functions, migrate, version
from .writerproc import WriterProcess, WriterProcessError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
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
    "project",  # the key's project (DEFAULT_PROJECT when none is given); schema 3
    "provider",  # the name of the provider the request went to (None: not forwarded); schema 3
)
# A row without a project is in the default one: the column is NOT NULL, and NULL would make
# SQLite refuse the trace.
_ONE_ROW = "(" + ", ".join(f"coalesce(?, '{DEFAULT_PROJECT}')" if c == "project" else "?" for c in COLUMNS) + ")"
_INSERT = f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES {_ONE_ROW}"
_STOP = object()
_BATCH = 512
_LINGER = 0.025
_DROP_LOG_INTERVAL = 10.0
#: Longest stretch of Python the writer runs before it lets go of the GIL (seconds). The event loop
#: releases the GIL whenever it polls for I/O; a thread that then takes it keeps it until it
#: blocks or, by CPython's switch interval, up to 5 ms -- and every request in flight waits that
#: long. Building a batch's rows is such a stretch (about 10 us a row, 150 us for a streamed
#: answer of 20 chunks), so the writer yields between rows once this much has passed.
GIL_SLICE = 0.0002


class StoreError(RuntimeError):
    """The store cannot be opened (bad path, newer schema, not a database)."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    ensure_functions(conn)  # folding the rollups calls ln()
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
            _migrate(conn, path)  # also folds rows inserted by other means into the rollups
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read the trace store {path}: {exc}") from None
    if not has_table:
        conn.close()
        return None
    conn.row_factory = sqlite3.Row
    return conn


#: What the proxy does when the writer is behind (``--when-behind``): hold new requests until the
#: queue has room again (``block``), or answer them and drop their traces, counted (``drop``).
WHEN_BEHIND = ("block", "drop")
#: How long ``/api/v1/health`` reports ``degraded`` after the last trace that was lost or could not
#: be stored, in seconds (a state that lasts is reported as long as it lasts).
DEGRADED_SECONDS = 300.0
_INT64 = (-(2**63), 2**63 - 1)


def _sqlite_max_variables() -> int:
    # 32766 since SQLite 3.32 (2020); 999 before.
    return 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


#: Most rows per INSERT statement (a power of two). One multi-row statement is one
#: ``sqlite3_step``: the writer thread releases and re-takes the GIL once per statement instead of
#: once per row. Under load every re-take waits for the event loop to yield the GIL (up to the
#: 5 ms switch interval), which is what made a per-row ``executemany`` fall behind the request
#: path. Not more than 32 rows, though: binding a statement's parameters holds the GIL, and a
#: long hold delays the requests the event loop is serving (measured: 512-row statements raised
#: the proxy's p95 latency). A batch of n rows is written as statements of power-of-two sizes
#: (n's binary digits), so at most six distinct statements exist, all in sqlite3's cache.
_ROWS_PER_INSERT = 1 << (max(1, min(32, _sqlite_max_variables() // len(COLUMNS))).bit_length() - 1)


@functools.cache
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES " + ", ".join([_ONE_ROW] * rows)


def repair_row(row: Sequence[Any]) -> tuple[tuple[Any, ...], list[str]]:
    """A row SQLite refused, made storable: text holding unpaired surrogates (not valid Unicode,
    so not UTF-8) gets them as ``\\uXXXX`` escapes -- in JSON columns that is the JSON escape, so
    the value decodes back exactly -- and integers outside SQLite's range become NULL. Returns the
    row and one note per repaired column (also added to its ``notes``)."""
    values = list(row)
    notes: list[str] = []
    for i, (column, value) in enumerate(zip(COLUMNS, values)):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                values[i] = value.encode("utf-8", "backslashreplace").decode("utf-8")
                notes.append(f"{column}: unpaired surrogates stored as \\uXXXX escapes")
        elif isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
            values[i] = None
            notes.append(f"{column}: integer outside SQLite's range, not stored")
        elif value is not None and not isinstance(value, (str, int, float, bytes)):
            values[i] = str(value)
            notes.append(f"{column}: stored as text ({type(value).__name__})")
    if notes:
        at = COLUMNS.index("notes")
        previous: list[Any] = []
        if isinstance(values[at], str):
            with contextlib.suppress(ValueError, RecursionError):
                loaded = json.loads(values[at])
                previous = loaded if isinstance(loaded, list) else [loaded]
        values[at] = json.dumps(previous + notes)  # ASCII: cannot fail again
    return tuple(values), notes


class TraceStore:
    """A queue and one supervised writer thread (with, when given, the writer process it hands
    batches to). ``submit`` is called from the event loop thread.

    The writer never dies: a row that cannot be built is stored without parsing (``fallback``), a
    row SQLite refuses is repaired (:func:`repair_row`), and anything else that stops the loop
    restarts it, counting the traces of the interrupted batch as ``lost``. Every such event is
    logged and makes :meth:`health` report ``degraded``.

    When ``queue_size`` traces are waiting the writer is behind: with ``when_behind="drop"`` a new
    trace is dropped (counted, logged); with ``"block"`` it is still queued and the proxy holds new
    requests at the door (:meth:`wait_for_room`) until the writer has caught up, so the queue
    exceeds its size by at most the requests in flight.
    """

    def __init__(
        self,
        path: str,
        finalize: Callable[[Any], dict[str, Any]],
        queue_size: int = 10_000,
        when_behind: str = "block",
        fallback: Callable[[Any, BaseException], dict[str, Any]] | None = None,
        process: WriterProcess | None = None,
    ) -> None:
        if when_behind not in WHEN_BEHIND:
            raise ValueError(f"when_behind must be one of {', '.join(WHEN_BEHIND)}, not {when_behind!r}")
        self.path = path
        self._finalize = finalize
        self._fallback = fallback
        #: Where rows are built and inserted: a child process (see :mod:`.writerproc`), or, when
        #: ``None``, this store's writer thread (``finalize`` and ``fallback`` run there).
        self._process = process
        self.capacity = max(1, queue_size)
        self.when_behind = when_behind
        # Unbounded on purpose: the capacity is a policy (above), not a hard limit of the queue.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._conn: sqlite3.Connection | None = None
        self._batch: list[Any] = []
        self.enqueued = 0
        self.written = 0
        self.repaired = 0
        self.failed = 0
        self.dropped = 0
        self.lost = 0
        self.restarts = 0
        self._incident: tuple[float, str] | None = None
        self._last_drop_log = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        self._conn = open_db(self.path)  # created and migrated here: errors surface at start-up
        self._closing = False
        if self._process is not None:
            try:
                self._process.start(self.path)
            except WriterProcessError as exc:
                log.warning("%s; building trace rows on a thread of the proxy instead", exc)
                self._process = None
        self._start_thread()

    @property
    def writer(self) -> str:
        """Where rows are built: ``"process"`` or ``"thread"``."""
        return "thread" if self._process is None else "process"

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prysmai-trace-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything pending, stop the writer and close the database."""
        if self._thread is None:
            return
        self._closing = True
        self.ensure_writer()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("trace writer did not finish in %.0fs: %d trace(s) not written", timeout, self.pending)
        self._thread = None
        losses = {"dropped (queue full)": self.dropped, "lost (writer restarted)": self.lost}
        losses["not storable"] = self.failed
        for what, n in losses.items():
            if n:
                log.warning("%d trace(s) %s during this run", n, what)

    # -- request path ----------------------------------------------------------------------------
    def submit(self, item: Any) -> bool:
        """Queue a captured exchange; ``False`` (counted, logged) if dropped by the drop policy."""
        if self.when_behind == "drop" and self._queue.qsize() >= self.capacity:
            self.dropped += 1
            now = time.monotonic()
            self._incident = (now, f"trace writer behind: {self.dropped} trace(s) dropped (queue full)")
            if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
                self._last_drop_log = now
                log.warning("trace queue full: %d trace(s) dropped so far", self.dropped)
            return False
        self._queue.put(item)
        self.enqueued += 1
        if not self.enqueued & 255:  # now and then: cheap enough for the request path
            self.ensure_writer()
        return True

    @property
    def behind(self) -> bool:
        """Whether the queue is at its size (the writer is behind)."""
        return self._queue.qsize() >= self.capacity

    async def wait_for_room(self) -> None:
        """With the block policy, wait (without blocking the event loop) until the queue is below
        its size. Costs one size check when there is room."""
        if self.when_behind != "block" or self._queue.qsize() < self.capacity:
            return
        import asyncio

        while self._queue.qsize() >= self.capacity:
            self.ensure_writer()
            await asyncio.sleep(0.005)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted before the call is written (or counted as failed/lost)."""
        target = self.enqueued
        deadline = time.monotonic() + timeout
        self.ensure_writer()
        with self._cond:
            while self.written + self.failed + self.lost < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(remaining, 1.0))
        return True

    def counters(self) -> dict[str, int]:
        return {
            "queued": self.pending,
            "written": self.written,
            "repaired": self.repaired,
            "dropped": self.dropped,
            "lost": self.lost,
            "write_errors": self.failed,
            "writer_restarts": self.restarts,
            "queue_capacity": self.capacity,
        }

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)`` or ``("degraded", reason)``: the writer is behind now, or a trace was
        lost or could not be stored in the last :data:`DEGRADED_SECONDS`."""
        self.ensure_writer()
        if self.behind:
            return "degraded", f"trace writer behind: {self.pending} trace(s) queued (queue size {self.capacity})"
        incident = self._incident
        if incident is not None and time.monotonic() - incident[0] < DEGRADED_SECONDS:
            return "degraded", incident[1]
        return "ok", None

    def ensure_writer(self) -> None:
        """Restart the writer thread if it is gone (it should never be: its loop is supervised)."""
        thread = self._thread
        if thread is not None and not thread.is_alive() and not (self._closing and self._conn is None):
            with self._cond:
                if self._thread is thread:
                    self._record_crash("the trace writer thread had stopped")
                    self._start_thread()

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if self._drain():
                    break
            except BaseException as exc:  # the writer must outlive anything a batch throws
                stop = any(item is _STOP for item in self._batch)
                with self._cond:
                    self._record_crash(f"the trace writer failed ({type(exc).__name__}: {str(exc)[:200]})", exc)
                if stop:
                    break
                self._reconnect()
                time.sleep(0.05)  # no hot loop if the cause persists
        if self._process is not None:
            self._process.stop()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _record_crash(self, why: str, exc: BaseException | None = None) -> None:
        """Count the traces of the interrupted batch as lost (called with ``_cond`` held)."""
        lost = sum(1 for item in self._batch if item is not _STOP)
        self._batch = []
        self.lost += lost
        self.restarts += 1
        self._incident = (time.monotonic(), f"{why}; restarted, {lost} trace(s) lost")
        log.error("%s; writer restarted, %d trace(s) lost (%d in total)", why, lost, self.lost, exc_info=exc)
        self._cond.notify_all()

    def _reconnect(self) -> None:
        if self._process is not None:
            return  # the child holds the connection; the next batch starts another if it is gone
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        try:
            self._conn = open_db(self.path)
        except Exception:  # the next batch fails too, and is counted
            log.exception("could not reopen the trace store %s", self.path)

    def _write_here(self, items: list[Any]) -> tuple[int, int, int]:
        """Build and insert on this thread; (written, repaired, failed)."""
        rows, built_repaired, unbuildable = build_rows(items, self._finalize, self._fallback, GIL_SLICE)
        if self._conn is None:  # a writer restarted after its connection was closed
            self._reconnect()
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("the trace store is not open")
        written, repaired, failed = insert_rows(conn, rows)
        return written, repaired + built_repaired, failed + unbuildable

    def _write_in_process(self, process: WriterProcess, items: list[Any]) -> tuple[int, int, int]:
        if not items:
            return 0, 0, 0
        why = process.ensure_running()  # a child that died between batches: no trace was in it
        if why is not None:
            with self._cond:
                self.restarts += 1
                self._incident = (time.monotonic(), f"{why}; restarted, no trace lost")
            log.error("%s; restarted it, no trace lost", why)
        return process.write(items)

    def _drain(self) -> bool:
        """Write batches until the stop marker; True when stopped."""
        while True:
            item = self._queue.get()
            batch = self._batch = [item]
            if item is not _STOP and self._queue.qsize() < _BATCH:
                # Linger a moment so traces are written in batches: fewer wake-ups of this thread,
                # less contention with the event loop for the GIL.
                time.sleep(_LINGER)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not _STOP]
            stop = len(items) < len(batch)
            if self._process is not None:
                written, repaired, failed = self._write_in_process(self._process, items)
            else:
                written, repaired, failed = self._write_here(items)
            with self._cond:
                self.written += written
                self.repaired += repaired
                self.failed += failed
                self._batch = []
                self._cond.notify_all()
            if failed:
                self._incident = (time.monotonic(), f"{self.failed} trace(s) could not be stored (see the log)")
            if stop:
                return True


def build_row(
    item: Any,
    finalize: Callable[[Any], dict[str, Any]],
    fallback: Callable[[Any, BaseException], dict[str, Any]] | None,
) -> tuple[tuple[Any, ...] | None, int]:
    """The row of one captured item: (row, 1 if built by the fallback); (None, 0) if no row can
    be built at all."""
    try:
        row = finalize(item)
        return tuple(map(row.get, COLUMNS)), 0
    except Exception as exc:
        log.warning("trace %s: could not build its row (%s: %s); storing it unparsed", _id(item), _kind(exc), exc)
        if fallback is not None:
            try:
                row = fallback(item, exc)
                return tuple(row.get(c) for c in COLUMNS), 1
            except Exception:
                log.exception("trace %s: the fallback row failed too", _id(item))
        return None, 0


def build_rows(
    items: Sequence[Any],
    finalize: Callable[[Any], dict[str, Any]],
    fallback: Callable[[Any, BaseException], dict[str, Any]] | None,
    gil_slice: float | None = None,
) -> tuple[list[tuple[Any, ...]], int, int]:
    """The rows of ``items`` (:func:`build_row` each): (rows, how many the fallback built, how many
    items no row could be built for). With ``gil_slice``, the GIL is yielded whenever that many
    seconds of building have passed (the writer thread: see :data:`GIL_SLICE`)."""
    rows: list[tuple[Any, ...]] = []
    repaired = unbuildable = 0
    since = time.perf_counter()
    for item in items:
        row, by_fallback = build_row(item, finalize, fallback)
        if gil_slice is not None and time.perf_counter() - since > gil_slice:
            time.sleep(0)  # let the event loop have the GIL
            since = time.perf_counter()
        if row is None:
            unbuildable += 1
        else:
            rows.append(row)
            repaired += by_fallback
    return rows, repaired, unbuildable


def insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> tuple[int, int, int]:
    """Insert rows in one transaction, the rollups folded in it; (written, repaired, failed).
    A row SQLite refuses is repaired (:func:`repair_row`) or skipped; the others are written."""
    if not rows:
        return 0, 0, 0
    try:
        with conn:
            conn.execute("BEGIN")
            start, size = 0, _ROWS_PER_INSERT
            before: int | None = None
            while start < len(rows):
                while size > len(rows) - start:
                    size >>= 1
                part = rows[start : start + size]
                cursor = conn.execute(_insert_sql(size), list(chain.from_iterable(part)))
                if before is None and cursor.lastrowid is not None:
                    # One INSERT numbers its rows consecutively (max(rowid) + 1, ...): where
                    # this batch began, without a statement of its own.
                    before = cursor.lastrowid - size
                start += size
            rollups.fold(conn, before)
        return len(rows), 0, 0
    except (sqlite3.Error, ValueError, OverflowError, TypeError):
        pass  # find the row(s) at fault below; the others are written
    with conn:
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: max(rowid) is where this starts
        before = conn.execute("SELECT coalesce(max(rowid), 0) FROM traces").fetchone()[0]
        written = _insert_one_by_one(conn, rows)
        rollups.fold(conn, before)
    return written


def _insert_one_by_one(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> tuple[int, int, int]:
    """Insert rows singly (in the caller's transaction), repairing or skipping the ones SQLite
    refuses: a failed statement undoes only itself."""
    ok = fixed = bad = 0
    for row in rows:
        try:
            conn.execute(_INSERT, row)
            ok += 1
            continue
        except sqlite3.Error as exc:
            bad += 1
            log.error("trace %s could not be written: %s", row[0], exc)
            continue
        except (ValueError, OverflowError, TypeError) as exc:  # a value SQLite cannot take
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        repaired, notes = repair_row(row)
        try:
            conn.execute(_INSERT, repaired)
            ok += 1
            fixed += 1
            log.warning("trace %s stored with repairs (%s): %s", row[0], reason, "; ".join(notes))
        except Exception as exc:
            bad += 1
            log.error("trace %s could not be written even repaired: %s", row[0], exc)
    return ok, fixed, bad


def _id(item: Any) -> str:
    return str(getattr(item, "id", None) or (item.get("id") if isinstance(item, dict) else "?"))


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


# -- reads: thin wrappers over the query layer (.queries), kept for the CLI's and demo's callers ----
def list_traces(conn: sqlite3.Connection, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """Newest first, without bodies; ``filters`` are :class:`~.queries.TraceFilter` fields."""
    from . import queries

    return queries.list_traces(conn, _filter(filters), limit=limit)[0]


def get_trace(conn: sqlite3.Connection, trace_id: str, project: str | None = None) -> dict[str, Any] | None:
    """One trace in full, by id or unique id prefix (``None`` if there is no such trace, or it is
    not in ``project`` when one is given)."""
    from . import queries

    try:
        return queries.get_trace(conn, trace_id, project=project)
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
