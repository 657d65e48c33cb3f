"""Folding a batch's new rows into PostgreSQL's rollups, in the batch's transaction, and taking
deleted rows back out of them.

The rollups are SQLite's (:mod:`..rollups`): the same tables, keys and buckets, so the one query
layer reads them alike. Only rows the batch really added are folded (the ``new_rows`` temporary
table the insert fills from its ``RETURNING``): a batch sent again adds nothing twice. Retention's
row deletes put the rows they removed in the same table and run :data:`UNFOLD`, the same
statements with every count negated (as SQLite's delete trigger, they leave a histogram's min and
max as they were: a bound, not an exact value, after a delete).

The all-time rollups (version 6) are folded and un-folded with the others; a day partition's drop
takes its day out of the all-time totals by subtracting that day's rows of the per-day rollups,
which hold it exactly (:data:`FORGET_DAY`), and builds the all-time histograms again from the
daily ones left.

The hourly per-key rollups (version 10) and the rollups by quarter hour (version 11) are
PostgreSQL's own (SQLite keeps none: see :data:`~..rollups.KEY_HOUR_ROLLUPS`,
:data:`~..rollups.QUARTER_TOTALS`): folded and un-folded as the others are, and a dropped day's
rows of them deleted with its other rollup rows.
"""

from __future__ import annotations

from ..rollups import (
    ALL_HIST,
    ALL_HIST_DIMS,
    ALL_TOTALS,
    BUCKET_FLOOR_MS,
    BUCKETS_PER_E,
    ERRORS_SQL,
    EVERY_HIST_LEVEL,
    EVERY_PROJECT,
    EVERY_TOTALS_LEVEL,
    HOUR_DIMS,
    KEY_ALL_ROLLUPS,
    KEY_HOUR_PERIOD,
    KEY_HOUR_ROLLUPS,
    KEY_PERIOD,
    KEY_ROLLUPS,
    KEY_TOTALS,
    METRICS,
    NO_USAGE_SQL,
    SCORED_HIST,
    SCORED_TOTALS,
    UNPRICED_SQL,
    key_sql,
    scored_fold_sql,
)


def bucket_sql(column: str) -> str:
    """The histogram bucket of ``column`` (a NULL falls in bucket 0: ``greatest`` skips NULLs; the
    folds read non-NULL values, and a read counts ``count(column)``), as SQLite's ``CAST(ln(...) AS
    INTEGER)`` computes it: ``floor``, since PostgreSQL's cast to an integer rounds."""
    return f"floor(ln(greatest({column}, {BUCKET_FLOOR_MS}) * {1 / BUCKET_FLOOR_MS:g}) * {BUCKETS_PER_E})::integer"


def period_sql(expression: str, seconds: int) -> str:
    return f"floor({expression} / {seconds})::bigint"


# As SQLite's rollups: the same conditions, counted with FILTER.
_UNPRICED = f"count(*) FILTER (WHERE {UNPRICED_SQL})"
_NO_USAGE = f"count(*) FILTER (WHERE {NO_USAGE_SQL})"
_ERRORS = f"count(*) FILTER (WHERE {ERRORS_SQL})"


def _fold_totals(table: str, sign: str = "", source: str = "new_rows", order: str = "") -> str:
    seconds, column = EVERY_TOTALS_LEVEL[table]
    names = ", ".join([column, *HOUR_DIMS])
    keys = ", ".join(key_sql(d) for d in HOUR_DIMS)
    group = ", ".join(str(i + 1) for i in range(len(HOUR_DIMS) + 1))
    return f"""INSERT INTO {table} ({names}, requests, prompt_tokens, completion_tokens, total_tokens,
        cost_usd, unpriced, no_usage)
    SELECT {period_sql("created_at", seconds)} * {seconds}, {keys}, {sign}count(*),
        {sign}coalesce(sum(prompt_tokens), 0), {sign}coalesce(sum(completion_tokens), 0),
        {sign}coalesce(sum(total_tokens), 0), {sign}coalesce(sum(cost_usd), 0), {sign}{_UNPRICED}, {sign}{_NO_USAGE}
    FROM {source} GROUP BY {group}{order}
    ON CONFLICT ({names}) DO UPDATE SET {_adding(table, _HOUR_TOTALS)}"""


