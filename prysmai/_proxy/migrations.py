"""Schema versions of the trace store, and the in-place migrations between them.

``PRAGMA user_version`` holds the version. 0 is a new, empty file; 1 is what prysmai 0.1.0 wrote
(the ``traces`` table and four indexes); 2 adds:

* ``traces.key_id`` -- which accepted proxy key sent the request (an id derived from it, never
  the key), with an index;
* covering indexes (``traces_agg`` replaces ``traces_created_at`` and ``traces_model``;
  ``traces_user2`` and ``traces_session2`` replace ``traces_user`` and ``traces_session``), so
  that aggregates and sorted listings read index pages instead of rows that carry the bodies;
* rollup tables -- ``rollup_hour`` (counts, tokens, cost by hour, model, endpoint, status),
  ``rollup_hist_hour`` (latency and TTFT histograms by hour) and ``rollup_hist_day`` (the same by
  day, model and endpoint) -- maintained by triggers on ``traces``: the writer thread keeps
  inserting rows as before and SQLite updates the rollups in the same transaction.

Every step runs in one ``BEGIN IMMEDIATE`` transaction that also sets the new version, so a
store is never left half-migrated: an interrupted migration leaves the previous version intact
and the next start-up runs it again. A store is migrated, never refused or rebuilt, unless it is
newer than this prysmai (then :class:`~.store.StoreError` says so).

The histogram bucket of a latency ``x`` (milliseconds) is ``floor(16 * ln(max(x, 0.001) * 1000))``:
bucket ``b`` holds ``[e^(b/16), e^((b+1)/16)) / 1000`` ms, so its bounds differ by a factor of
``e^(1/16)`` = 1.0645 (see :mod:`.queries` for the percentile error this gives).
"""

from __future__ import annotations

import math
import sqlite3

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: Histogram buckets per e-fold of latency (see the module docstring).
BUCKETS_PER_E = 16
#: Latencies below this many ms share bucket 0.
BUCKET_FLOOR_MS = 0.001


def bucket_sql(column: str) -> str:
    """SQL for the histogram bucket of ``column`` (NULL stays NULL). ``ln`` is a SQLite math
    function (3.35+); :func:`ensure_functions` supplies it where SQLite was built without them.
    ``CAST`` truncates, which is ``floor`` here since the argument of ``ln`` is >= 1."""
    return f"CAST(ln(max({column}, {BUCKET_FLOOR_MS}) * {1 / BUCKET_FLOOR_MS:g}) * {BUCKETS_PER_E} AS INTEGER)"


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """The latency range ``[low, high)`` in ms that ``bucket`` covers."""
    return (
        math.exp(bucket / BUCKETS_PER_E) * BUCKET_FLOOR_MS,
        math.exp((bucket + 1) / BUCKETS_PER_E) * BUCKET_FLOOR_MS,
    )


def _ln(x: float | None) -> float | None:
    if x is None or x <= 0:
        return None  # as SQLite's own ln()
    return math.log(x)


def ensure_functions(conn: sqlite3.Connection) -> None:
    """Register ``ln`` on ``conn`` when this SQLite lacks its math functions (built without
    SQLITE_ENABLE_MATH_FUNCTIONS, or older than 3.35): the rollup triggers call it."""
    try:
        conn.execute("SELECT ln(1.0)").fetchone()
    except sqlite3.OperationalError:
        conn.create_function("ln", 1, _ln, deterministic=True)


# -- version 1: exactly what prysmai 0.1.0 created ------------------------------------------------
V1 = """
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
"""

# -- version 2 ----------------------------------------------------------------------------------
# The rollups key NULL model as '' (a primary key column cannot usefully hold NULL for an upsert).
#: Histogram rollups: table -> (period in seconds, dimensions kept). A table's size is bounded by
#: periods x dimension values x buckets, whatever the traffic: hourly without dimensions (time
#: series, overviews), daily by model and endpoint (breakdowns, filtered overviews).
HIST_LEVELS: dict[str, tuple[int, tuple[str, ...]]] = {
    "rollup_hist_hour": (3600, ()),
    "rollup_hist_day": (86400, ("model", "endpoint")),
}
METRICS = (("latency", "latency_ms"), ("ttft", "ttft_ms"))


def _period(row: str, seconds: int) -> str:
    return f"CAST({row}.created_at / {seconds} AS INTEGER) * {seconds}"


def _dim(row: str, dim: str) -> str:
    return f"coalesce({row}.model, '')" if dim == "model" else f"{row}.{dim}"


def _hist_upsert(table: str, metric: str, column: str, sign: str) -> str:
    row = "NEW" if sign == "+" else "OLD"
    seconds, dims = HIST_LEVELS[table]
    names = ", ".join(["period", *dims, "metric", "bucket"])
    values = ", ".join([_period(row, seconds), *(_dim(row, d) for d in dims)])
    return f"""
    INSERT INTO {table} ({names}, n, min_ms, max_ms)
    SELECT {values}, '{metric}', {bucket_sql(f"{row}.{column}")}, {sign}1, {row}.{column}, {row}.{column}
    WHERE {row}.{column} IS NOT NULL
    ON CONFLICT ({names}) DO UPDATE SET
        n = n {sign} 1,
        min_ms = min(min_ms, excluded.min_ms),
        max_ms = max(max_ms, excluded.max_ms);"""


