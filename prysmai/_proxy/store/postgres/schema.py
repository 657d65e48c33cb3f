"""The PostgreSQL schema of the trace store, and its versioned migrations.

The same logical schema as SQLite's, laid out for a database that holds weeks of traces:

* ``trace_rows`` holds every column but the bodies: the rows that lists and aggregates read stay
  narrow. ``trace_bodies`` holds ``request_body`` and ``response_body``. Both are partitioned by
  day on ``created_at`` (native range partitions, unix seconds): retention drops whole days, and a
  time range reads only its days. Their key is ``(id, created_at)`` (a partitioned table's key
  must hold the partition key); a trace's ``created_at`` never changes, so a batch sent twice is
  recognised row by row (``ON CONFLICT DO NOTHING``).
* ``traces`` is a view of them, so the one query layer reads ``traces`` on either engine. Since
  version 7 each body is a scalar subquery of the view's row (its day's partition, by key), which
  a query that reads no body never runs: PostgreSQL 15 cannot remove a left join to a partitioned
  table (16 can), so the join of versions 1 to 4 merged every body's key into every list and
  aggregate.
* ``metadata`` is JSONB. Text columns compare by code point (``COLLATE "C"``), as SQLite's do:
  lists, cursors and ties sort alike on both engines, whatever the database's locale.
* The rollups (``rollup_hour``, ``rollup_hist_hour``, ``rollup_hist_day``, ``rollup_user_day``,
  ``rollup_session_day``; version 6: ``rollup_hist_project_day``, the all-time ``rollup_all``,
  ``rollup_hist_all``, ``rollup_user_all``, ``rollup_session_all``, and the score rollups) are
  those of SQLite, folded from each batch's new rows in the batch's transaction (:mod:`.rollups`);
  version 8 makes the user and session indexes covering; version 9 adds
  ``rollup_hist_model_hour`` and the scored traces' rollups (``rollup_scored_day``,
  ``rollup_scored_hist_day``, kept by the scores' writes and retention's take-backs); version 10
  adds the per-key rollups by hour, ``rollup_user_hour`` and ``rollup_session_hour``; version 11
  the rollups by quarter hour, ``rollup_quarter`` and ``rollup_hist_quarter`` (PostgreSQL's own:
  SQLite keeps neither).

Migrations run at start-up inside a transaction holding an advisory lock, so replicas starting
together cannot race; ``prysmai_schema.version`` holds the version, and a database written by a
newer prysmai is refused.
"""

from __future__ import annotations

from ..budgets import REFUSAL_CODES
from ..rollups import (
    ALL_HIST,
    ALL_HIST_DIMS,
    ALL_TOTALS,
    EVERY_HIST_LEVEL,
    EVERY_PROJECT,
    EVERY_TOTALS_LEVEL,
    HOUR_DIMS,
    KEY_ALL_ROLLUPS,
    KEY_HOUR_ROLLUPS,
    KEY_PERIOD,
    KEY_ROLLUPS,
    KEY_TOTALS,
    QUARTER_HIST,
    QUARTER_TOTALS,
    SCORE_ROLLUP_ALL,
    SCORE_ROLLUP_DAY,
    SCORED_COUNTS,
    SCORED_HIST,
    SCORED_KEY,
    SCORED_TOTALS,
)
from ..scores import rollup_fill_sql
from .rollups import SCORED_FILL, fill_hist, fill_key_hours, fill_totals, period_sql

#: Column types, in :data:`~..rows.COLUMNS` order. Bodies are not in ``trace_rows``.
TYPES = {
    "id": "text NOT NULL",
    "created_at": "double precision NOT NULL",
    "method": "text NOT NULL",
    "endpoint": "text NOT NULL",
    "model": "text",
    "stream": "smallint NOT NULL DEFAULT 0",
    "status": "text NOT NULL",
    "http_status": "integer",
    "latency_ms": "double precision",
    "ttft_ms": "double precision",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "total_tokens": "bigint",
    "cost_usd": "double precision",
    "request_body": "text",
    "response_body": "text",
    "error": "text",
    "user_id": "text",
    "session_id": "text",
    "metadata": "jsonb",
    "notes": "text",
    "response_model": "text",
    "provider_request_id": "text",
    "key_id": "text",
    "project": "text NOT NULL DEFAULT 'default'",
    "provider": "text",
    "prompt_preview": "text",
    "answer_preview": "text",
    "error_code": "text",
}
BODIES = ("request_body", "response_body")
ROW_COLUMNS = tuple(c for c in TYPES if c not in BODIES)
#: Columns added by a later version than 1 (version 1's table is created without them).
PREVIEWS = ("prompt_preview", "answer_preview")
LATER = (*PREVIEWS, "error_code")

