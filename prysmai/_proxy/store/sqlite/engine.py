"""The SQLite engine: one file in WAL mode, written by one writer, read on read-only connections.

What is SQLite's own lives here: opening (the file created 0600 in a 0700 directory, WAL,
``synchronous = NORMAL``, a busy timeout, ``ln()`` where SQLite lacks its math functions), the
schema and its migrations (:mod:`.migrations`), folding the rollups (:mod:`.rollups`), the multi-row
``INSERT`` and the repair of a row SQLite refuses, time limits through the progress handler, and
the dialect the query layer asks for the few expressions that are not standard SQL.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import time
from itertools import chain
from urllib.parse import quote

from ...config.projects import DEFAULT_PROJECT
from .. import private_files
from ..engine import QueryTimeout, StoreError, StoreUnavailable, register_dialect
from ..rows import COLUMNS
from . import outbox, retention, rollups, search
from .migrations import SCHEMA_VERSION, migrate, prepare_new, version
from .rollups import bucket_sql, ensure_functions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

log = logging.getLogger("prysmai.proxy")

# A row without a project is in the default one: the column is NOT NULL, and NULL would make
# SQLite refuse the trace.
_ONE_ROW = "(" + ", ".join(f"coalesce(?, '{DEFAULT_PROJECT}')" if c == "project" else "?" for c in COLUMNS) + ")"
_INSERT = f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES {_ONE_ROW}"
_INT64 = (-(2**63), 2**63 - 1)


def _sqlite_max_variables() -> int:
    # 32766 since SQLite 3.32 (2020); 999 before.
    return 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


#: Most rows per INSERT statement (a power of two). One multi-row statement is one
#: ``sqlite3_step``, so the writer releases and re-takes the GIL once per statement instead of
#: once per row; under load every re-take waits for the event loop to yield the GIL. Binding a
#: statement's parameters holds the GIL, though, and a long hold delays the requests the event
#: loop is serving, so not more than 32 rows (bench/README.md has the measurements). A batch of n
#: rows is written as statements of power-of-two sizes (n's binary digits): at most six distinct
#: statements, all in sqlite3's cache.
_ROWS_PER_INSERT = 1 << (max(1, min(32, _sqlite_max_variables() // len(COLUMNS))).bit_length() - 1)


@functools.cache
def _insert_sql(rows: int) -> str:
    return f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES " + ", ".join([_ONE_ROW] * rows)


class SQLiteDialect:
    """What is not standard SQL, as SQLite says it."""

    @staticmethod
    def bucket(column: str) -> str:
        return bucket_sql(column)

    @staticmethod
    def meta_equals(key: str, value: str) -> tuple[str, list[Any]]:
        # A path of one quoted member, so keys with dots or brackets are taken literally.
        path = '$."' + key + '"'
        sql = "(CASE WHEN json_valid(metadata) THEN CAST(json_extract(metadata, ?) AS TEXT) END) = ?"
        return sql, [path, value]

    @staticmethod
    def starts_with(column: str, prefix: str) -> tuple[str, list[Any]]:
        # SQLite's LIKE is case-insensitive for ASCII (PostgreSQL: ILIKE).
        return f"{column} LIKE ? ESCAPE '\\'", [_like_literal(prefix) + "%"]

    @staticmethod
    def text_search(conn: sqlite3.Connection, text: str) -> tuple[str, list[Any]]:
        match = search.match_expression(text) if search.exists(conn) else None
        if match is None:  # no index (or no word to look for): read the bodies
            pattern = "%" + _like_literal(text) + "%"
            return "(request_body LIKE ? ESCAPE '\\' OR response_body LIKE ? ESCAPE '\\')", [pattern, pattern]
        # Few matches: the query starts from them (the rowids the index gives). Many: the set of
        # them is made once and the query reads the traces in its own order, checking each row
        # against it (unary +: not a lookup), so a page of a common word stops at a page's worth.
        few = search.fewer_matches_than(conn, match, _DRIVE_FROM_MATCHES)
        rowid = "traces.rowid" if few else "+traces.rowid"
        return f"{rowid} IN (SELECT rowid FROM {search.TABLE} WHERE {search.TABLE} MATCH ?)", [match]

    @staticmethod
    def row_order() -> str:
        return "rowid"

    @staticmethod
    def traces_bound(conn: Any) -> int:
        # The last row number: one step down the table's B-tree.
        return int(conn.execute("SELECT max(rowid) FROM traces").fetchone()[0] or 0)

    @staticmethod
    def sorted_by(table: str, column: str) -> str:
        return f"{table} INDEXED BY {SORT_INDEXES[column]}"

    @staticmethod
    def time_first(table: str) -> str:
        """Read ``table`` through the index that starts with ``created_at`` (traces_agg): for a
        time range, grouping its entries beats walking a per-user or per-session index whole, but
        SQLite's planner cannot know how narrow the range is."""
        return f"{table} INDEXED BY traces_agg"

    @staticmethod
    def period(expression: str, width: int) -> str:
        # CAST truncates: the floor, for the positive times stored.
        return f"CAST({expression} / {width} AS INTEGER)"

    @staticmethod
    def count_sum(column: str) -> str:
        return f"sum({column})"

    @staticmethod
    def unindexed(column: str) -> str:
        # Unary +: SQLite then does not use an index on the column for the condition.
        return f"+{column}"

    @staticmethod
    def hourly_keys() -> bool:
        # Its 7-day page meets its target without them (a partial day's rows are read through the
        # covering index traces_agg), and each fold would be work for the one machine's writer.
        return False

    @staticmethod
    def quarter_hours() -> bool:
        return False  # as hourly_keys: its day page meets its target from the rows