def _fold_key(column: str, sign: str = "", hourly: bool = False, source: str = "new_rows", order: str = "") -> str:
    table, seconds = (KEY_HOUR_ROLLUPS[column], KEY_HOUR_PERIOD) if hourly else (KEY_ROLLUPS[column], KEY_PERIOD)
    names = f"period, project, {column}"
    return f"""INSERT INTO {table} ({names}, requests, errors, cancelled, total_tokens, cost_usd,
        unpriced, no_usage, first_seen, last_seen)
    SELECT {period_sql("created_at", seconds)} * {seconds}, project, {key_sql(column)}, {sign}count(*),
        {sign}{_ERRORS}, {sign}count(*) FILTER (WHERE status = 'cancelled'), {sign}coalesce(sum(total_tokens), 0),
        {sign}coalesce(sum(cost_usd), 0), {sign}{_UNPRICED}, {sign}{_NO_USAGE}, min(created_at), max(created_at)
    FROM {source} GROUP BY 1, 2, 3{order}
    ON CONFLICT ({names}) DO UPDATE SET
        requests = {table}.requests + excluded.requests,
        errors = {table}.errors + excluded.errors,
        cancelled = {table}.cancelled + excluded.cancelled,
        total_tokens = {table}.total_tokens + excluded.total_tokens,
        cost_usd = {table}.cost_usd + excluded.cost_usd,
        unpriced = {table}.unpriced + excluded.unpriced,
        no_usage = {table}.no_usage + excluded.no_usage,
        first_seen = least({table}.first_seen, excluded.first_seen),
        last_seen = greatest({table}.last_seen, excluded.last_seen)"""


def _fold_hist(table: str, sign: str = "", source: str = "new_rows", order: str = "") -> str:
    seconds, dims = EVERY_HIST_LEVEL[table]
    names = ", ".join(["period", *dims, "metric", "bucket"])
    keys = ", ".join([f"{period_sql('created_at', seconds)} * {seconds}", *(key_sql(d) for d in dims)])
    group = ", ".join(str(i + 1) for i in range(len(dims) + 3))
    selects = " UNION ALL ".join(
        f"""SELECT {keys}, '{metric}', {bucket_sql(column)}, {sign}count(*), min({column}), max({column})
        FROM {source} WHERE {column} IS NOT NULL GROUP BY {group}"""
        for metric, column in METRICS
    )
    return f"""INSERT INTO {table} ({names}, n, min_ms, max_ms) {selects}{order}
    ON CONFLICT ({names}) DO UPDATE SET
        n = {table}.n + excluded.n,
        min_ms = least({table}.min_ms, excluded.min_ms),
        max_ms = greatest({table}.max_ms, excluded.max_ms)"""


def fill_key_hours(column: str) -> str:
    """The statement that folds every row of ``trace_rows`` into the hourly per-key rollup of
    ``column``, just created empty (a migration's): in the order of their hours, as folding writes
    them, so that a range's hours are together on disk, not spread over the whole table."""
    return _fold_key(column, hourly=True, source="trace_rows", order=" ORDER BY 1")


def fill_hist(table: str, order: str = "") -> str:
    """The statement that folds every row of ``trace_rows`` into the histogram rollup ``table``,
    just created empty (a migration's; the rows are committed, so every one is in the rollups);
    ``order``: `` ORDER BY 1`` to write its rows in the order of their periods."""
    return _fold_hist(table, source="trace_rows", order=order)


