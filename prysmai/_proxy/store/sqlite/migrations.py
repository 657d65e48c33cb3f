"""Schema versions of the trace store, and the in-place migrations between them.

``PRAGMA user_version`` holds the version. 0 is a new, empty file; 1 is what prysmai 0.1.0 wrote
(the ``traces`` table and four indexes); 2 added:

* ``traces.key_id`` -- which accepted proxy key sent the request (an id derived from it, never
  the key), with an index;
* covering indexes (``traces_agg`` replaces ``traces_created_at`` and ``traces_model``;
  ``traces_user2`` and ``traces_session2`` replace ``traces_user`` and ``traces_session``), so
  that aggregates and sorted listings read index pages instead of rows that carry the bodies;
* rollup tables -- ``rollup_hour`` (counts, tokens, cost by hour, model, endpoint, status),
  ``rollup_hist_hour`` (latency and TTFT histograms by hour) and ``rollup_hist_day`` (the same by
  day, model and endpoint) -- which the writer folds each batch into, in the batch's own
  transaction (:mod:`.rollups`); the migration folds the existing rows once.

3 (projects) adds:

* ``traces.project`` (``NOT NULL DEFAULT 'default'``) and ``traces.provider``. Adding a column
  with a constant default rewrites no row: the rows of an earlier store read as project
  ``default``;
* ``project`` in every rollup's key, and in the indexes (``traces_agg``; ``traces_user3``,
  ``traces_session3`` and ``traces_key3`` replace ``traces_user2``, ``traces_session2`` and
  ``traces_key``); the index ``traces_project`` (project, created_at, id) for a project's traces
  in time order. The rollups are rebuilt and every row folded again.

4 (what is kept and where it goes) adds:

* ``export_outbox`` -- the traces waiting to be exported (OTLP), in the order they were written:
  the writer's fold trigger fills it in each batch's own transaction while ``export_state`` has
  its row (export on), and the export process deletes what the collector accepted;
* ``export_state`` -- one row while export is on.

A store created by schema 4 or later also has ``auto_vacuum = INCREMENTAL`` (set before its first
table), so the pages retention frees are returned to the disk; an older store reuses them for new
traces instead (see docs/operations.md to convert one).

5 (the dashboard at scale) adds:

* ``rollup_hour.no_usage``: a trace without a cost is counted as ``unpriced`` only when usage was
  reported (no price for its model), as ``no_usage`` when none was (a failure, a cancelled call);
  schema 3 counted both as ``unpriced``. ``rollup_hour`` is rebuilt from the rows;
* ``rollup_user_day`` and ``rollup_session_day``: totals by day, project and user or session,
  folded with the others, for the user and session lists and breakdowns;
* an index per sort column of the traces list (``traces_by_cost``, ``traces_by_latency``,
  ``traces_by_ttft``, ``traces_by_tokens``, of the rows with a value), so that a list sorted by
  any of them is one walk of an index however large the store;
* ``traces_fts``, the search index of the bodies (:mod:`.search`), when SQLite has FTS5.

6 (a list you can scan) adds ``traces.prompt_preview`` and ``traces.answer_preview``: the start of
the last user message and of the answer, one line each, computed when a row is built
(:mod:`..previews`), so a list page reads them instead of its bodies. Adding them rewrites no
row; the traces of an earlier store have none.

7 (scores) adds:

* ``scores`` -- judgements attached to traces (:mod:`..scores`): the score's id, the trace's id,
  time, project, model and user (copied: a trace's never change, and the reads by time, project,
  model or user start from the scores, never reading the traces' rows), its name, type,
  value (``num`` for numbers and booleans, ``label`` for categories), comment, time and author;
  indexed by trace, by project and name and value, and by the trace's time;
* ``score_names`` -- the type each score name has in each project (one type per name).

8 (spend against budget) adds ``traces.error_code``: the ``code`` of the error the proxy answered
itself (``project_rate_limit_exceeded`` and ``project_budget_exceeded`` for the limits' ``429``,
``model_not_routed``...; none for a provider's answer), and the index ``traces_limited`` of the
limits' refusals only, by project and time (:mod:`..budgets` charts them). Adding the column
rewrites no row: the traces of an earlier store have none.

9 (the overview at 1 M traces) adds:

* ``rollup_all`` and ``rollup_hist_all``: ``rollup_hour``'s totals and ``rollup_hist_day``'s
  histograms over all time (no period), for an overview of all time;
* ``rollup_hist_project_day``: the daily histograms by project alone, for a time series of days;
* ``rollup_user_all`` and ``rollup_session_all``: the per-key totals over all time, by project
  and key (and over every project, under the project ``''``), with an index on the requests;
  folded by the fold trigger and taken back by the delete trigger as the per-day ones are (built
  from the per-day ones);
* ``scores_by_trace_name`` (trace, name, value) in place of ``scores_by_trace``, for a list of
  the traces with a common score, walked in time order;
* ``rollup_score_day`` and ``rollup_score_all``: the count and sum of the number and boolean
  scores by project, name and the trace's model or user, per day and over all time, kept by each
  score's own write (:mod:`..scores`; built from the scores).

10 (the views that missed 300 ms at 1 M traces) adds:

* ``rollup_hist_model_hour``: the latency and TTFT histograms by hour, project, model and
  endpoint, folded and taken back with the others, for the partial days at a range's edges and
  the sub-day series split or filtered by model (built from the rows already folded);
* ``rollup_scored_day`` and ``rollup_scored_hist_day``: the totals and histograms of the traces
  that have a score of a name, by name, day, project and model, kept by the scores' writes and
  by the trigger ``scored_rollup_delete`` (a deleted trace), for ``stats?score=NAME`` (built
  from the scores and their traces).

Scores are written outside the trace writer, by the proxy's edit runner (:mod:`..edits`), in short
``BEGIN IMMEDIATE`` transactions that wait for the writer's lock up to the busy timeout.

All pending steps run in one ``BEGIN IMMEDIATE`` transaction that also sets the new version, so
a store is never left half-migrated: an interrupted migration leaves the previous version intact
and the next start-up runs it again. A store is migrated, never refused or rebuilt, unless it is
newer than this prysmai (then :class:`~..engine.StoreError` says so).

The histogram bucket of a latency ``x`` (milliseconds) is ``floor(16 * ln(max(x, 0.001) * 1000))``:
bucket ``b`` holds ``[e^(b/16), e^((b+1)/16)) / 1000`` ms, so its bounds differ by a factor of
``e^(1/16)`` = 1.0645 (see :mod:`..queries` for the percentile error this gives).
"""