_TEXT = 'text COLLATE "C"'
_ROW_DDL = ",\n    ".join(f"{c} {TYPES[c].replace('text', _TEXT, 1)}" for c in ROW_COLUMNS if c not in LATER)
_HOUR_DIMS = "".join(f"    {d} {_TEXT} NOT NULL,\n" for d in HOUR_DIMS)


_HOUR_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "unpriced", "no_usage")


def _numbers(columns: tuple[str, ...]) -> str:
    return "".join(f"    {c} {'double precision' if c == 'cost_usd' else 'bigint'} NOT NULL,\n" for c in columns)


def _dims(dims: tuple[str, ...]) -> str:
    return "".join(f"    {d} {_TEXT} NOT NULL,\n" for d in dims)


def _totals_table(table: str) -> str:
    column = EVERY_TOTALS_LEVEL[table][1]
    return f"""CREATE TABLE {table} (
    {column} bigint NOT NULL,
{_HOUR_DIMS}{_numbers(_HOUR_TOTALS)}    PRIMARY KEY ({column}, {", ".join(HOUR_DIMS)})
);
"""


def _hist_table(table: str) -> str:
    _, dims = EVERY_HIST_LEVEL[table]
    dim_columns = "".join(f"    {d} {_TEXT} NOT NULL,\n" for d in dims)
    key = ", ".join(["period", *dims, "metric", "bucket"])
    return f"""CREATE TABLE {table} (
    period bigint NOT NULL,
{dim_columns}    metric text NOT NULL,
    bucket integer NOT NULL,
    n bigint NOT NULL,
    min_ms double precision NOT NULL,
    max_ms double precision NOT NULL,
    PRIMARY KEY ({key})
);
"""


def _key_table(column: str, table: str = "") -> str:
    return f"""CREATE TABLE {table or KEY_ROLLUPS[column]} (
    period bigint NOT NULL,
    project {_TEXT} NOT NULL,
    {column} {_TEXT} NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    cancelled bigint NOT NULL,
    total_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    unpriced bigint NOT NULL,
    no_usage bigint NOT NULL,
    first_seen double precision NOT NULL,
    last_seen double precision NOT NULL,
    PRIMARY KEY (period, project, {column})
);
"""


V1 = (
    f"""
CREATE TABLE trace_rows (
    {_ROW_DDL},
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE trace_bodies (
    id text COLLATE "C" NOT NULL,
    created_at double precision NOT NULL,
    request_body text,
    response_body text,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX trace_rows_time ON trace_rows (created_at, id);
CREATE INDEX trace_rows_project ON trace_rows (project, created_at, id);
CREATE INDEX trace_rows_user ON trace_rows (user_id, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX trace_rows_session ON trace_rows (session_id, created_at) WHERE session_id IS NOT NULL;
CREATE INDEX trace_rows_key ON trace_rows (key_id, created_at);
CREATE INDEX trace_rows_id ON trace_rows (id);
CREATE VIEW traces AS
    SELECT r.id, r.created_at, r.method, r.endpoint, r.model, r.stream, r.status, r.http_status,
        r.latency_ms, r.ttft_ms, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd,
        b.request_body, b.response_body, r.error, r.user_id, r.session_id, r.metadata,
        r.notes, r.response_model, r.provider_request_id, r.key_id, r.project, r.provider
    FROM trace_rows r LEFT JOIN trace_bodies b ON b.id = r.id AND b.created_at = r.created_at;
"""
    + _totals_table("rollup_hour")
    # Version 1's histogram levels (version 6 adds rollup_hist_project_day).
    + "".join(_hist_table(t) for t in ("rollup_hist_hour", "rollup_hist_day"))
    + "".join(_key_table(c) for c in KEY_ROLLUPS)
)

