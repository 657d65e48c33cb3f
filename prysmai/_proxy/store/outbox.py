"""The outbox of a proxy whose store is shared (PostgreSQL): a local SQLite file its writer writes
first, and the shipper that sends what waits there to the shared store.

Why a local file first: the request path never waits on the shared database, and nothing is lost
while it is down, slow or restarting. Every in-memory or networked buffer between a proxy and its
database has lost data somewhere; a durable local file, shipped idempotently by trace id, is the
pattern that holds. The writer (thread or process) inserts each batch into the ``outbox`` table in
one transaction, as it would into a SQLite store; the :class:`Shipper` sends the oldest rows to the
shared store in batches, in order, and deletes them from the outbox only once the shared store has
committed them. A batch sent twice (the proxy stopped between the two) is recognised there by trace
id, so nothing is stored twice. The outbox holds only what waits: its size is the backlog, bounded
by the disk, counted in ``/api/v1/health`` and ``prysmai doctor``. A shutdown leaves the backlog in
the file, and the next start ships it.

The OTLP export of a replica on a shared store reads this file too (:mod:`..export`): each trace
is in the outbox of the one replica that answered it, so each replica exports its own and no
trace is exported by two. The shipper and the export each keep their position in the file
(``outbox_position``); a row goes once every reader is past it, so the export keeps sending while
the shared store is down, and the shipper keeps shipping while the collector is down (the rows
then wait here for the export, bounded by the disk like the backlog).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time

from .engine import StoreError, StoreUnavailable
from .rows import COLUMNS
from .scores import Edit
from .sqlite.engine import SQLiteEngine, repair_row

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .postgres.engine import PostgresEngine

log = logging.getLogger("prysmai.proxy")

_TABLES = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, " + ", ".join(COLUMNS) + ")",
    # How far each reader of the outbox has got: 'shipped' (always there), 'exported' (while the
    # OTLP export is on). Rows up to the smallest position are gone.
    "CREATE TABLE IF NOT EXISTS outbox_position (reader TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO outbox_position (reader, seq) VALUES ('shipped', 0)",
    # Score edits (..scores.Edit) waiting to be applied to the shared store, each once the traces
    # written before it (up to the outbox's seq ``after``) are shipped.
    "CREATE TABLE IF NOT EXISTS outbox_edits (seq INTEGER PRIMARY KEY AUTOINCREMENT, after INTEGER NOT NULL, "
    "edit TEXT NOT NULL)",
)
_SHIPPED = "(SELECT seq FROM outbox_position WHERE reader = 'shipped')"
_EXPORTED = "(SELECT seq FROM outbox_position WHERE reader = 'exported')"
_INSERT = f"INSERT INTO outbox ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
#: How many of the outbox's newest rows ``stored_costs`` looks among.
_LOOK_BACK = 50_000
#: Rows a shipment takes at most.
SHIP_BATCH = 1000
#: Score edits applied between two looks at the traces.
EDIT_BATCH = 100
_CREATED = COLUMNS.index("created_at")


class OutboxEngine(SQLiteEngine):
    """The outbox file at ``path``: created 0600 in a 0700 directory, WAL, one table whose
    sequence numbers are never reused (AUTOINCREMENT), so the oldest row is always shipped first."""

    kind = "outbox"

    # Among the newest rows only (the outbox has no index on id, and may hold a long backlog):
    # what is asked about -- a journal's last second, a batch of the writer's child -- was written
    # last. A trace found nowhere (shipped already, or older) is written again, and recognised by
    # the shared store then: a batch sent again stores nothing twice.
    stored_in = (
        f"(SELECT id, cost_usd FROM outbox WHERE seq > (SELECT coalesce(max(seq), 0) FROM outbox) - {_LOOK_BACK})"
    )

    def open_for_writing(self) -> sqlite3.Connection:
        from . import private_files
        from .sqlite.engine import connect

        private_files.prepare(self.path)
        try:
            conn = connect(self.path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _TABLES:
                conn.execute(statement)
            # An outbox left by an earlier prysmai lacks the columns added since: add them, empty.
            have = {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}
            for column in COLUMNS:
                if column not in have:
                    conn.execute(f"ALTER TABLE outbox ADD COLUMN {column}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the outbox {self.path}: {exc}") from None
        return conn

    def insert_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int]:
        if not rows:
            return 0, 0, 0
        try:
            with conn:
                conn.execute("BEGIN")
                conn.executemany(_INSERT, rows)
            return len(rows), 0, 0
        except (sqlite3.Error, ValueError, OverflowError, TypeError):
            pass  # find the rows at fault: repaired, or skipped and counted
        ok = fixed = bad = 0
        with conn:
            conn.execute("BEGIN")
            for row in rows:
                try:
                    conn.execute(_INSERT, row)
                    ok += 1
                    continue
                except (ValueError, OverflowError, TypeError, sqlite3.Error):
                    repaired, notes = repair_row(row)
                try:
                    conn.execute(_INSERT, repaired)
                    ok += 1
                    fixed += 1
                    log.warning("trace %s stored with repairs: %s", row[0], "; ".join(notes))
                except Exception as exc:
                    bad += 1
                    log.error("trace %s could not be written to the outbox: %s", row[0], exc)
        return ok, fixed, bad

    @staticmethod
    def oldest(conn: sqlite3.Connection, n: int) -> list[tuple[Any, ...]]:
        """Up to ``n`` rows waiting to be shipped, oldest first, each ``(seq, *row)``."""
        sql = f"SELECT seq, {', '.join(COLUMNS)} FROM outbox WHERE seq > {_SHIPPED} ORDER BY seq LIMIT ?"
        return list(conn.execute(sql, [n]))

    @staticmethod
    def shipped(conn: sqlite3.Connection, last_seq: int) -> None:
        """Every row up to ``last_seq`` is in the shared store."""
        _advance(conn, "shipped", last_seq)

    @staticmethod
    def backlog(conn: sqlite3.Connection) -> int:
        """How many rows wait to be shipped."""
        return int(conn.execute(f"SELECT count(*) FROM outbox WHERE seq > {_SHIPPED}").fetchone()[0])

    # -- score edits ---------------------------------------------------------------------------------
    @staticmethod
    def queue_edit(conn: sqlite3.Connection, edit: Edit) -> int:
        """Keep ``edit`` until it is applied, after every trace written so far; its seq."""
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO outbox_edits (after, edit) SELECT coalesce(max(seq), 0), ? FROM outbox", [edit.dumps()]
            )
        return int(cur.lastrowid or 0)

    @staticmethod
    def ready_edits(conn: sqlite3.Connection, n: int) -> list[tuple[int, Edit]]:
        """Up to ``n`` of the oldest edits whose traces are shipped, in order (stopping at the first
        that must wait)."""
        ready = []
        rows = conn.execute(f"SELECT seq, after <= {_SHIPPED}, edit FROM outbox_edits ORDER BY seq LIMIT ?", [n])
        for seq, shipped, text in rows:
            if not shipped:
                break
            ready.append((int(seq), Edit.loads(text)))
        return ready

    @staticmethod
    def edited(conn: sqlite3.Connection, seq: int) -> None:
        """The edit ``seq`` is applied (or will never be)."""
        conn.execute("DELETE FROM outbox_edits WHERE seq = ?", [seq])

    @staticmethod
    def edits_waiting(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM outbox_edits").fetchone()[0])

    # -- the OTLP export of this replica's traces (export/ reads it) ---------------------------------
    def set_export(self, conn: sqlite3.Connection, enabled: bool) -> int:
        """On: export every trace written from now on (a position kept from an earlier run stays,
        with what waited behind it). Off: forget the position; how many traces were waiting."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            if enabled:
                conn.execute(
                    "INSERT OR IGNORE INTO outbox_position (reader, seq) "
                    "SELECT 'exported', coalesce(max(seq), 0) FROM outbox"
                )
                waiting = 0
            else:
                waiting = int(conn.execute(f"SELECT count(*) FROM outbox WHERE seq > {_EXPORTED}").fetchone()[0])
                conn.execute("DELETE FROM outbox_position WHERE reader = 'exported'")
                conn.execute(_FORGET)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return waiting

    def export_batch(self, conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, dict[str, Any] | None]]:
        sql = (
            f"SELECT seq, {', '.join(COLUMNS)} FROM outbox WHERE seq > max(?, coalesce({_EXPORTED}, 0)) "
            "ORDER BY seq LIMIT ?"
        )
        return [(seq, dict(zip(COLUMNS, values))) for seq, *values in conn.execute(sql, [after, limit])]

    def export_done(self, conn: sqlite3.Connection, upto: int) -> None:
        _advance(conn, "exported", upto)

    def export_waiting(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute(f"SELECT count(*) FROM outbox WHERE seq > {_EXPORTED}").fetchone()[0])