from __future__ import annotations

import sqlite3

from ..budgets import REFUSAL_CODES
from ..rollups import (
    ALL_HIST,
    ALL_HIST_DIMS,
    ALL_TOTALS,
    EVERY_PROJECT,
    HOUR_DIMS,
    KEY_ALL_ROLLUPS,
    KEY_PERIOD,
    KEY_ROLLUPS,
    KEY_TOTALS,
    SCORE_ROLLUP_ALL,
    SCORE_ROLLUP_DAY,
    SCORED_COUNTS,
    SCORED_HIST,
    SCORED_KEY,
    SCORED_TOTALS,
)
from ..scores import rollup_fill_sql
from . import rollups, search
from .rollups import ensure_functions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


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
# Schema 2 also had indexes (traces_key, covering ones) and rollups; schema 3's step, which always
# follows in the same transaction, replaces them all, so this step does not build them only to
# have them rebuilt.
V2_INDEXES = """
DROP INDEX IF EXISTS traces_created_at;
DROP INDEX IF EXISTS traces_model;
DROP INDEX IF EXISTS traces_user;
DROP INDEX IF EXISTS traces_session;
"""


def _to_v2(conn: sqlite3.Connection) -> None:
    if "key_id" not in _columns(conn):
        conn.execute("ALTER TABLE traces ADD COLUMN key_id TEXT")
    _script(conn, V2_INDEXES)


# -- version 3 ----------------------------------------------------------------------------------
# Index choice, for a writer that stays fast (bench/README.md has the measurements):
# - traces_agg grows at its end (created_at increases), so it is nearly free to maintain; it
#   serves time ranges, aggregates, per-user and per-session groups within a range, and sorted
#   listings (a listing picks its page of ids from it, then reads those rows);
# - the user and session indexes cover per-user and per-session aggregates over all time;
# - each holds the project, so a query scoped to a project reads what it reads unscoped: the
#   project is the table's last column, after the bodies, and reading it from rows (which may mean
#   walking their overflow pages) made scoped listings up to 300 times slower (and a key's
#   aggregates, which read its rows anyway, 1.4 times slower even without overflow pages);
# - traces_project lists one project's traces in time order (a keyset page is one range of it)
#   and finds a small project's rows without walking everyone's; its insertion points are the
#   ends of a few projects' ranges, so it costs the writer little more than an append.
# No index per sort column: each would be one more random B-tree insertion per trace.
# 'default' is projects.DEFAULT_PROJECT, spelled out: a migration is history and must not change.
V3_COLUMNS = (
    ("project", "ALTER TABLE traces ADD COLUMN project TEXT NOT NULL DEFAULT 'default'"),
    ("provider", "ALTER TABLE traces ADD COLUMN provider TEXT"),
)
V3_INDEXES = """
DROP INDEX IF EXISTS traces_agg;
DROP INDEX IF EXISTS traces_user2;
DROP INDEX IF EXISTS traces_session2;
DROP INDEX IF EXISTS traces_key;
CREATE INDEX traces_agg ON traces (created_at, status, model, endpoint, latency_ms, ttft_ms,
    prompt_tokens, completion_tokens, total_tokens, cost_usd, user_id, session_id, project, id);
CREATE INDEX IF NOT EXISTS traces_user3 ON traces
    (user_id, created_at, status, total_tokens, cost_usd, latency_ms, project);
CREATE INDEX IF NOT EXISTS traces_session3 ON traces
    (session_id, created_at, status, total_tokens, cost_usd, latency_ms, project);
CREATE INDEX IF NOT EXISTS traces_key3 ON traces (key_id, created_at, project);
CREATE INDEX IF NOT EXISTS traces_project ON traces (project, created_at, id);
"""


