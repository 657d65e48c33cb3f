"""Keeping the rollup tables in step with ``traces``: set-based folding, one statement per table.

The writer inserts a batch of rows and, in the same transaction, calls :func:`fold`, which moves
the watermark ``rollup_state.folded_rowid``; a trigger on that one-row table (it fires once per
batch, not per row) runs one ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`` per
rollup table, aggregating the rows not yet folded (a rowid range) into the rollups. Rows that
share an hour (and model, endpoint, status) become one upsert; the per-row triggers schema 2
first had ran five upserts for every row. Every row at or below the watermark is counted in the
rollups. Rows inserted by other means (a script, the ``sqlite3`` shell) are folded by the
writer's next batch, or when ``prysmai stats``/``traces`` or the dashboard opens the store
(``migrations.fold_pending``). Deletes are rare (a user's own cleanup): a trigger subtracts a
deleted row, but only one already folded (``rowid <= folded_rowid``).

Every rollup keeps the trace's ``project`` (schema 3), so a read scoped to one project is answered
from the rollups as an unscoped one is. Schema 4 splits a trace without a cost into ``unpriced``
(usage reported, no price) and ``no_usage`` (no usage reported), and adds the per-day rollups of
users and sessions (``KEY_ROLLUPS``). Schema 9 adds their all-time twins (``KEY_ALL_ROLLUPS``),
folded by the same trigger and taken back by the same delete trigger.
"""

from __future__ import annotations

import math
import sqlite3

from ..rollups import (
    ALL_HIST,
    ALL_HIST_DIMS,
    ALL_TOTALS,
    BUCKET_FLOOR_MS,
    BUCKETS_PER_E,
    ERRORS_SQL,
    EVERY_PROJECT,
    HIST_LEVELS,
    HOUR_DIMS,
    KEY_ALL_ROLLUPS,
    KEY_PERIOD,
    KEY_ROLLUPS,
    KEY_TOTALS,
    METRICS,
    NO_USAGE_SQL,
    SCORED_PAIRS,
    UNPRICED_SQL,
    key_sql,
    scored_fold_sql,
)


def bucket_sql(column: str) -> str:
    """SQL for the histogram bucket of ``column`` (NULL stays NULL). ``ln`` is a SQLite math
    function (3.35+); :func:`ensure_functions` supplies it where SQLite was built without them.
    ``CAST`` truncates, which is ``floor`` here since the argument of ``ln`` is >= 1."""
    return f"CAST(ln(max({column}, {BUCKET_FLOOR_MS}) * {1 / BUCKET_FLOOR_MS:g}) * {BUCKETS_PER_E} AS INTEGER)"


def _ln(x: float | None) -> float | None:
    if x is None or x <= 0:
        return None  # as SQLite's own ln()
    return math.log(x)


def ensure_functions(conn: sqlite3.Connection) -> None:
    """Register ``ln`` on ``conn`` when this SQLite lacks its math functions (built without
    SQLITE_ENABLE_MATH_FUNCTIONS, or older than 3.35): folding and the delete trigger call it."""
    try:
        conn.execute("SELECT ln(1.0)").fetchone()
    except sqlite3.OperationalError:
        conn.create_function("ln", 1, _ln, deterministic=True)


def _period(row: str, seconds: int) -> str:
    return f"CAST({row}created_at / {seconds} AS INTEGER) * {seconds}"


# -- the tables ------------------------------------------------------------------------------------
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
) WITHOUT ROWID;
"""


def _key_table(column: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {KEY_ROLLUPS[column]} (
    period INTEGER NOT NULL,
    project TEXT NOT NULL,
    {column} TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    unpriced INTEGER NOT NULL,
    no_usage INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (period, project, {column})
) WITHOUT ROWID;
"""


def _key_all_table(column: str) -> str:
    totals = "".join(f"    {c} {'REAL' if c == 'cost_usd' else 'INTEGER'} NOT NULL,\n" for c in KEY_TOTALS)
    table = KEY_ALL_ROLLUPS[column]
    return f"""CREATE TABLE IF NOT EXISTS {table} (
    project TEXT NOT NULL,
    {column} TEXT NOT NULL,
{totals}    PRIMARY KEY (project, {column})
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {table}_top ON {table} (project, requests);
"""


