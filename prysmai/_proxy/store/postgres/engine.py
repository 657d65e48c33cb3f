"""The PostgreSQL engine: the shared store of several proxies (``--db postgresql://…``).

What is PostgreSQL's own lives here: connecting with psycopg 3 (the password from the URL,
``PGPASSWORD`` or ``~/.pgpass``, TLS parameters passed through, as libpq does), the schema and its
migrations under an advisory lock (:mod:`.schema`), the day partitions a batch needs, the
idempotent batch insert (``COPY`` into a staging table, then ``INSERT … ON CONFLICT DO NOTHING``)
with the rollups folded from the rows it really added (:mod:`.rollups`), read-only snapshots with a
statement timeout, and the dialect the query layer asks for.

The query layer writes ``?`` placeholders (DB-API's qmark, as sqlite3 takes them); the connection
this engine hands it turns them into psycopg's ``%s`` once per distinct statement.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import re
import time
from urllib.parse import urlsplit, urlunsplit

from ..engine import QueryTimeout, StoreError, StoreUnavailable, register_dialect
from ..rollups import REBUILD_ALL_HIST
from ..rows import COLUMNS
from ..scores import forget_orphans
from . import rollups, search
from .schema import LOCK, MIGRATIONS, ROW_COLUMNS, SCHEMA_VERSION, TYPES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import Any, TypeVar

    import psycopg

    T = TypeVar("T")

log = logging.getLogger("prysmai.proxy")
_EXPORT_FROM_OUTBOX = "the OTLP export of a PostgreSQL store reads each replica's outbox, not the database"

DAY = 86400
URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


def masked(url: str) -> str:
    """``url`` without its password (shown wherever a store is named)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc[1]}"))


@functools.lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    """A statement of the query layer (qmark placeholders) as psycopg takes it (``%s``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Cursor:
    """A psycopg cursor as the query layer reads it (sqlite3's shape)."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


class PostgresConnection:
    """A read connection for the query layer: qmark statements, numbers as ``int``/``float``.

    With an ``opener`` (the engine's read connections have one), :meth:`alongside` runs part of a
    read on a second connection, in a thread, in the first one's snapshot: a page of several
    statements uses two of the server's cores, and still reads one consistent state."""

    __slots__ = ("_beside", "_running", "location", "opener", "raw", "time_limit")

    def __init__(
        self,
        raw: psycopg.Connection[Any],
        opener: Callable[[], psycopg.Connection[Any]] | None = None,
        location: str = "",
    ) -> None:
        self.raw = raw
        self.opener = opener
        self.location = location
        #: The read's time limit (seconds), while :meth:`PostgresEngine.time_limited` runs.
        self.time_limit: float | None = None
        self._beside: PostgresConnection | None = None
        self._running: concurrent.futures.Future[Any] | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return _Cursor(self.raw.execute(_qmark(sql), list(parameters)))

    def alongside(self, fn: Callable[[PostgresConnection], T]) -> Callable[[], T]:
        """Start ``fn(other)`` on a second connection whose read transaction imports this one's
        snapshot (``pg_export_snapshot``) and has its time limit; returns what waits for its
        result (or raises its error: :class:`QueryTimeout`, :class:`StoreUnavailable`). Call it
        while this connection's read transaction is open. Without an opener, ``fn(self)`` runs
        when the result is asked for."""
        if self.opener is None or self.raw.info.transaction_status != _IN_TRANSACTION:
            return lambda: fn(self)
        if self._running is not None:  # (a read that raised before asking for its result)
            concurrent.futures.wait([self._running])
        snapshot = self.raw.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot is not None
        running = self._running = _alongside_pool().submit(self._run_beside, fn, str(snapshot[0]), self.time_limit)
        return running.result

    def _run_beside(self, fn: Callable[[PostgresConnection], T], snapshot: str, seconds: float | None) -> T:
        import psycopg

        beside = self._beside
        try:
            if beside is None or beside.closed:
                assert self.opener is not None
                beside = self._beside = PostgresConnection(self.opener(), location=self.location)
            raw = beside.raw
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                # (The snapshot first: a transaction imports one before any other statement.)
                raw.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                raw.execute(f"SET LOCAL statement_timeout = {_timeout_ms(seconds)}")
                return fn(beside)
            finally:
                if not raw.closed:
                    with contextlib.suppress(psycopg.Error):
                        raw.execute("ROLLBACK")
        except psycopg.errors.QueryCanceled:
            raise QueryTimeout(_too_long(seconds)) from None
        except psycopg.OperationalError as exc:
            if beside is not None:
                beside.close()
            raise StoreUnavailable(f"the trace store {self.location} is unreachable: {_reason(exc)}") from None

    def close(self) -> None:
        if self._running is not None:
            concurrent.futures.wait([self._running])
        if self._beside is not None:
            self._beside.close()
        self.raw.close()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)