#: What the replicas of one database share (:mod:`.replicas`): the dashboard's signing secret, its
#: sessions (issued and ended), each replica's requests of the last minute and spend of the month
#: per project. Small tables, rewritten in place; nothing of a trace.
V2 = """
CREATE TABLE prysmai_settings (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE prysmai_sessions (
    id text COLLATE "C" PRIMARY KEY,
    key_id text NOT NULL,
    expires double precision NOT NULL,
    ended boolean NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX prysmai_sessions_changed ON prysmai_sessions (changed_at);
CREATE TABLE prysmai_rates (
    replica text NOT NULL,
    project text COLLATE "C" NOT NULL,
    counts integer[] NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (replica, project)
);
CREATE TABLE prysmai_spend (
    replica text NOT NULL,
    project text COLLATE "C" NOT NULL,
    month bigint NOT NULL,
    usd double precision NOT NULL,
    PRIMARY KEY (replica, project, month)
);
"""

#: Version 3 (a list you can scan): the previews of the traces list (see ..previews), computed
#: when a row is built; the traces of an earlier database have none. A new column of a
#: partitioned table is added to its partitions; the view gets them at its end.
V3 = f"""
ALTER TABLE trace_rows ADD COLUMN prompt_preview {_TEXT}, ADD COLUMN answer_preview {_TEXT};
CREATE OR REPLACE VIEW traces AS
    SELECT r.id, r.created_at, r.method, r.endpoint, r.model, r.stream, r.status, r.http_status,
        r.latency_ms, r.ttft_ms, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd,
        b.request_body, b.response_body, r.error, r.user_id, r.session_id, r.metadata,
        r.notes, r.response_model, r.provider_request_id, r.key_id, r.project, r.provider,
        r.prompt_preview, r.answer_preview
    FROM trace_rows r LEFT JOIN trace_bodies b ON b.id = r.id AND b.created_at = r.created_at;
"""

#: Scores (see :mod:`..scores`): not partitioned -- a score is small and rare beside its trace;
#: retention deletes the scores of the traces it deletes.
V4 = """
CREATE TABLE scores (
    score_id text COLLATE "C" PRIMARY KEY,
    trace_id text COLLATE "C" NOT NULL,
    trace_time double precision NOT NULL,
    score_project text COLLATE "C" NOT NULL,
    trace_model text COLLATE "C",
    trace_user text COLLATE "C",
    name text COLLATE "C" NOT NULL,
    kind text NOT NULL,
    num double precision,
    label text COLLATE "C",
    comment text,
    scored_at double precision NOT NULL,
    author_key text NOT NULL,
    source text NOT NULL
);
CREATE INDEX scores_by_trace ON scores (trace_id);
CREATE INDEX scores_by_name ON scores (name, score_project, num, trace_id);
CREATE INDEX scores_by_time ON scores (trace_time, score_project, kind, name, num, trace_model, trace_user);
CREATE TABLE score_names (
    project text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    kind text NOT NULL,
    PRIMARY KEY (project, name)
);
"""

#: Version 5 (spend against budget): the code of the error the proxy answered itself (a limit's
#: 429...; see ``rows.COLUMNS``), and an index of the limits' refusals only, by project and time.
V5 = f"""
ALTER TABLE trace_rows ADD COLUMN error_code {_TEXT};
CREATE OR REPLACE VIEW traces AS
    SELECT r.id, r.created_at, r.method, r.endpoint, r.model, r.stream, r.status, r.http_status,
        r.latency_ms, r.ttft_ms, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd,
        b.request_body, b.response_body, r.error, r.user_id, r.session_id, r.metadata,
        r.notes, r.response_model, r.provider_request_id, r.key_id, r.project, r.provider,
        r.prompt_preview, r.answer_preview, r.error_code
    FROM trace_rows r LEFT JOIN trace_bodies b ON b.id = r.id AND b.created_at = r.created_at;
CREATE INDEX trace_rows_limited ON trace_rows (project, created_at, error_code)
    WHERE error_code IN ({", ".join(f"'{c}'" for c in REFUSAL_CODES)});
"""


def _score_table(table: str, period: bool) -> str:
    key = ", ".join(["dim", *(["period"] if period else []), "project", "name", "dim_value"])
    periods = "    period bigint NOT NULL,\n" if period else ""
    return f"""CREATE TABLE {table} (
{periods}{_dims(("project", "name", "dim", "dim_value"))}    scores bigint NOT NULL,
    total double precision NOT NULL,
    PRIMARY KEY ({key})
);
"""