def fill_totals(table: str) -> str:
    """The statement that folds every row of ``trace_rows`` into the totals rollup ``table``, just
    created empty (a migration's), in the order of their periods, as folding writes them."""
    return _fold_totals(table, source="trace_rows", order=" ORDER BY 1")


_HOUR_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "unpriced", "no_usage")


def _adding(table: str, columns: tuple[str, ...]) -> str:
    return ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns)


def _fold_all(sign: str = "") -> tuple[str, str]:
    names = ", ".join(HOUR_DIMS)
    totals = f"""INSERT INTO {ALL_TOTALS} ({names}, {", ".join(_HOUR_TOTALS)})
    SELECT {", ".join(key_sql(d) for d in HOUR_DIMS)}, {sign}count(*), {sign}coalesce(sum(prompt_tokens), 0),
        {sign}coalesce(sum(completion_tokens), 0), {sign}coalesce(sum(total_tokens), 0),
        {sign}coalesce(sum(cost_usd), 0), {sign}{_UNPRICED}, {sign}{_NO_USAGE}
    FROM new_rows GROUP BY {", ".join(str(i + 1) for i in range(len(HOUR_DIMS)))}
    ON CONFLICT ({names}) DO UPDATE SET {_adding(ALL_TOTALS, _HOUR_TOTALS)}"""
    hist_names = ", ".join([*ALL_HIST_DIMS, "metric", "bucket"])
    keys = ", ".join(key_sql(d) for d in ALL_HIST_DIMS)
    group = ", ".join(str(i + 1) for i in range(len(ALL_HIST_DIMS) + 2))
    selects = " UNION ALL ".join(
        f"""SELECT {keys}, '{metric}', {bucket_sql(column)}, {sign}count(*), min({column}), max({column})
        FROM new_rows WHERE {column} IS NOT NULL GROUP BY {group}"""
        for metric, column in METRICS
    )
    hist = f"""INSERT INTO {ALL_HIST} ({hist_names}, n, min_ms, max_ms) {selects}
    ON CONFLICT ({hist_names}) DO UPDATE SET
        n = {ALL_HIST}.n + excluded.n,
        min_ms = least({ALL_HIST}.min_ms, excluded.min_ms),
        max_ms = greatest({ALL_HIST}.max_ms, excluded.max_ms)"""
    return totals, hist


def _fold_key_all(column: str, sign: str = "") -> str:
    table = KEY_ALL_ROLLUPS[column]
    totals = f"""{sign}count(*), {sign}{_ERRORS}, {sign}count(*) FILTER (WHERE status = 'cancelled'),
        {sign}coalesce(sum(total_tokens), 0), {sign}coalesce(sum(cost_usd), 0), {sign}{_UNPRICED}, {sign}{_NO_USAGE}"""
    # Each key's row in its project, and its row of every project.
    return f"""INSERT INTO {table} (project, {column}, {", ".join(KEY_TOTALS)})
    SELECT project, {key_sql(column)}, {totals} FROM new_rows GROUP BY 1, 2
    UNION ALL SELECT '{EVERY_PROJECT}', {key_sql(column)}, {totals} FROM new_rows GROUP BY 2
    ON CONFLICT (project, {column}) DO UPDATE SET {_adding(table, KEY_TOTALS)}"""


def _statements(sign: str) -> tuple[str, ...]:
    return (
        *(_fold_totals(t, sign) for t in EVERY_TOTALS_LEVEL),
        *(_fold_hist(t, sign) for t in EVERY_HIST_LEVEL),
        *(_fold_key(c, sign) for c in KEY_ROLLUPS),
        *(_fold_key(c, sign, hourly=True) for c in KEY_HOUR_ROLLUPS),
        *_fold_all(sign),
        *(_fold_key_all(c, sign) for c in KEY_ALL_ROLLUPS),
    )