#: The per-day user and session rollups (schema 4). A day's rows sit together at the key's end,
#: where a batch's upserts land; a range of days is one range of the key.
KEY_TABLES = "".join(_key_table(c) for c in KEY_ROLLUPS)
#: Their all-time twins (schema 9): a project's (or every project's) top keys are the last entries of
#: its range of the ``_top`` index.
KEY_ALL_TABLES = "".join(_key_all_table(c) for c in KEY_ALL_ROLLUPS)
_HOUR_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "unpriced", "no_usage")
#: The all-time totals and histograms (schema 9): ``rollup_hour`` and ``rollup_hist_day`` without
#: their period.
ALL_TABLES = f"""CREATE TABLE IF NOT EXISTS {ALL_TOTALS} (
{"".join(f"    {d} TEXT NOT NULL,{chr(10)}" for d in HOUR_DIMS)}{
    "".join(f"    {c} {'REAL' if c == 'cost_usd' else 'INTEGER'} NOT NULL,{chr(10)}" for c in _HOUR_TOTALS)
}    PRIMARY KEY ({", ".join(HOUR_DIMS)})
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {ALL_HIST} (
{"".join(f"    {d} TEXT NOT NULL,{chr(10)}" for d in ALL_HIST_DIMS)}    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    PRIMARY KEY ({", ".join(ALL_HIST_DIMS)}, metric, bucket)
) WITHOUT ROWID;
"""

# WITHOUT ROWID: an upsert then touches one B-tree (the key's) instead of the key's index and the
# table; folding a batch upserts about one histogram row per trace (day x model x endpoint x
# bucket has few repeats within a batch). The period leads every key: a time range is one range of
# the key whether or not a project is named, and the rows a batch adds sit at the table's end.
# min_ms/max_ms only narrow the percentile estimate; after a delete they may be wider than the
# remaining rows, which keeps the estimate within the bucket (the documented bound) regardless.
_HOUR_DIM_COLUMNS = "".join(f"    {d} TEXT NOT NULL,\n" for d in HOUR_DIMS)
TABLES = (
    f"""
CREATE TABLE IF NOT EXISTS rollup_hour (
    hour INTEGER NOT NULL,
{_HOUR_DIM_COLUMNS}    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    unpriced INTEGER NOT NULL,
    no_usage INTEGER NOT NULL,
    PRIMARY KEY (hour, {", ".join(HOUR_DIMS)})
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_state (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    folded_rowid INTEGER NOT NULL,
    fold_from INTEGER NOT NULL
);
INSERT OR IGNORE INTO rollup_state (one, folded_rowid, fold_from) VALUES (1, 0, 0);
"""
    + "".join(_hist_table(t) for t in HIST_LEVELS)
    + KEY_TABLES
    + KEY_ALL_TABLES
    + ALL_TABLES
)


#: Every rollup table (what a migration drops and rebuilds when their keys change).
ROLLUP_TABLES = ("rollup_hour", *HIST_LEVELS, *KEY_ROLLUPS.values(), *KEY_ALL_ROLLUPS.values(), ALL_TOTALS, ALL_HIST)


# -- folding: rows (fold_from, folded_rowid] of traces into every rollup, one statement per table ----
def _fold_hour_sql(lo: str, hi: str) -> str:
    names = ", ".join(["hour", *HOUR_DIMS])
    keys = ", ".join(key_sql(d) for d in HOUR_DIMS)
    group = ", ".join(str(i + 1) for i in range(len(HOUR_DIMS) + 1))
    return f"""INSERT INTO rollup_hour ({names}, requests, prompt_tokens,
        completion_tokens, total_tokens, cost_usd, unpriced, no_usage)
    SELECT {_period("", 3600)}, {keys}, count(*),
        coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
        coalesce(sum(cost_usd), 0), sum{UNPRICED_SQL}, sum{NO_USAGE_SQL}
    FROM traces NOT INDEXED WHERE rowid > {lo} AND rowid <= {hi} GROUP BY {group}
    ON CONFLICT ({names}) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        total_tokens = total_tokens + excluded.total_tokens,
        cost_usd = cost_usd + excluded.cost_usd,
        unpriced = unpriced + excluded.unpriced,
        no_usage = no_usage + excluded.no_usage;"""