def _hour_upsert(sign: str) -> str:
    row = "NEW" if sign == "+" else "OLD"
    return f"""
    INSERT INTO rollup_hour (hour, model, endpoint, status, requests, prompt_tokens, completion_tokens,
                             total_tokens, cost_usd, unpriced)
    VALUES ({_period(row, 3600)}, coalesce({row}.model, ''), {row}.endpoint, {row}.status, {sign}1,
            {sign}coalesce({row}.prompt_tokens, 0), {sign}coalesce({row}.completion_tokens, 0),
            {sign}coalesce({row}.total_tokens, 0), {sign}coalesce({row}.cost_usd, 0),
            {sign}(CASE WHEN {row}.cost_usd IS NULL THEN 1 ELSE 0 END))
    ON CONFLICT (hour, model, endpoint, status) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        total_tokens = total_tokens + excluded.total_tokens,
        cost_usd = cost_usd + excluded.cost_usd,
        unpriced = unpriced + excluded.unpriced;"""


def _hist_table(table: str) -> str:
    _, dims = HIST_LEVELS[table]
    dim_columns = "".join(f"    {d} TEXT NOT NULL,\n" for d in dims)
    key = ", ".join(["period", *dims, "metric", "bucket"])
    return f"""CREATE TABLE IF NOT EXISTS {table} (
    period INTEGER NOT NULL,
{dim_columns}    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    PRIMARY KEY ({key})
);
"""


# min_ms/max_ms only narrow the percentile estimate; after a delete they may be wider than the
# remaining rows, which keeps the estimate within the bucket (the documented bound) regardless.
V2_TABLES = """
CREATE TABLE IF NOT EXISTS rollup_hour (
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    unpriced INTEGER NOT NULL,
    PRIMARY KEY (hour, model, endpoint, status)
);
""" + "".join(_hist_table(t) for t in HIST_LEVELS)

# Index choice, for a writer that stays fast: traces_agg grows at its end (created_at increases), so
# it is nearly free to maintain and serves time ranges, aggregates, per-user and per-session groups
# within a range, and sorted listings (a listing picks its page of ids from it, then reads those
# rows); the user and session indexes cover per-user and per-session aggregates over all time.
# No index per sort column: each would be one more random B-tree insertion per trace.
V2_INDEXES = """
CREATE INDEX IF NOT EXISTS traces_key ON traces (key_id, created_at);
DROP INDEX IF EXISTS traces_created_at;
DROP INDEX IF EXISTS traces_model;
DROP INDEX IF EXISTS traces_user;
DROP INDEX IF EXISTS traces_session;
CREATE INDEX IF NOT EXISTS traces_agg ON traces (created_at, status, model, endpoint, latency_ms, ttft_ms,
    prompt_tokens, completion_tokens, total_tokens, cost_usd, user_id, session_id, id);
CREATE INDEX IF NOT EXISTS traces_user2 ON traces
    (user_id, created_at, status, total_tokens, cost_usd, latency_ms);
CREATE INDEX IF NOT EXISTS traces_session2 ON traces
    (session_id, created_at, status, total_tokens, cost_usd, latency_ms);
"""


def _trigger(name: str, event: str, sign: str) -> str:
    body = _hour_upsert(sign) + "".join(
        _hist_upsert(table, metric, column, sign) for table in HIST_LEVELS for metric, column in METRICS
    )
    return f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON traces BEGIN{body}\nEND;\n"


V2_TRIGGERS = _trigger("traces_rollup_insert", "INSERT", "+") + _trigger("traces_rollup_delete", "DELETE", "-")


def _backfill_sql() -> str:
    hour = "CAST(created_at / 3600 AS INTEGER) * 3600"
    lines = [
        "DELETE FROM rollup_hour;",
        f"""INSERT INTO rollup_hour SELECT {hour}, coalesce(model, ''), endpoint, status, count(*),
            coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
            coalesce(sum(cost_usd), 0), sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)
            FROM traces GROUP BY 1, 2, 3, 4;""",
    ]
    for table, (seconds, dims) in HIST_LEVELS.items():
        lines.append(f"DELETE FROM {table};")
        keys = [f"CAST(created_at / {seconds} AS INTEGER) * {seconds}", *(_dim("traces", d) for d in dims)]
        for metric, column in METRICS:
            group = ", ".join(str(i + 1) for i in range(len(keys) + 2))
            lines.append(
                f"""INSERT INTO {table} SELECT {", ".join(keys)}, '{metric}', {bucket_sql(column)},
                count(*), min({column}), max({column}) FROM traces WHERE {column} IS NOT NULL GROUP BY {group};"""
            )
    return "\n".join(lines)


def _to_v2(conn: sqlite3.Connection) -> None:
    columns = {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
    if "key_id" not in columns:  # a writer of a later step may have added it already
        conn.execute("ALTER TABLE traces ADD COLUMN key_id TEXT")
    _script(conn, V2_TABLES + V2_INDEXES)
    _script(conn, _backfill_sql())
    _script(conn, V2_TRIGGERS)


def _script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the step's transaction first; run statement by statement.
    for statement in _split(script):
        conn.execute(statement)


def _split(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


#: ``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: lambda conn: _script(conn, V1),
    1: _to_v2,
}
SCHEMA_VERSION = max(MIGRATIONS) + 1


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the store on ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`, one transaction
    per step. Returns ``(version before, version after)``; a newer store is left untouched."""
    ensure_functions(conn)
    before = current = version(conn)
    while current < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = version(conn)
            if current >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                break
            MIGRATIONS[current](conn)
            current += 1
            conn.execute(f"PRAGMA user_version = {current}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return before, current