def _forget_day() -> tuple[str, ...]:
    hour_dims = ", ".join(HOUR_DIMS)
    return (
        f"""INSERT INTO {ALL_TOTALS} ({hour_dims}, {", ".join(_HOUR_TOTALS)})
    SELECT {hour_dims}, {", ".join(f"-sum({c})" for c in _HOUR_TOTALS)} FROM rollup_hour
    WHERE hour >= %(lo)s AND hour < %(hi)s GROUP BY {hour_dims}
    ON CONFLICT ({hour_dims}) DO UPDATE SET {_adding(ALL_TOTALS, _HOUR_TOTALS)}""",
        *(
            f"""INSERT INTO {table} (project, {column}, {", ".join(KEY_TOTALS)})
    SELECT {project}, {column}, {", ".join(f"-sum({c})" for c in KEY_TOTALS)} FROM {KEY_ROLLUPS[column]}
    WHERE period >= %(lo)s AND period < %(hi)s GROUP BY {group}
    ON CONFLICT (project, {column}) DO UPDATE SET {_adding(table, KEY_TOTALS)}"""
            for column, table in KEY_ALL_ROLLUPS.items()
            for project, group in (("project", "1, 2"), (f"'{EVERY_PROJECT}'", "2"))
        ),
    )


def _day(expression: str) -> str:
    return period_sql(expression, KEY_PERIOD)


#: The statements that fold ``new_rows`` into every rollup. (A new row has no score yet: the
#: scored traces' rollups take a trace when it is scored, :mod:`..scores`.)
FOLD = _statements("")
#: The statements that take the rows in ``new_rows`` (deleted) back out of every rollup, the scored
#: traces' too (under each name the trace has a score of; its scores are deleted after it).
UNFOLD = (
    *_statements("-"),
    *scored_fold_sql(
        _day,
        bucket_sql,
        # The deleted traces' scores only (through the scores' index by trace), not every score.
        "(SELECT DISTINCT trace_id, name FROM scores WHERE trace_id IN (SELECT id FROM new_rows)) AS s "
        "JOIN new_rows ON new_rows.id = s.trace_id",
        "s.name",
        "true",
        "-",
    ),
)
#: The statements that fold every scored trace into the scored traces' rollups just created empty.
SCORED_FILL = scored_fold_sql(
    _day,
    bucket_sql,
    "(SELECT DISTINCT trace_id, name FROM scores) AS s JOIN trace_rows ON trace_rows.id = s.trace_id",
    "s.name",
    "true",
)
#: Every rollup table, with the column holding its period's start and the period's length.
PERIODS = {
    **{t: (column, seconds) for t, (seconds, column) in EVERY_TOTALS_LEVEL.items()},
    **{t: ("period", seconds) for t, (seconds, _) in EVERY_HIST_LEVEL.items()},
    **{t: ("period", KEY_PERIOD) for t in KEY_ROLLUPS.values()},
    **{t: ("period", KEY_HOUR_PERIOD) for t in KEY_HOUR_ROLLUPS.values()},
    SCORED_TOTALS: ("period", KEY_PERIOD),
    SCORED_HIST: ("period", KEY_PERIOD),
}
#: Each rollup table's count: a row whose count is 0 holds nothing.
COUNTS = {t: "n" if t in EVERY_HIST_LEVEL or t == SCORED_HIST else "requests" for t in PERIODS}
#: The all-time rollups' rows brought to zero (a key seen again gets its row back).
EMPTY_ALL = (
    *(f"DELETE FROM {t} WHERE requests <= 0" for t in (ALL_TOTALS, *KEY_ALL_ROLLUPS.values())),
    f"DELETE FROM {ALL_HIST} WHERE n <= 0",
)
#: The statements that take one day (``%(lo)s`` to ``%(hi)s``, its start and end) out of the
#: all-time totals, from the per-day rollups' rows of that day, before those are deleted: a day
#: partition dropped whole (then :data:`EMPTY_ALL`, and ``rollup_hist_all`` is built again from
#: the daily histograms left: :data:`~..rollups.REBUILD_ALL_HIST`).
FORGET_DAY = _forget_day()