def _fold_key_sql(column: str, lo: str, hi: str) -> str:
    names = f"period, project, {column}"
    return f"""INSERT INTO {KEY_ROLLUPS[column]} ({names}, requests, errors, cancelled, total_tokens,
        cost_usd, unpriced, no_usage, first_seen, last_seen)
    SELECT {_period("", KEY_PERIOD)}, project, {key_sql(column)}, count(*), sum{ERRORS_SQL},
        sum(status = 'cancelled'), coalesce(sum(total_tokens), 0), coalesce(sum(cost_usd), 0), sum{UNPRICED_SQL},
        sum{NO_USAGE_SQL}, min(created_at), max(created_at)
    FROM traces NOT INDEXED WHERE rowid > {lo} AND rowid <= {hi} GROUP BY 1, 2, 3
    ON CONFLICT ({names}) DO UPDATE SET
        requests = requests + excluded.requests,
        errors = errors + excluded.errors,
        cancelled = cancelled + excluded.cancelled,
        total_tokens = total_tokens + excluded.total_tokens,
        cost_usd = cost_usd + excluded.cost_usd,
        unpriced = unpriced + excluded.unpriced,
        no_usage = no_usage + excluded.no_usage,
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen);"""


def _fold_key_all_sql(column: str, lo: str, hi: str) -> str:
    names = f"project, {column}"
    totals = f"""count(*), sum{ERRORS_SQL}, sum(status = 'cancelled'), coalesce(sum(total_tokens), 0),
        coalesce(sum(cost_usd), 0), sum{UNPRICED_SQL}, sum{NO_USAGE_SQL}"""
    rows = f"FROM traces NOT INDEXED WHERE rowid > {lo} AND rowid <= {hi}"
    # Each key's row in its project, and its row of every project.
    return f"""INSERT INTO {KEY_ALL_ROLLUPS[column]} ({names}, {", ".join(KEY_TOTALS)}) SELECT * FROM (
        SELECT * FROM (SELECT project, {key_sql(column)}, {totals} {rows} GROUP BY 1, 2)
        UNION ALL SELECT * FROM (SELECT '{EVERY_PROJECT}', {key_sql(column)}, {totals} {rows} GROUP BY 2)) WHERE true
    ON CONFLICT ({names}) DO UPDATE SET
        {", ".join(f"{c} = {c} + excluded.{c}" for c in KEY_TOTALS)};"""


def _positions(n: int) -> str:
    return ", ".join(str(i + 1) for i in range(n))


def _fold_all_sql(lo: str, hi: str) -> str:
    names = ", ".join(HOUR_DIMS)
    keys = ", ".join(key_sql(d) for d in HOUR_DIMS)
    hist_names = ", ".join([*ALL_HIST_DIMS, "metric", "bucket"])
    hist_keys = ", ".join(key_sql(d) for d in ALL_HIST_DIMS)
    group = ", ".join(str(i + 1) for i in range(len(ALL_HIST_DIMS) + 2))
    selects = " UNION ALL ".join(
        f"""SELECT * FROM (SELECT {hist_keys}, '{metric}', {bucket_sql(column)}, count(*), min({column}), max({column})
        FROM traces NOT INDEXED WHERE rowid > {lo} AND rowid <= {hi} AND {column} IS NOT NULL GROUP BY {group})"""
        for metric, column in METRICS
    )
    return f"""INSERT INTO {ALL_TOTALS} ({names}, {", ".join(_HOUR_TOTALS)})
    SELECT {keys}, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
        coalesce(sum(total_tokens), 0), coalesce(sum(cost_usd), 0), sum{UNPRICED_SQL}, sum{NO_USAGE_SQL}
    FROM traces NOT INDEXED WHERE rowid > {lo} AND rowid <= {hi} GROUP BY {_positions(len(HOUR_DIMS))}
    ON CONFLICT ({names}) DO UPDATE SET
        {", ".join(f"{c} = {c} + excluded.{c}" for c in _HOUR_TOTALS)};
INSERT INTO {ALL_HIST} ({hist_names}, n, min_ms, max_ms) SELECT * FROM ({selects}) WHERE true
    ON CONFLICT ({hist_names}) DO UPDATE SET
        n = n + excluded.n,
        min_ms = min(min_ms, excluded.min_ms),
        max_ms = max(max_ms, excluded.max_ms);"""


# Every fold reads its rows by rowid range, ``NOT INDEXED``: left to choose, SQLite could walk a
# sort column's index (schema 4) for "latency_ms IS NOT NULL", every row of the store per batch.