#: psycopg's ``TransactionStatus.INTRANS`` (a transaction open and idle).
_IN_TRANSACTION = 2


@functools.cache
def _alongside_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads of :meth:`PostgresConnection.alongside` (one a read worker is plenty)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="prysmai-read-alongside")


def _timeout_ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


def _too_long(seconds: float | None) -> str:
    return f"the query ran longer than its {seconds:g} s limit and was stopped; narrow the time range or filters"


class PostgresDialect:
    """What is not standard SQL, as PostgreSQL says it."""

    @staticmethod
    def bucket(column: str) -> str:
        return rollups.bucket_sql(column)

    @staticmethod
    def meta_equals(key: str, value: str) -> tuple[str, list[Any]]:
        # As SQLite's json_extract compared as text: booleans read 1 and 0.
        sql = (
            "(CASE jsonb_typeof(metadata -> ?) WHEN 'boolean' THEN "
            "(CASE WHEN (metadata ->> ?)::boolean THEN '1' ELSE '0' END) ELSE metadata ->> ? END) = ?"
        )
        return sql, [key, key, key, value]

    @staticmethod
    def starts_with(column: str, prefix: str) -> tuple[str, list[Any]]:
        return f"{column} ILIKE ? ESCAPE '\\'", [_like_literal(prefix) + "%"]

    @staticmethod
    def text_search(conn: Any, text: str) -> tuple[str, list[Any]]:
        found = search.condition(conn, text) if search.exists(conn) else None
        if found is not None:
            return found
        # No index (or no word to look for): a substring of a body, as SQLite without FTS5.
        pattern = "%" + _like_literal(text) + "%"
        return "(request_body ILIKE ? ESCAPE '\\' OR response_body ILIKE ? ESCAPE '\\')", [pattern, pattern]

    @staticmethod
    def row_order() -> str:
        # No row numbers in PostgreSQL: the id breaks ties (SQLite's lists break them by rowid,
        # so tied rows may come in another order there).
        return "id"

    @staticmethod
    def traces_bound(conn: Any) -> int:
        # The hourly rollup's requests: every folded trace, read from a table of a few rows an
        # hour (count(*) would read every partition).
        return int(conn.execute("SELECT coalesce(sum(requests), 0) FROM rollup_hour").fetchone()[0] or 0)

    @staticmethod
    def sorted_by(table: str, column: str) -> str:
        return table

    @staticmethod
    def contains(columns: Iterable[str], text: str) -> tuple[str, list[Any]]:
        # ILIKE: case-insensitive, for ASCII as SQLite's LIKE (and beyond it).
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        parts = [f"{c} ILIKE ? ESCAPE '\\'" for c in columns]
        return "(" + " OR ".join(parts) + ")", [pattern] * len(parts)

    @staticmethod
    def time_first(table: str) -> str:
        return table  # PostgreSQL's planner weighs a time range itself

    @staticmethod
    def period(expression: str, width: int) -> str:
        return rollups.period_sql(expression, width)

    @staticmethod
    def count_sum(column: str) -> str:
        # ``sum`` of a bigint is a ``numeric``, read through a loader in Python (_numbers_as_python);
        # a bigint is read by psycopg's own C loader. A count cannot outgrow a bigint.
        return f"sum({column})::bigint"

    @staticmethod
    def unindexed(column: str) -> str:
        return column

    @staticmethod
    def hourly_keys() -> bool:
        # Version 10: folded by the shipper's batch transaction, off the proxy's request path.
        return True

    @staticmethod
    def quarter_hours() -> bool:
        return True  # version 11, folded as the per-key rollups by hour are