#: Rows every reader is past.
_FORGET = "DELETE FROM outbox WHERE seq <= (SELECT min(seq) FROM outbox_position)"


def _advance(conn: sqlite3.Connection, reader: str, seq: int) -> None:
    """Move ``reader``'s position to ``seq`` and let go of the rows every reader is past, in one
    transaction (the shipper thread and the export process share the file)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE outbox_position SET seq = ? WHERE reader = ? AND seq < ?", [seq, reader, seq])
        conn.execute(_FORGET)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class Shipper:
    """Sends the outbox to the shared store on a thread of its own, off the request path: the
    oldest rows first, in batches of :data:`SHIP_BATCH`, each committed there before it is removed
    here. While the shared store cannot be reached it retries with backoff (0.5 s doubling to 10 s),
    logs the outage once and its end once, and :meth:`health` says ``degraded`` with the backlog."""

    def __init__(self, outbox: OutboxEngine, target: PostgresEngine) -> None:
        self.outbox = outbox
        self.target = target
        self.shipped = 0
        self.backlog = 0
        self.failures = 0
        #: ``created_at`` of the oldest trace waiting (``None``: none waits): how far behind it is.
        self.oldest: float | None = None
        self._outage: str | None = None
        #: Flush requests, and the last one the thread answered with an empty outbox.
        self._asked = 0
        self._drained = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        #: Score edits a caller waits for (their seqs), and their outcomes: (applied, the answer
        #: or the exception it raised).
        self._waiters: set[int] = set()
        self._outcomes: dict[int, tuple[bool, Any]] = {}
        self._edit_conn: sqlite3.Connection | None = None
        self._edit_lock = threading.Lock()
        self.edits_waiting = 0

    def __repr__(self) -> str:
        return f"Shipper({self.outbox.path!r} -> {self.target.location!r})"

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prysmai-shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the shipment in progress; what waits stays in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._edit_lock:
            if self._edit_conn is not None:
                self._edit_conn.close()
                self._edit_conn = None

    def edit(self, edit: Edit, wait: float) -> tuple[bool, Any]:
        """Queue a score edit in the outbox (durable from here on), to be applied to the shared
        store in order, after the traces written before it; wait up to ``wait`` seconds for it:
        ``(True, its answer)`` once applied (the exception it raised, such as
        :class:`~.scores.KindConflict`, is raised here), ``(False, None)`` while it waits (the
        shared store is unreachable or slow: it is applied when it answers)."""
        with self._edit_lock:
            if self._edit_conn is None:
                self._edit_conn = self.outbox.open_for_writing()
            seq = self.outbox.queue_edit(self._edit_conn, edit)
        deadline = time.monotonic() + wait
        with self._idle:
            self._waiters.add(seq)
            self._wake.set()
            try:
                while seq not in self._outcomes:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._outage is not None or self._thread is None:
                        return False, None
                    self._idle.wait(min(remaining, 0.1))
                applied, answer = self._outcomes.pop(seq)
            finally:
                self._waiters.discard(seq)
                self._outcomes.pop(seq, None)
        if not applied:
            raise answer
        return True, answer

    def notify(self, rows: int) -> None:
        """``rows`` were added to the outbox (the writer, after each batch): ship them now."""
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (``False`` after ``timeout``, or while the shared store is
        unreachable)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            self._asked += 1
            asked = self._asked
            self._wake.set()
            while self._drained < asked:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._outage is not None or self._thread is None:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def health(self) -> tuple[str, str | None]:
        if self._outage is not None:
            return "degraded", f"{self._outage}; {self.backlog} trace(s) waiting in the outbox {self.outbox.path}"
        return "ok", None

    def counters(self) -> dict[str, int]:
        oldest = self.oldest
        behind = 0 if oldest is None or not self.backlog else max(0, int(time.time() - oldest))
        return {
            "outbox_backlog": self.backlog,
            "outbox_behind_s": behind,
            "shipped": self.shipped,
            "ship_failures": self.failures,
            "score_edits_waiting": self.edits_waiting,
        }

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        from .postgres.engine import PostgresConnection

        local = self.outbox.open_for_writing()
        remote: Any = None
        delay = 0.5
        try:
            while True:
                self._wake.clear()
                with self._idle:
                    asked = self._asked
                rows = self.outbox.oldest(local, SHIP_BATCH)
                self.backlog = len(rows) if len(rows) < SHIP_BATCH else self.outbox.backlog(local)
                self.oldest = rows[0][1 + _CREATED] if rows else None
                edits = self.outbox.ready_edits(local, EDIT_BATCH)
                self.edits_waiting = self.outbox.edits_waiting(local)
                if not rows and not edits:
                    with self._idle:
                        self._drained = asked  # empty after every flush asked before this look
                        self._idle.notify_all()
                    if self._stop.is_set():
                        return
                    self._wake.wait(0.5)
                    continue
                try:
                    if remote is None:
                        remote = self.target.open_for_writing()  # migrates, under its lock
                    if rows:
                        self.target.insert_rows(remote, [row[1:] for row in rows])
                        self.outbox.shipped(local, rows[-1][0])
                        self.shipped += len(rows)
                        self.backlog = self.outbox.backlog(local)
                        edits = self.outbox.ready_edits(local, EDIT_BATCH)  # those of the traces just shipped
                    for seq, edit in edits:
                        outcome = self._apply(PostgresConnection(remote), edit)
                        self.outbox.edited(local, seq)
                        with self._idle:
                            if seq in self._waiters:
                                self._outcomes[seq] = outcome
                            elif not outcome[0] or (edit.op == "add" and outcome[1] is None):
                                # Queued while the store was down, nobody waits for the answer now.
                                why = outcome[1] if not outcome[0] else "no such trace"
                                log.warning(
                                    "a queued score edit (%s %s) was not applied: %s", edit.op, edit.target, why
                                )
                            self._idle.notify_all()
                except Exception as exc:
                    _discard(remote)
                    remote = None
                    self.failures += 1
                    self._fail(exc)
                    retry_at = time.monotonic() + delay
                    while not self._stop.is_set() and time.monotonic() < retry_at:
                        self.backlog = self.outbox.backlog(local)  # what health reports meanwhile
                        self._stop.wait(min(0.5, retry_at - time.monotonic()))
                    if self._stop.is_set():
                        return
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5
                if self._outage is not None:
                    log.warning("the trace store %s is reachable again; shipping the outbox", self.target.location)
                    self._outage = None
                if self._stop.is_set() and not self.backlog:
                    return
        finally:
            _discard(remote)
            with contextlib.suppress(sqlite3.Error):
                local.close()
            with self._idle:
                self._idle.notify_all()

    def _apply(self, conn: Any, edit: Edit) -> tuple[bool, Any]:
        """Apply one score edit in a write transaction of its own: (True, its answer), or (False,
        the exception) for an edit the shared store refuses -- dropped, logged, never retried. An
        unreachable store raises (the edit stays queued)."""
        try:
            with self.target.editing(conn):
                return True, edit.apply(conn)
        except (StoreUnavailable, StoreError):
            raise
        except Exception as exc:  # a refused edit (a type conflict, a bad value) must not block the queue
            if conn.closed:
                raise  # the connection broke under it: an outage, retried
            return False, exc

    def _fail(self, exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._outage is None:
            log.error(
                "cannot ship traces to %s (%s): they wait in the outbox %s and go when it is back",
                self.target.location,
                reason,
                self.outbox.path,
            )
        self._outage = f"the trace store {self.target.location} is unreachable ({reason})"


def _discard(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