def _to_v3(conn: sqlite3.Connection) -> None:
    columns = _columns(conn)
    for name, statement in V3_COLUMNS:
        if name not in columns:
            conn.execute(statement)
    # The rollups' keys gain the project: drop them (with the triggers that write them, including
    # the per-row insert trigger the first schema 2 had) and fold every row again.
    for trigger in (*rollups.TRIGGERS, rollups.OLD_INSERT_TRIGGER):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in rollups.ROLLUP_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    _script(conn, V3_INDEXES + rollups.TABLES + rollups.FOLD_TRIGGER)
    conn.execute("UPDATE rollup_state SET folded_rowid = 0, fold_from = 0")
    rollups.fold(conn)  # the existing rows, once: one INSERT ... SELECT ... GROUP BY per rollup
    _script(conn, rollups.DELETE_TRIGGER)


# -- version 4 ----------------------------------------------------------------------------------
# The outbox is filled by a trigger on the fold (once per batch, as the rollups are), never per
# row, and only while export_state has its row: with export off the writer pays one EXISTS.
V4 = """
CREATE TABLE IF NOT EXISTS export_outbox (
    seq INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS export_state (
    one INTEGER PRIMARY KEY CHECK (one = 1)
);
CREATE TRIGGER IF NOT EXISTS export_enqueue AFTER UPDATE OF folded_rowid ON rollup_state
WHEN NEW.folded_rowid > NEW.fold_from AND EXISTS (SELECT 1 FROM export_state) BEGIN
    INSERT INTO export_outbox (trace_id)
        SELECT id FROM traces WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid ORDER BY rowid;
END;
"""


def _to_v4(conn: sqlite3.Connection) -> None:
    _script(conn, V4)


# Each index of a sort column holds the column (and, as every SQLite index, the rowid: the
# listing's tie-break), only for the rows that have a value, so that a page is the index's next
# entries. Filters by time, project and the like are checked on the page's rows
# (queries.list_traces walks an index only when the filter keeps most rows). Each is one more
# B-tree insertion per trace for the writer (bench/README.md); the id is left out, as
# the 32-character ids would make the entries three times as wide.
V5_INDEXES = """
CREATE INDEX IF NOT EXISTS traces_by_cost ON traces (cost_usd) WHERE cost_usd IS NOT NULL;
CREATE INDEX IF NOT EXISTS traces_by_latency ON traces (latency_ms) WHERE latency_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS traces_by_ttft ON traces (ttft_ms) WHERE ttft_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS traces_by_tokens ON traces (total_tokens) WHERE total_tokens IS NOT NULL;
"""


def _to_v5(conn: sqlite3.Connection, search_index: bool = True) -> None:
    hour_columns = {r[1] for r in conn.execute("PRAGMA table_info(rollup_hour)")}
    # A store created by this prysmai got today's rollups from schema 3's step; an older one has
    # rollup_hour without no_usage and no per-key rollups.
    if "no_usage" not in hour_columns:
        for trigger in rollups.TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("DROP TABLE rollup_hour")
        _script(conn, rollups.TABLES)
        folded = int(conn.execute("SELECT folded_rowid FROM rollup_state").fetchone()[0])
        for table in ("rollup_hour", *KEY_ROLLUPS.values()):
            conn.execute(rollups.fold_once_sql(table, folded))
        _script(conn, rollups.FOLD_TRIGGER + rollups.DELETE_TRIGGER)
    _script(conn, V5_INDEXES)
    search.choose(conn, search_index)