def _fold_hist_sql(table: str, lo: str, hi: str, source: str = "traces NOT INDEXED") -> str:
    seconds, dims = HIST_LEVELS[table]
    names = ", ".join(["period", *dims, "metric", "bucket"])
    keys = ", ".join([_period("", seconds), *(key_sql(d) for d in dims)])
    group = ", ".join(str(i + 1) for i in range(len(dims) + 3))
    # Both metrics in one statement: a UNION ALL of one grouped SELECT per metric.
    selects = " UNION ALL ".join(
        f"""SELECT * FROM (SELECT {keys}, '{metric}', {bucket_sql(column)}, count(*), min({column}), max({column})
        FROM {source} WHERE rowid > {lo} AND rowid <= {hi} AND {column} IS NOT NULL GROUP BY {group})"""
        for metric, column in METRICS
    )
    # "WHERE true" keeps SQLite's parser from reading ON CONFLICT as a join constraint.
    return f"""INSERT INTO {table} ({names}, n, min_ms, max_ms) SELECT * FROM ({selects}) WHERE true
    ON CONFLICT ({names}) DO UPDATE SET
        n = n + excluded.n,
        min_ms = min(min_ms, excluded.min_ms),
        max_ms = max(max_ms, excluded.max_ms);"""


# Run by SQLite when the watermark moves (once per batch, never per row): the writer's fold is
# then a single statement. Each statement the writer executes hands the GIL back and forth
# with the event loop, which under load waits up to the 5 ms switch interval each time; four
# statements per batch instead of one measurably slowed the writer.
FOLD_TRIGGER = f"""CREATE TRIGGER IF NOT EXISTS rollup_fold AFTER UPDATE OF folded_rowid ON rollup_state
WHEN NEW.folded_rowid > NEW.fold_from BEGIN
{_fold_hour_sql("NEW.fold_from", "NEW.folded_rowid")}
{"".join(_fold_hist_sql(t, "NEW.fold_from", "NEW.folded_rowid") for t in HIST_LEVELS)}
{"".join(_fold_key_sql(c, "NEW.fold_from", "NEW.folded_rowid") for c in KEY_ROLLUPS)}
{"".join(_fold_key_all_sql(c, "NEW.fold_from", "NEW.folded_rowid") for c in KEY_ALL_ROLLUPS)}
{_fold_all_sql("NEW.fold_from", "NEW.folded_rowid")}
END;
"""


def fold_once_sql(table: str, hi: int) -> str:
    """The one statement that folds rows ``(0, hi]`` into ``table`` alone: for a migration that
    (re)builds one rollup over the rows already in the others. A histogram rollup reads the
    covering index ``traces_agg`` (every column it needs), not the rows with their bodies."""
    if table == "rollup_hour":
        return _fold_hour_sql("0", str(hi))
    if table in HIST_LEVELS:
        return _fold_hist_sql(table, "0", str(hi), "traces INDEXED BY traces_agg")
    column = next((c for c, t in KEY_ALL_ROLLUPS.items() if t == table), None)
    if column is not None:
        return _fold_key_all_sql(column, "0", str(hi))
    column = next(c for c, t in KEY_ROLLUPS.items() if t == table)
    return _fold_key_sql(column, "0", str(hi))


_NO_ROWID = 2**63 - 1
_FOLD = """UPDATE rollup_state SET fold_from = min(folded_rowid, ?),
    folded_rowid = (SELECT coalesce(max(rowid), 0) FROM traces)"""


def fold(conn: sqlite3.Connection, before_rowid: int | None = None) -> None:
    """Add the rows not yet in the rollups to them (one statement); the caller holds a write
    transaction. ``before_rowid`` is where the caller's own inserts began (their first rowid - 1):
    the range starts there even if the watermark says otherwise (rowids of a table without an
    INTEGER PRIMARY KEY may be renumbered by VACUUM), and at the watermark when rows were
    inserted after it by other means."""
    conn.execute(_FOLD, (_NO_ROWID if before_rowid is None else before_rowid,))


def pending(conn: sqlite3.Connection) -> bool:
    """Whether rows were inserted past the watermark (by something other than the writer)."""
    row = conn.execute(
        "SELECT (SELECT folded_rowid FROM rollup_state), (SELECT coalesce(max(rowid), 0) FROM traces)"
    ).fetchone()
    return row[0] is not None and row[1] > row[0]


# -- deletes: the only per-row trigger left, for rows already folded --------------------------------
def _old(condition: str) -> str:
    """``condition`` (on a row's columns) on the deleted row."""
    for column in ("cost_usd", "total_tokens", "status"):
        condition = condition.replace(column, "OLD." + column)
    return condition


def _take_back(table: str, totals: str, where: str) -> str:
    """The statement that takes the deleted row out of the totals of ``table``'s row ``where``."""
    return f"""
    UPDATE {table} SET requests = requests - 1,
{totals}
    WHERE {where};"""