register_dialect(PostgresConnection, PostgresDialect())


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


#: The settings of a read connection. ``plan_cache_mode``: psycopg prepares a statement it has run
#: five times on a connection, and PostgreSQL may then plan it once for every value ("generic"),
#: costed for the average value: the latency sample of a busy user (``SELECT latency_ms FROM traces
#: WHERE user_id = $1 ... ORDER BY created_at DESC LIMIT 1000``) becomes a read of all of that
#: user's rows in every day partition and a sort, instead of a walk of the newest days' index that
#: stops at the limit. The query layer's statements depend on their values (a key's share of the
#: traces, the partitions a time range prunes to), so each is planned for them (bench/README.md).
_READ_OPTIONS = "-c default_transaction_read_only=on -c plan_cache_mode=force_custom_plan"


class PostgresEngine:
    """The store in the PostgreSQL database at ``url``; ``search_index``: build the search index
    of the bodies (``True``), drop it (``False``) or leave the database as it is (``None``; a new
    database gets it)."""

    dialect = PostgresDialect()

    def __init__(self, url: str, search_index: bool | None = None) -> None:
        if not is_postgres(url):
            raise StoreError(f"not a PostgreSQL URL: {masked(url)}")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(
                "a postgresql:// store needs the postgres extra (psycopg 3): "
                "pip install '.[proxy,postgres]' in a clone of prysmai"
            ) from None
        self.url = url
        self.search_index = search_index
        self.location = masked(url)
        self._days: set[int] = set()  # day partitions known to exist

    def __repr__(self) -> str:
        return f"PostgresEngine({self.location!r})"

    # -- connections -------------------------------------------------------------------------------
    def connect(self, *, read_only: bool = False) -> psycopg.Connection[Any]:
        """A connection in autocommit mode (transactions are explicit). Raises
        :class:`StoreError` (the URL shown without its password)."""
        import psycopg

        options = _READ_OPTIONS if read_only else None
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10, options=options)
        except psycopg.Error as exc:
            # The server answered and refused (no such database, a wrong password): a mistake to
            # fix. No answer at all: an outage, which the outbox rides out.
            refused = getattr(exc, "sqlstate", None) is not None or "password" in str(exc)
            kind = StoreError if refused else StoreUnavailable
            raise kind(f"cannot connect to the trace store {self.location}: {_reason(exc)}") from None
        _numbers_as_python(conn)
        return conn

    def open_for_writing(self) -> psycopg.Connection[Any]:
        conn = self.connect()
        try:
            self.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def migrate_existing(self) -> bool:
        with contextlib.closing(self.connect()) as conn:
            if _version(conn) == 0 and not _has_schema(conn):
                return False
            self.migrate(conn)
        return True

    def migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Bring the database to :data:`SCHEMA_VERSION` under the advisory lock; refuse one that is
        newer than this prysmai."""
        import psycopg

        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK])
                conn.execute("CREATE TABLE IF NOT EXISTS prysmai_schema (version integer NOT NULL)")
                found = _version(conn)
                if found > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.location} has trace schema version {found}, newer than this prysmai "
                        f"understands ({SCHEMA_VERSION}); upgrade prysmai or use another --db"
                    )
                for step in range(found, SCHEMA_VERSION):
                    conn.execute(MIGRATIONS[step])
                if found < SCHEMA_VERSION:
                    conn.execute("DELETE FROM prysmai_schema")
                    conn.execute("INSERT INTO prysmai_schema (version) VALUES (%s)", [SCHEMA_VERSION])
                    log.info("trace store %s migrated from schema %d to %d", self.location, found, SCHEMA_VERSION)
                self._settle_search(conn, new=found == 0)
        except psycopg.Error as exc:
            raise StoreError(f"cannot prepare the trace store {self.location}: {_reason(exc)}") from None

    def _settle_search(self, conn: psycopg.Connection[Any], *, new: bool) -> None:
        """Build or drop the search index of the bodies (:mod:`.search`) as told; a new database
        gets it unless told not to. Building it over a large database reads every body once
        (bench/README.md has the time), under the migrations' lock."""
        wanted = self.search_index if self.search_index is not None else (True if new else None)
        if wanted is None or wanted == search.exists(conn):
            return
        if wanted:
            if not new:
                log.info("trace store %s: building the search index of the bodies (--search-index on)", self.location)
            search.install(conn, self.location)
        else:
            log.info("trace store %s: dropping the search index (--search-index off)", self.location)
            search.uninstall(conn)

    def read_connection(self) -> PostgresConnection:
        opener = functools.partial(self.connect, read_only=True)
        return PostgresConnection(opener(), opener, self.location)

    @contextlib.contextmanager
    def time_limited(self, conn: PostgresConnection, seconds: float | None) -> Iterator[None]:
        import psycopg

        raw = conn.raw
        try:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # Per statement: a read of several statements is bounded by their number times this.
            raw.execute(f"SET LOCAL statement_timeout = {_timeout_ms(seconds)}")
            conn.time_limit = seconds
            yield
        except psycopg.errors.QueryCanceled:
            raise QueryTimeout(_too_long(seconds)) from None
        except psycopg.OperationalError as exc:  # the server went away: the next read reconnects
            raw.close()
            raise StoreUnavailable(f"the trace store {self.location} is unreachable: {_reason(exc)}") from None
        finally:
            if not raw.closed:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")

    # -- edits (scores) ----------------------------------------------------------------------------
    def edit_connection(self) -> PostgresConnection:
        return PostgresConnection(self.connect())

    @contextlib.contextmanager
    def editing(self, conn: PostgresConnection) -> Iterator[None]:
        import psycopg

        try:
            with conn.raw.transaction():
                yield
        except psycopg.OperationalError as exc:  # the server went away: the next edit reconnects
            conn.raw.close()
            raise StoreUnavailable(f"the trace store {self.location} is unreachable: {_reason(exc)}") from None

    # -- writes ------------------------------------------------------------------------------------
    def insert_rows(self, conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int]:
        """Insert a batch in one transaction: rows already there (a batch sent again) are skipped,
        and only the rows added are folded into the rollups. Returns (rows taken, repaired, 0);
        raises ``psycopg.Error`` when the database cannot take the batch (the caller keeps it)."""
        if not rows:
            return 0, 0, 0
        prepared = [_prepare(row) for row in rows]
        repaired = sum(1 for _, fixed in prepared if fixed)
        values = [row for row, _ in prepared]
        import psycopg

        try:
            self._insert(conn, values)
        except psycopg.errors.CheckViolation:
            # A day partition this engine knew of was dropped since (retention, maybe on another
            # replica, of a day a late trace belongs to): learn the days again and retry once.
            self._days.clear()
            self._insert(conn, values)
        return len(rows), repaired, 0

    def _insert(self, conn: psycopg.Connection[Any], values: list[tuple[Any, ...]]) -> None:
        with conn.transaction():
            self._ensure_days(conn, {math.floor(row[_CREATED] / DAY) for row in values})
            conn.execute(_STAGING)
            with conn.cursor().copy(_COPY) as copy:
                for row in values:
                    copy.write_row(row)
            conn.execute(_INSERT_NEW)
            conn.execute(_INSERT_BODIES)
            for statement in rollups.FOLD:
                conn.execute(statement)

    def stored_costs(self, conn: psycopg.Connection[Any], ids: Sequence[str]) -> dict[str, float | None]:
        rows = conn.execute("SELECT id, cost_usd FROM trace_rows WHERE id = ANY(%s)", [list(ids)]).fetchall()
        return {r[0]: r[1] for r in rows}

    # -- retention ---------------------------------------------------------------------------------
    def delete_expired(
        self, conn: psycopg.Connection[Any], project: str | None, before: float, exclude: Sequence[str], limit: int
    ) -> int:
        """Delete traces created before ``before`` (unix seconds): of ``project``, or with
        ``project=None`` of every project not in ``exclude``; how many.

        Whole days first: a day partition that ended before ``before`` and holds only such traces
        is dropped (disk freed at once, nothing rewritten), with its days' rollup rows. Then up to
        ``limit`` of the oldest such traces left (in days shared with traces kept longer) are
        deleted row by row and taken out of the rollups, in one transaction."""
        dropped = 0
        for day in self._days_before(conn, before):
            n = self._drop_day(conn, day, project, exclude)
            if n is None:
                break  # the oldest days are dropped in order: a day still in use stops the walk
            dropped += n
        deleted = dropped + self._delete_rows(conn, project, before, exclude, limit)
        if deleted:
            forget_orphans(PostgresConnection(conn), before)
        return deleted

    def _days_before(self, conn: psycopg.Connection[Any], before: float) -> list[int]:
        """The days whose partitions exist and ended at or before ``before``, oldest first."""
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'trace_rows'::regclass"
        ).fetchall()
        days = sorted(int(name[len("trace_rows_d") :]) for (name,) in rows if name.startswith("trace_rows_d"))
        return [day for day in days if (day + 1) * DAY <= before]

    def _drop_day(
        self, conn: psycopg.Connection[Any], day: int, project: str | None, exclude: Sequence[str]
    ) -> int | None:
        """Drop ``day``'s partitions if every trace in them is to be deleted; how many traces they
        held, or ``None`` (kept: traces of other projects are in it)."""
        import psycopg

        lo, hi = day * DAY, (day + 1) * DAY
        others, params = _kept_projects(project, exclude)

        def held(_day: int) -> int | None:
            # Under the lock, the rollups count every committed row of the day (an insert folds
            # them in its own transaction).
            kept = conn.execute(
                f"SELECT 1 FROM rollup_hour WHERE hour >= %s AND hour < %s AND requests > 0 AND {others} LIMIT 1",
                [lo, hi, *params],
            ).fetchone()
            if kept is not None:
                return None
            total = conn.execute(
                "SELECT coalesce(sum(requests), 0) FROM rollup_hour WHERE hour >= %s AND hour < %s", [lo, hi]
            ).fetchone()
            return int(total[0]) if total else 0

        def forget() -> None:
            for statement in rollups.FORGET_DAY:
                conn.execute(statement, {"lo": lo, "hi": hi})
            for table, (column, _seconds) in rollups.PERIODS.items():
                conn.execute(f"DELETE FROM {table} WHERE {column} >= %s AND {column} < %s", [lo, hi])
            for statement in (*rollups.EMPTY_ALL, *REBUILD_ALL_HIST):
                conn.execute(statement)

        try:
            return self._drop_partitions(conn, day, held, forget)
        except psycopg.errors.UndefinedTable:  # another replica dropped it first
            self._days.discard(day)
            return 0

    def _drop_partitions(
        self,
        conn: psycopg.Connection[Any],
        day: int,
        held: Callable[[int], int | None],
        forget: Callable[[], None] | None = None,
    ) -> int | None:
        """Drop ``day``'s partitions (its trace rows and bodies) in one transaction, under an
        exclusive lock: ``held(day)``, asked under the lock, says how many traces they hold, or
        ``None`` to keep them; ``forget`` then runs in the same transaction. Returns what ``held``
        said, or ``None`` when they were kept or busy; raises ``psycopg.errors.UndefinedTable``
        when they are gone already."""
        import psycopg

        try:
            with conn.transaction():
                # A short wait for the lock (readers of the table finish first): a busy day is
                # dropped at the next pass rather than queueing writers behind the drop.
                conn.execute("SET LOCAL lock_timeout = '5s'")
                conn.execute(f"LOCK TABLE trace_rows_d{day}, trace_bodies_d{day} IN ACCESS EXCLUSIVE MODE")
                traces = held(day)
                if traces is None:
                    return None
                conn.execute(f"DROP TABLE trace_rows_d{day}, trace_bodies_d{day}")
                if forget is not None:
                    forget()
        except psycopg.errors.LockNotAvailable:
            return None
        self._days.discard(day)
        return traces

    def _delete_rows(
        self, conn: psycopg.Connection[Any], project: str | None, before: float, exclude: Sequence[str], limit: int
    ) -> int:
        mine, params = _deleted_projects(project, exclude)
        with conn.transaction():
            conn.execute(_STAGING)
            deleted = conn.execute(
                f"""WITH gone AS (
                    DELETE FROM trace_rows WHERE (id, created_at) IN (
                        SELECT id, created_at FROM trace_rows WHERE {mine} AND created_at < %s
                        ORDER BY created_at LIMIT %s)
                    RETURNING {_ROW_LIST})
                INSERT INTO new_rows ({_ROW_LIST}) SELECT {_ROW_LIST} FROM gone""",
                [*params, before, limit],
            ).rowcount
            if deleted > 0:
                conn.execute(
                    "DELETE FROM trace_bodies b USING new_rows n WHERE b.id = n.id AND b.created_at = n.created_at"
                )
                for statement in rollups.UNFOLD:
                    conn.execute(statement)
                emptied = 0
                for table, (column, seconds) in rollups.PERIODS.items():
                    # Rows brought to zero in periods over before the cut (one still partly kept
                    # may gain traces again).
                    gone = conn.execute(
                        f"DELETE FROM {table} WHERE {column} < %s AND {rollups.COUNTS[table]} <= 0",
                        [math.floor(before / seconds) * seconds],
                    )
                    emptied += gone.rowcount if table == "rollup_hist_day" else 0
                # Whole days of a daily histogram gone: their bounds go from the all-time one too.
                for statement in (*rollups.EMPTY_ALL, *(REBUILD_ALL_HIST if emptied > 0 else ())):
                    conn.execute(statement)
        return max(deleted, 0)

    def reclaim(self, conn: psycopg.Connection[Any]) -> tuple[int, bool]:
        """Drop the day partitions (before today) that row deletes left empty: their disk goes
        back at once. How many were dropped, and that disk was given back."""
        import psycopg

        def held(day: int) -> int | None:
            return None if conn.execute(f"SELECT 1 FROM trace_rows_d{day} LIMIT 1").fetchone() is not None else 0

        today = math.floor(time.time() / DAY)
        dropped = 0
        for day in self._days_before(conn, today * DAY):
            try:
                if self._drop_partitions(conn, day, held) is not None:
                    dropped += 1
            except psycopg.errors.UndefinedTable:
                continue
        return dropped, True

    # -- export: each replica exports from its own outbox (..outbox), never from here ---------------
    def set_export(self, conn: Any, enabled: bool) -> int:
        raise StoreError(_EXPORT_FROM_OUTBOX)

    def export_batch(self, conn: Any, after: int, limit: int) -> list[tuple[int, dict[str, Any] | None]]:
        raise StoreError(_EXPORT_FROM_OUTBOX)

    def export_done(self, conn: Any, upto: int) -> None:
        raise StoreError(_EXPORT_FROM_OUTBOX)

    def export_waiting(self, conn: Any) -> int:
        raise StoreError(_EXPORT_FROM_OUTBOX)

    def _ensure_days(self, conn: psycopg.Connection[Any], days: set[int]) -> None:
        missing = days - self._days
        if not missing:
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK])
        for day in sorted(missing):
            lo, hi = day * DAY, (day + 1) * DAY
            for table in ("trace_rows", "trace_bodies"):
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table}_d{day} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})"
                )
        self._days |= missing