def _to_v6(conn: sqlite3.Connection) -> None:
    have = _columns(conn)
    for column in ("prompt_preview", "answer_preview"):
        if column not in have:
            conn.execute(f"ALTER TABLE traces ADD COLUMN {column} TEXT")


V7 = """
CREATE TABLE IF NOT EXISTS scores (
    score_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    trace_time REAL NOT NULL,
    score_project TEXT NOT NULL,
    trace_model TEXT,
    trace_user TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    num REAL,
    label TEXT,
    comment TEXT,
    scored_at REAL NOT NULL,
    author_key TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scores_by_trace ON scores (trace_id);
CREATE INDEX IF NOT EXISTS scores_by_name ON scores (name, score_project, num, trace_id);
CREATE INDEX IF NOT EXISTS scores_by_time
    ON scores (trace_time, score_project, kind, name, num, trace_model, trace_user);
CREATE TABLE IF NOT EXISTS score_names (
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (project, name)
);
"""


def _to_v7(conn: sqlite3.Connection) -> None:
    _script(conn, V7)


def _to_v8(conn: sqlite3.Connection) -> None:
    if "error_code" not in _columns(conn):
        conn.execute("ALTER TABLE traces ADD COLUMN error_code TEXT")
    codes = ", ".join(f"'{c}'" for c in REFUSAL_CODES)
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS traces_limited ON traces (project, created_at, error_code) "
        f"WHERE error_code IN ({codes})"
    )


# The score rollups are small (days x projects x names x models or users) and each score's write
# upserts four rows: keyed by what every read of the averages names first (the dimension), then the
# day, no other index.
V9_SCORE_ROLLUPS = f"""
CREATE TABLE {SCORE_ROLLUP_DAY} (
    period INTEGER NOT NULL,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    dim TEXT NOT NULL,
    dim_value TEXT NOT NULL,
    scores INTEGER NOT NULL,
    total REAL NOT NULL,
    PRIMARY KEY (dim, period, project, name, dim_value)
) WITHOUT ROWID;
CREATE TABLE {SCORE_ROLLUP_ALL} (
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    dim TEXT NOT NULL,
    dim_value TEXT NOT NULL,
    scores INTEGER NOT NULL,
    total REAL NOT NULL,
    PRIMARY KEY (dim, project, name, dim_value)
) WITHOUT ROWID;
"""


# A list of the traces with a common score walks the traces newest first and looks up each one's
# scores: by trace and name, without reading the score's row. The trace's scores are read through
# it as well (its first column), so it replaces the index by trace alone.
V9_SCORES_BY_TRACE = """
DROP INDEX IF EXISTS scores_by_trace;
CREATE INDEX IF NOT EXISTS scores_by_trace_name ON scores (trace_id, name, num);
"""


def _to_v9(conn: sqlite3.Connection) -> None:
    # The fold and delete triggers gain the all-time rollups. A store created by this prysmai got
    # their tables from schema 3's step (empty, or already folded): built again here either way.
    for trigger in rollups.TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    new_hist = "rollup_hist_project_day"
    for table in (*KEY_ALL_ROLLUPS.values(), ALL_TOTALS, ALL_HIST, new_hist, SCORE_ROLLUP_DAY, SCORE_ROLLUP_ALL):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    _script(conn, rollups.TABLES + V9_SCORE_ROLLUPS + V9_SCORES_BY_TRACE)
    # Each new rollup is a coarser grouping of one the store has: every folded row is in it.
    hour_totals = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "unpriced", "no_usage")
    dims = ", ".join(HOUR_DIMS)
    conn.execute(
        f"INSERT INTO {ALL_TOTALS} ({dims}, {', '.join(hour_totals)}) SELECT {dims}, "
        f"{', '.join(f'sum({c})' for c in hour_totals)} FROM rollup_hour GROUP BY {dims} HAVING sum(requests) > 0"
    )
    for table, keys in ((ALL_HIST, ", ".join(ALL_HIST_DIMS)), (new_hist, "period, project")):
        conn.execute(
            f"INSERT INTO {table} ({keys}, metric, bucket, n, min_ms, max_ms) SELECT {keys}, metric, bucket, "
            f"sum(n), min(min_ms), max(max_ms) FROM rollup_hist_day GROUP BY {keys}, metric, bucket HAVING sum(n) > 0"
        )
    totals = ", ".join(KEY_TOTALS)
    sums = ", ".join(f"sum({c})" for c in KEY_TOTALS)
    for column, table in KEY_ALL_ROLLUPS.items():
        # Every folded row is in the per-day rollup of its key: added up, they are the all-time one
        # (by project, and over every project).
        for project, group in (("project", "1, 2"), (f"'{EVERY_PROJECT}'", "2")):
            conn.execute(
                f"INSERT INTO {table} (project, {column}, {totals}) SELECT {project}, {column}, {sums} "
                f"FROM {KEY_ROLLUPS[column]} GROUP BY {group} HAVING sum(requests) > 0"
            )
    for statement in rollup_fill_sql(f"CAST(trace_time / {KEY_PERIOD} AS INTEGER)"):
        conn.execute(statement)
    _script(conn, rollups.FOLD_TRIGGER + rollups.DELETE_TRIGGER)