#: What a deleted row takes out of ``rollup_hour``-like totals, and of a per-key rollup's.
_HOUR_TAKEN = f"""        prompt_tokens = prompt_tokens - coalesce(OLD.prompt_tokens, 0),
        completion_tokens = completion_tokens - coalesce(OLD.completion_tokens, 0),
        total_tokens = total_tokens - coalesce(OLD.total_tokens, 0),
        cost_usd = cost_usd - coalesce(OLD.cost_usd, 0),
        unpriced = unpriced - {_old(UNPRICED_SQL)},
        no_usage = no_usage - {_old(NO_USAGE_SQL)}"""
_KEY_TAKEN = f"""        errors = errors - {_old(ERRORS_SQL)},
        cancelled = cancelled - (OLD.status = 'cancelled'),
        total_tokens = total_tokens - coalesce(OLD.total_tokens, 0),
        cost_usd = cost_usd - coalesce(OLD.cost_usd, 0),
        unpriced = unpriced - {_old(UNPRICED_SQL)},
        no_usage = no_usage - {_old(NO_USAGE_SQL)}"""


def _unfold_sql() -> str:
    match = " AND ".join([f"hour = {_period('OLD.', 3600)}", *(f"{d} = {key_sql(d, 'OLD.')}" for d in HOUR_DIMS)])
    hour = _take_back("rollup_hour", _HOUR_TAKEN, match)
    for column, table in KEY_ROLLUPS.items():
        match = (
            f"period = {_period('OLD.', KEY_PERIOD)} AND project = OLD.project AND {column} = {key_sql(column, 'OLD.')}"
        )
        hour += _take_back(table, _KEY_TAKEN, match)
    for column, table in KEY_ALL_ROLLUPS.items():
        match = f"project IN (OLD.project, '{EVERY_PROJECT}') AND {column} = {key_sql(column, 'OLD.')}"
        hour += _take_back(table, _KEY_TAKEN, match)
    hour += _take_back(ALL_TOTALS, _HOUR_TAKEN, " AND ".join(f"{d} = {key_sql(d, 'OLD.')}" for d in HOUR_DIMS))
    hists = ""
    for metric, column in METRICS:
        match = " AND ".join(
            [
                *(f"{d} = {key_sql(d, 'OLD.')}" for d in ALL_HIST_DIMS),
                f"metric = '{metric}'",
                f"bucket = {bucket_sql(f'OLD.{column}')}",
            ]
        )
        hists += f"\n    UPDATE {ALL_HIST} SET n = n - 1 WHERE {match};"
    for table, (seconds, dims) in HIST_LEVELS.items():
        for metric, column in METRICS:
            match = " AND ".join(
                [
                    f"period = {_period('OLD.', seconds)}",
                    *(f"{d} = {key_sql(d, 'OLD.')}" for d in dims),
                    f"metric = '{metric}'",
                    f"bucket = {bucket_sql(f'OLD.{column}')}",
                ]
            )
            hists += f"\n    UPDATE {table} SET n = n - 1 WHERE {match};"
    return hour + hists


DELETE_TRIGGER = f"""CREATE TRIGGER IF NOT EXISTS traces_rollup_delete AFTER DELETE ON traces
WHEN OLD.rowid <= (SELECT folded_rowid FROM rollup_state) BEGIN{_unfold_sql()}
END;
"""
#: Triggers that keep the rollups (a migration that changes the rollups drops and re-creates them).
TRIGGERS = ("rollup_fold", "traces_rollup_delete")
#: What schema 2 had before folding: a trigger per inserted row (dropped wherever found).
OLD_INSERT_TRIGGER = "traces_rollup_insert"


def _day(expression: str) -> str:
    return f"CAST({expression} / {KEY_PERIOD} AS INTEGER)"


#: Schema 10: a deleted trace (retention, or by hand) is taken out of the scored traces' rollups
#: under each name it has a score of, before it goes (its row is read; its scores are deleted after
#: it, by retention's last step). Its own trigger, without the watermark's condition: a trace is
#: folded into them when scored, whether or not the other rollups hold it yet.
SCORED_DELETE_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS scored_rollup_delete BEFORE DELETE ON traces BEGIN\n"
    + "".join(
        f"    {statement};\n"
        for statement in scored_fold_sql(
            _day,
            bucket_sql,
            "(SELECT DISTINCT trace_id, name FROM scores WHERE trace_id = OLD.id) AS s "
            "JOIN traces ON traces.rowid = OLD.rowid",
            "s.name",
            "true",
            "-",
        )
    )
    + "END;\n"
)
#: The statements that fold every scored trace into the scored traces' rollups just created empty.
SCORED_FILL = scored_fold_sql(_day, bucket_sql, SCORED_PAIRS, "s.name", "true")
