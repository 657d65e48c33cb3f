"""The trace store: SQLite in WAL mode, written by one background thread in batches.

The request path only calls :meth:`TraceStore.submit`, which appends to a bounded in-memory queue
(never blocks, never touches the disk). The writer thread drains the queue, turns each captured
exchange into a row (``finalize``, see :mod:`.capture`) and inserts a batch per transaction.
A full queue drops the trace, counts it (``dropped``) and logs it at most every 10 seconds.
:meth:`close` writes everything pending before returning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time

from . import private_files

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

log = logging.getLogger("prysmai.proxy")

SCHEMA_VERSION = 1
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
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    method TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    http_status INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    cost_usd REAL,
    request_body TEXT,
    response_body TEXT,
    error TEXT,
    user_id TEXT,
    session_id TEXT,
    metadata TEXT,
    notes TEXT,
    response_model TEXT,
    provider_request_id TEXT
);
CREATE INDEX IF NOT EXISTS traces_created_at ON traces (created_at);
CREATE INDEX IF NOT EXISTS traces_model ON traces (model, created_at);
CREATE INDEX IF NOT EXISTS traces_user ON traces (user_id, created_at);
CREATE INDEX IF NOT EXISTS traces_session ON traces (session_id, created_at);
PRAGMA user_version = {SCHEMA_VERSION};
"""
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
    return conn


def open_db(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` with the current schema."""
    private_files.prepare(path)  # 0600 in a 0700 directory, before SQLite creates anything
    try:
        conn = _connect(path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{path} has trace schema version {version}, newer than this prysmai "
                f"understands ({SCHEMA_VERSION}); upgrade prysmai or use another --db"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the trace store {path}: {exc}") from None
    return conn


def open_existing(path: str) -> sqlite3.Connection | None:
    """Open an existing store for reading; ``None`` if there is none at ``path``."""
    if not os.path.exists(path):
        return None
    try:
        conn = _connect(path)
        conn.execute("PRAGMA user_version").fetchone()
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces'").fetchone()
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


# -- queries (CLI and HTTP read API) -------------------------------------------------------------
_SUMMARY_COLUMNS = (
    "id, created_at, method, endpoint, model, stream, status, http_status, latency_ms, ttft_ms, "
    "prompt_tokens, completion_tokens, total_tokens, cost_usd, user_id, session_id, metadata, notes, error"
)


def _where(
    model: str | None = None,
    user: str | None = None,
    session: str | None = None,
    status: str | None = None,
    since: float | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("model", model), ("user_id", user), ("session_id", session), ("status", status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(since)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    if "stream" in out:
        out["stream"] = bool(out["stream"])
    for key in ("metadata", "notes"):
        if out.get(key):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out


def list_traces(conn: sqlite3.Connection, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """Newest first, summary columns only (no bodies)."""
    where, params = _where(**filters)
    sql = f"SELECT {_SUMMARY_COLUMNS} FROM traces{where} ORDER BY created_at DESC, rowid DESC LIMIT ?"
    return [_row_dict(r) for r in conn.execute(sql, [*params, max(0, limit)])]


def get_trace(conn: sqlite3.Connection, trace_id: str) -> dict[str, Any] | None:
    """One trace in full, by id or by a unique id prefix (at least 6 characters)."""
    row = conn.execute("SELECT * FROM traces WHERE id = ?", (trace_id,)).fetchone()
    if row is None and len(trace_id) >= 6 and all(c in "0123456789abcdef" for c in trace_id):
        rows = conn.execute("SELECT * FROM traces WHERE id LIKE ? LIMIT 2", (trace_id + "%",)).fetchall()
        row = rows[0] if len(rows) == 1 else None
    return None if row is None else _row_dict(row)


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil
    return sorted_values[int(rank) - 1]


def _summarise(rows: Iterable[sqlite3.Row]) -> dict[str, Any]:
    latencies: list[float] = []
    ttfts: list[float] = []
    out: dict[str, Any] = {
        "requests": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": 0.0,
        "unpriced_requests": 0,
    }
    for r in rows:
        out["requests"] += 1
        if r["status"] != "success":
            out["errors"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            out[key] += r[key] or 0
        if r["cost_usd"] is None:
            out["unpriced_requests"] += 1
        else:
            out["cost_usd"] += r["cost_usd"]
        if r["latency_ms"] is not None:
            latencies.append(r["latency_ms"])
        if r["ttft_ms"] is not None:
            ttfts.append(r["ttft_ms"])
    latencies.sort()
    ttfts.sort()
    out["error_rate"] = out["errors"] / out["requests"] if out["requests"] else 0.0
    out["latency_p50_ms"] = percentile(latencies, 50)
    out["latency_p95_ms"] = percentile(latencies, 95)
    out["ttft_p50_ms"] = percentile(ttfts, 50)
    return out


def compute_stats(conn: sqlite3.Connection, **filters: Any) -> dict[str, Any]:
    """Totals and a per-model breakdown (``errors`` counts every status but success)."""
    where, params = _where(**filters)
    sql = (
        "SELECT model, status, latency_ms, ttft_ms, prompt_tokens, completion_tokens, total_tokens, "
        f"cost_usd FROM traces{where}"
    )
    rows = conn.execute(sql, params).fetchall()
    by_model: dict[str, list[sqlite3.Row]] = {}
    for r in rows:
        by_model.setdefault(r["model"] or "(none)", []).append(r)
    stats = _summarise(rows)
    stats["by_model"] = {m: _summarise(rs) for m, rs in sorted(by_model.items())}
    return stats