# The scored traces' rollups (see ..rollups): keyed by what every read names first, the score.
_SCORED_NUMBERS = "".join(f"    {c} {'REAL' if c == 'cost_usd' else 'INTEGER'} NOT NULL,\n" for c in SCORED_COUNTS)
V10_SCORED = f"""
CREATE TABLE {SCORED_TOTALS} (
    name TEXT NOT NULL,
    period INTEGER NOT NULL,
    project TEXT NOT NULL,
    model TEXT NOT NULL,
{_SCORED_NUMBERS}    PRIMARY KEY ({", ".join(SCORED_KEY)})
) WITHOUT ROWID;
CREATE TABLE {SCORED_HIST} (
    name TEXT NOT NULL,
    period INTEGER NOT NULL,
    project TEXT NOT NULL,
    model TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    PRIMARY KEY ({", ".join(SCORED_KEY)}, metric, bucket)
) WITHOUT ROWID;
"""


def _to_v10(conn: sqlite3.Connection) -> None:
    # The fold and delete triggers gain the hourly histograms by model. An earlier step of this
    # migration may have created the table (from ``rollups.TABLES``) and folded into it: built
    # again here from every folded row either way; rows past the watermark are folded later by
    # the trigger, as any pending rows are.
    table = "rollup_hist_model_hour"
    for trigger in rollups.TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    _script(conn, rollups.TABLES)
    folded = int(conn.execute("SELECT folded_rowid FROM rollup_state").fetchone()[0])
    conn.execute(rollups.fold_once_sql(table, folded))
    _script(conn, rollups.FOLD_TRIGGER + rollups.DELETE_TRIGGER)
    # The scored traces' rollups, from the scores and their traces' rows.
    conn.execute("DROP TRIGGER IF EXISTS scored_rollup_delete")
    for scored in (SCORED_TOTALS, SCORED_HIST):
        conn.execute(f"DROP TABLE IF EXISTS {scored}")
    _script(conn, V10_SCORED)
    for statement in rollups.SCORED_FILL:
        conn.execute(statement)
    _script(conn, rollups.SCORED_DELETE_TRIGGER)


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(traces)")}


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
    2: _to_v3,
    3: _to_v4,
    4: _to_v5,
    5: _to_v6,
    6: _to_v7,
    7: _to_v8,
    8: _to_v9,
    9: _to_v10,
}
SCHEMA_VERSION = max(MIGRATIONS) + 1


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def prepare_new(conn: sqlite3.Connection) -> None:
    """A new, empty store gives the pages retention frees back to the disk (``auto_vacuum =
    INCREMENTAL``): possible only before its first table is created or its journal mode set."""
    if version(conn) == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone():
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


def migrate(conn: sqlite3.Connection, *, search_index: bool | None = None) -> tuple[int, int]:
    """Bring the store on ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`, every pending step
    in one transaction. Returns ``(version before, version after)``; a newer store is left
    untouched. ``search_index``: build the search index or not (``None``: as the store says, on
    for a store that never said; see :mod:`.search`)."""
    ensure_functions(conn)
    before = current = version(conn)
    prepare_new(conn)
    if current < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = version(conn)
            while current < SCHEMA_VERSION:
                if current == 4:  # the search index is a choice: not built only to be dropped
                    _to_v5(conn, search_index is not False)
                else:
                    MIGRATIONS[current](conn)
                current += 1
                conn.execute(f"PRAGMA user_version = {current}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if current == SCHEMA_VERSION:
        fold_pending(conn)
    return before, current


def fold_pending(conn: sqlite3.Connection) -> None:
    """Fold rows that something other than the writer inserted (a script, the sqlite3 shell)
    into the rollups. Best effort: a store this process may not write (read-only file, another
    writer holding the lock past the timeout) is read as it is."""
    if not rollups.pending(conn):
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return
    try:
        rollups.fold(conn)
        conn.execute("COMMIT")
    except sqlite3.OperationalError:
        conn.execute("ROLLBACK")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