def _deleted_projects(project: str | None, exclude: Sequence[str]) -> tuple[str, list[Any]]:
    """The condition on ``project`` of the traces a retention pass deletes."""
    if project is not None:
        return "project = %s", [project]
    if not exclude:
        return "true", []
    return f"project NOT IN ({', '.join(['%s'] * len(exclude))})", list(exclude)


def _kept_projects(project: str | None, exclude: Sequence[str]) -> tuple[str, list[Any]]:
    """The condition on ``project`` of the traces a retention pass keeps."""
    if project is not None:
        return "project <> %s", [project]
    if not exclude:
        return "false", []
    return f"project IN ({', '.join(['%s'] * len(exclude))})", list(exclude)


_CREATED = COLUMNS.index("created_at")
_ALL = ", ".join(COLUMNS)
#: Staging tables, per connection: the batch as sent (no constraint), and the rows it added.
_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS staging ("
    + ", ".join(f"{c} {TYPES[c].split(' NOT NULL')[0]}" for c in COLUMNS)
    + ") ON COMMIT DELETE ROWS;\n"
    "CREATE TEMPORARY TABLE IF NOT EXISTS new_rows (LIKE staging) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY staging ({_ALL}) FROM STDIN"
_ROW_LIST = ", ".join(ROW_COLUMNS)
_INSERT_NEW = f"""WITH added AS (
    INSERT INTO trace_rows ({_ROW_LIST})
    SELECT {", ".join("coalesce(project, 'default')" if c == "project" else c for c in ROW_COLUMNS)} FROM staging
    ON CONFLICT DO NOTHING RETURNING id, created_at)
INSERT INTO new_rows SELECT DISTINCT ON (s.id, s.created_at) s.*
    FROM staging s JOIN added a ON a.id = s.id AND a.created_at = s.created_at"""
_INSERT_BODIES = """INSERT INTO trace_bodies (id, created_at, request_body, response_body)
    SELECT id, created_at, request_body, response_body FROM new_rows
    ON CONFLICT DO NOTHING"""

_METADATA = COLUMNS.index("metadata")
_NUL = re.compile("\x00")


def _prepare(row: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """A row as PostgreSQL takes it: text holds no NUL (PostgreSQL's text cannot; it becomes
    U+FFFD, noted), metadata is JSON that JSONB accepts (``\\u0000`` escapes cannot be; a member
    holding one is stored with U+FFFD instead). Returns the row and whether it was changed."""
    values = list(row)
    fixed = False
    for i, value in enumerate(values):
        if isinstance(value, str) and "\x00" in value:
            values[i] = _NUL.sub("\ufffd", value)
            fixed = True
    meta = values[_METADATA]
    if isinstance(meta, str):
        try:
            parsed = json.loads(meta)
        except ValueError:
            parsed = None
        if parsed is None:
            values[_METADATA] = None if meta.strip() in ("", "null") else json.dumps({"_unparsed": meta})
            fixed = fixed or values[_METADATA] is not None
        elif "\\u0000" in meta:
            values[_METADATA] = meta.replace("\\u0000", "\\ufffd")
            fixed = True
    return tuple(values), fixed


def _version(conn: psycopg.Connection[Any]) -> int:
    exists = conn.execute("SELECT to_regclass('prysmai_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM prysmai_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _has_schema(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('trace_rows') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _reason(exc: BaseException) -> str:
    """An error's first line, never the URL's password (libpq does not echo it; the check is a
    belt to its braces)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


def _numbers_as_python(conn: psycopg.Connection[Any]) -> None:
    """``numeric`` (what ``sum`` of integers gives) as ``int`` or ``float``, as SQLite returns them."""
    from psycopg.adapt import Loader

    class _NumericLoader(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            return _number(text) if text != "NaN" else float("nan")

    conn.adapters.register_loader("numeric", _NumericLoader)