def _v6() -> str:
    """Version 6 (the overview at 1 M traces): the daily histograms by project, the all-time
    rollups and the score rollups, each built from a finer rollup the database has (or the scores)."""
    hist_keys = ", ".join(ALL_HIST_DIMS)
    hour_dims = ", ".join(HOUR_DIMS)
    ddl = (
        _hist_table("rollup_hist_project_day")
        + f"""CREATE TABLE {ALL_TOTALS} (
{_dims(HOUR_DIMS)}{_numbers(_HOUR_TOTALS)}    PRIMARY KEY ({hour_dims})
);
CREATE TABLE {ALL_HIST} (
{_dims(ALL_HIST_DIMS)}    metric text NOT NULL,
    bucket integer NOT NULL,
    n bigint NOT NULL,
    min_ms double precision NOT NULL,
    max_ms double precision NOT NULL,
    PRIMARY KEY ({hist_keys}, metric, bucket)
);
"""
        + "".join(
            f"""CREATE TABLE {table} (
{_dims(("project", column))}{_numbers(KEY_TOTALS)}    PRIMARY KEY (project, {column})
);
CREATE INDEX {table}_top ON {table} (project, requests);
"""
            for column, table in KEY_ALL_ROLLUPS.items()
        )
        + _score_table(SCORE_ROLLUP_DAY, True)
        + _score_table(SCORE_ROLLUP_ALL, False)
    )
    fills = [
        f"INSERT INTO {ALL_TOTALS} ({hour_dims}, {', '.join(_HOUR_TOTALS)}) SELECT {hour_dims}, "
        f"{', '.join(f'sum({c})' for c in _HOUR_TOTALS)} FROM rollup_hour GROUP BY {hour_dims} "
        "HAVING sum(requests) > 0",
        *(
            f"INSERT INTO {table} ({keys}, metric, bucket, n, min_ms, max_ms) SELECT {keys}, metric, bucket, "
            f"sum(n), min(min_ms), max(max_ms) FROM rollup_hist_day GROUP BY {keys}, metric, bucket HAVING sum(n) > 0"
            for table, keys in ((ALL_HIST, hist_keys), ("rollup_hist_project_day", "period, project"))
        ),
        *(
            f"INSERT INTO {table} (project, {column}, {', '.join(KEY_TOTALS)}) SELECT {project}, {column}, "
            f"{', '.join(f'sum({c})' for c in KEY_TOTALS)} FROM {KEY_ROLLUPS[column]} GROUP BY {group} "
            "HAVING sum(requests) > 0"
            for column, table in KEY_ALL_ROLLUPS.items()
            for project, group in (("project", "1, 2"), (f"'{EVERY_PROJECT}'", "2"))
        ),
        *rollup_fill_sql(period_sql("trace_time", KEY_PERIOD)),
    ]
    # As SQLite's schema 9: the scores by trace and name (a common score's list probes it).
    ddl += "DROP INDEX scores_by_trace;\nCREATE INDEX scores_by_trace_name ON scores (trace_id, name, num);\n"
    return ddl + "".join(f"{statement};\n" for statement in fills)


V6 = _v6()

#: Version 7 (lists at a million traces): one index per sort column of the traces list, as
#: SQLite's schema 5 has, ending with the id that breaks ties on PostgreSQL, partial (the rows
#: without a value are listed apart). An index of the partitioned table is one per day
#: partition, made for each new day with its partition: a sorted page is a Merge Append of the
#: days' index scans, and a cursor page starts each scan at the cursor.
V7 = "".join(
    f"CREATE INDEX IF NOT EXISTS trace_rows_by_{name} ON trace_rows ({column}, id) WHERE {column} IS NOT NULL;\n"
    for name, column in (
        ("cost", "cost_usd"),
        ("latency", "latency_ms"),
        ("ttft", "ttft_ms"),
        ("tokens", "total_tokens"),
    )
)