def _like_literal(text: str) -> str:
    """``text`` as a LIKE pattern that matches it literally (with ``ESCAPE '\\'``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: A text search with fewer matches than this starts from them; with more, from the traces.
_DRIVE_FROM_MATCHES = 5000
#: The index of each sort column (schema 4, :mod:`.migrations`).
SORT_INDEXES = {
    "cost_usd": "traces_by_cost",
    "latency_ms": "traces_by_latency",
    "ttft_ms": "traces_by_ttft",
    "total_tokens": "traces_by_tokens",
}

register_dialect(sqlite3.Connection, SQLiteDialect())


def connect(path: str) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (no schema check: see :class:`SQLiteEngine`)."""
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


def _migrate(conn: sqlite3.Connection, path: str, search_index: bool | None = None) -> None:
    before, after = migrate(conn, search_index=search_index)
    if before not in (0, after):
        log.info("trace store %s migrated in place from schema %d to %d", path, before, after)
    if search_index is not None and (
        search.wanted(conn) != search_index or search.exists(conn) != (search_index and search.available(conn))
    ):
        what = "building the search index of the bodies" if search_index else "dropping the search index"
        log.info("trace store %s: %s (--search-index %s)", path, what, "on" if search_index else "off")
        conn.execute("BEGIN IMMEDIATE")
        try:
            search.choose(conn, search_index)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class SQLiteEngine:
    """The store in the SQLite file at ``path``; ``search_index``: build the search index of the
    bodies (``True``), drop it (``False``) or leave the store's choice (``None``)."""

    #: What the writer process is told to open (see :class:`~..outbox.OutboxEngine`).
    kind = "sqlite"
    dialect = SQLiteDialect()

    def __init__(self, path: str, search_index: bool | None = None) -> None:
        self.path = path
        self.search_index = search_index
        self.location = path
        self._read_uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
        #: The clock a read's time limit is counted on: wall time. A reader at a low CPU priority
        #: (the child process of an export) counts its own CPU time instead: a
        #: process the kernel gives no CPU is not running a slow query.
        self.clock: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return f"SQLiteEngine({self.path!r})"

    def open_for_writing(self) -> sqlite3.Connection:
        """Open (creating if needed) the database with the current schema; a store of an
        earlier prysmai is upgraded in place, never refused."""
        private_files.prepare(self.path)  # 0600 in a 0700 directory, before SQLite creates anything
        try:
            conn = connect(self.path)
            _refuse_newer(conn, self.path)
            prepare_new(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, self.path, self.search_index)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the trace store {self.path}: {exc}") from None
        return conn

    def open_existing(self) -> sqlite3.Connection | None:
        """An existing store, migrated in place first (which also folds rows inserted by other
        means into the rollups); ``None`` if there is none at ``path``. Rows come as
        :class:`sqlite3.Row`."""
        if not os.path.exists(self.path):
            return None
        try:
            conn = connect(self.path)
            has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces'").fetchone()
            if has_table:
                _refuse_newer(conn, self.path)
                _migrate(conn, self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the trace store {self.path}: {exc}") from None
        if not has_table:
            conn.close()
            return None
        conn.row_factory = sqlite3.Row
        return conn

    def migrate_existing(self) -> bool:
        conn = self.open_existing()
        if conn is None:
            return False
        conn.close()
        return True

    def read_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._read_uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 2000")
        ensure_functions(conn)
        return conn

    @contextlib.contextmanager
    def time_limited(self, conn: sqlite3.Connection, seconds: float | None) -> Iterator[None]:
        clock = self.clock
        deadline = None if seconds is None else clock() + seconds
        if deadline is not None:
            conn.set_progress_handler(lambda: 1 if clock() > deadline else 0, 10_000)
        try:
            conn.execute("BEGIN")
            yield
        except sqlite3.OperationalError as exc:
            if deadline is not None and "interrupt" in str(exc) and clock() > deadline:
                raise QueryTimeout(
                    f"the query ran longer than its {seconds:g} s limit and was stopped; "
                    "narrow the time range or filters"
                ) from None
            raise
        finally:
            conn.set_progress_handler(None, 0)
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # a read: nothing to keep

    def insert_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int]:
        return insert_rows(conn, rows)

    # -- edits (scores) --------------------------------------------------------------------------
    def edit_connection(self) -> sqlite3.Connection:
        # The busy timeout of connect(): an edit waits for the writer's batch (a few ms) to commit.
        try:
            return connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the trace store {self.path}: {exc}") from None

    @contextlib.contextmanager
    def editing(self, conn: sqlite3.Connection) -> Iterator[None]:
        # The write lock first (IMMEDIATE): a read-then-write transaction cannot then fail half-way
        # because the writer committed in between.
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the trace store {self.path} is busy ({exc}); try again") from None
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- retention -------------------------------------------------------------------------------
    #: Where :meth:`stored_costs` looks for traces (rows with ``id`` and ``cost_usd``).
    stored_in = "traces"

    def stored_costs(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for start in range(0, len(ids), 500):
            some = list(ids[start : start + 500])
            sql = f"SELECT id, cost_usd FROM {self.stored_in} WHERE id IN ({', '.join('?' * len(some))})"
            found.update((r[0], r[1]) for r in conn.execute(sql, some))
        return found

    def delete_expired(
        self, conn: sqlite3.Connection, project: str | None, before: float, exclude: Sequence[str], limit: int
    ) -> int:
        return retention.delete_expired(conn, project, before, exclude, limit)

    def reclaim(self, conn: sqlite3.Connection) -> tuple[int, bool]:
        return retention.reclaim(conn), retention.incremental(conn)

    # -- the export outbox -----------------------------------------------------------------------
    def set_export(self, conn: sqlite3.Connection, enabled: bool) -> int:
        return outbox.set_enabled(conn, enabled)

    def export_batch(self, conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, dict[str, Any] | None]]:
        return outbox.batch(conn, after, limit)

    def export_done(self, conn: sqlite3.Connection, upto: int) -> None:
        outbox.done(conn, upto)

    def export_waiting(self, conn: sqlite3.Connection) -> int:
        return outbox.size(conn)


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int]:
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


def _insert_one_by_one(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int]:
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