#: Version 7, too: the bodies of the ``traces`` view as scalar subqueries (see the module's
#: docstring), so that lists and aggregates read ``trace_rows`` alone.
V7 += """
CREATE OR REPLACE VIEW traces AS
    SELECT r.id, r.created_at, r.method, r.endpoint, r.model, r.stream, r.status, r.http_status,
        r.latency_ms, r.ttft_ms, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd,
        (SELECT b.request_body FROM trace_bodies b WHERE b.id = r.id AND b.created_at = r.created_at)
            AS request_body,
        (SELECT b.response_body FROM trace_bodies b WHERE b.id = r.id AND b.created_at = r.created_at)
            AS response_body,
        r.error, r.user_id, r.session_id, r.metadata,
        r.notes, r.response_model, r.provider_request_id, r.key_id, r.project, r.provider,
        r.prompt_preview, r.answer_preview, r.error_code
    FROM trace_rows r;
"""

#: Version 8 (the overview at 1 M traces): the user and session indexes hold the latency and the
#: project too, as SQLite's do (``traces_user3``, ``traces_session3``): the overview's latency
#: sample of a user or session (its newest traces, of one project or all) is read from the index
#: alone, not from rows scattered over the days' tables, for each of the overview's top keys. The
#: key columns are those of version 1's indexes, which these replace.
V8 = "".join(
    f"""CREATE INDEX IF NOT EXISTS trace_rows_{name}_covering ON trace_rows ({column}, created_at)
    INCLUDE (latency_ms, project) WHERE {column} IS NOT NULL;
DROP INDEX IF EXISTS trace_rows_{name};
"""
    for name, column in (("user", "user_id"), ("session", "session_id"))
)

#: Version 9 (the views that missed 300 ms at 1 M traces), as SQLite's schema 10: the hourly
#: histograms by project, model and endpoint, built from the rows (again, for a database taken
#: back a version).
V9 = (
    f"DROP TABLE IF EXISTS rollup_hist_model_hour, {SCORED_TOTALS}, {SCORED_HIST};\n"
    + _hist_table("rollup_hist_model_hour")
    + f"{fill_hist('rollup_hist_model_hour')};\n"
    # The scored traces' rollups, from the scores and their traces' rows.
    + f"""CREATE TABLE {SCORED_TOTALS} (
{_dims(("name",))}    period bigint NOT NULL,
{_dims(("project", "model"))}{_numbers(SCORED_COUNTS)}    PRIMARY KEY ({", ".join(SCORED_KEY)})
);
CREATE TABLE {SCORED_HIST} (
{_dims(("name",))}    period bigint NOT NULL,
{_dims(("project", "model"))}    metric text NOT NULL,
    bucket integer NOT NULL,
    n bigint NOT NULL,
    min_ms double precision NOT NULL,
    max_ms double precision NOT NULL,
    PRIMARY KEY ({", ".join(SCORED_KEY)}, metric, bucket)
);
"""
    + "".join(f"{statement};\n" for statement in SCORED_FILL)
)


def _v10() -> str:
    """Version 10 (the 7-day overview at 10 M traces): the per-key rollups by hour
    (:data:`~..rollups.KEY_HOUR_ROLLUPS`), built from the rows (again, for a database taken back a
    version). A range's partial days are then read from an hour's rows per key, not from the rows."""
    return "".join(
        f"DROP TABLE IF EXISTS {table};\n{_key_table(column, table)}{fill_key_hours(column)};\nANALYZE {table};\n"
        for column, table in KEY_HOUR_ROLLUPS.items()
    )


V10 = _v10()


def _v11() -> str:
    """Version 11 (the day's overview at 10 M traces): the rollups by quarter hour
    (:data:`~..rollups.QUARTER_TOTALS`, :data:`~..rollups.QUARTER_HIST`), built from the rows (again,
    for a database taken back a version), in the order of their periods, as folding writes them."""
    built = [(t, _totals_table(t), fill_totals(t)) for t in QUARTER_TOTALS]
    built += [(t, _hist_table(t), fill_hist(t, " ORDER BY 1")) for t in QUARTER_HIST]
    return "".join(f"DROP TABLE IF EXISTS {t};\n{ddl}{fill};\nANALYZE {t};\n" for t, ddl, fill in built)


V11 = _v11()

#: ``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``.
MIGRATIONS: dict[int, str] = {0: V1, 1: V2, 2: V3, 3: V4, 4: V5, 5: V6, 6: V7, 7: V8, 8: V9, 9: V10, 10: V11}
SCHEMA_VERSION = max(MIGRATIONS) + 1
#: The advisory lock migrations and partition creation take (any constant of our own).
LOCK = 0x70727973  # "prys"
