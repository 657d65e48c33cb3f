"""Folding a batch's new rows into PostgreSQL's rollups, in the batch's transaction.

The rollups are SQLite's (:mod:`..rollups`): the same tables, keys and buckets, so the one query
layer reads them alike. Only rows the batch really added are folded (the ``new_rows`` temporary
table the insert fills from its ``RETURNING``): a batch sent again adds nothing twice.
"""

from __future__ import annotations

from ..rollups import BUCKET_FLOOR_MS, BUCKETS_PER_E, HIST_LEVELS, HOUR_DIMS, METRICS


def bucket_sql(column: str) -> str:
    """The histogram bucket of ``column`` (NULL stays NULL), as SQLite's ``CAST(ln(...) AS
    INTEGER)`` computes it: ``floor``, since PostgreSQL's cast to an integer rounds."""
    return f"floor(ln(greatest({column}, {BUCKET_FLOOR_MS}) * {1 / BUCKET_FLOOR_MS:g}) * {BUCKETS_PER_E})::integer"


def period_sql(expression: str, seconds: int) -> str:
    return f"floor({expression} / {seconds})::bigint"


def _dim(dim: str) -> str:
    # As SQLite's rollups: a NULL model is keyed ''.
    return "coalesce(model, '')" if dim == "model" else dim


def _fold_hour() -> str:
    names = ", ".join(["hour", *HOUR_DIMS])
    keys = ", ".join(_dim(d) for d in HOUR_DIMS)
    group = ", ".join(str(i + 1) for i in range(len(HOUR_DIMS) + 1))
    return f"""INSERT INTO rollup_hour ({names}, requests, prompt_tokens, completion_tokens, total_tokens,
        cost_usd, unpriced)
    SELECT {period_sql("created_at", 3600)} * 3600, {keys}, count(*),
        coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
        coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL)
    FROM new_rows GROUP BY {group}
    ON CONFLICT ({names}) DO UPDATE SET
        requests = rollup_hour.requests + excluded.requests,
        prompt_tokens = rollup_hour.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = rollup_hour.completion_tokens + excluded.completion_tokens,
        total_tokens = rollup_hour.total_tokens + excluded.total_tokens,
        cost_usd = rollup_hour.cost_usd + excluded.cost_usd,
        unpriced = rollup_hour.unpriced + excluded.unpriced"""


def _fold_hist(table: str) -> str:
    seconds, dims = HIST_LEVELS[table]
    names = ", ".join(["period", *dims, "metric", "bucket"])
    keys = ", ".join([f"{period_sql('created_at', seconds)} * {seconds}", *(_dim(d) for d in dims)])
    group = ", ".join(str(i + 1) for i in range(len(dims) + 3))
    selects = " UNION ALL ".join(
        f"""SELECT {keys}, '{metric}', {bucket_sql(column)}, count(*), min({column}), max({column})
        FROM new_rows WHERE {column} IS NOT NULL GROUP BY {group}"""
        for metric, column in METRICS
    )
    return f"""INSERT INTO {table} ({names}, n, min_ms, max_ms) {selects}
    ON CONFLICT ({names}) DO UPDATE SET
        n = {table}.n + excluded.n,
        min_ms = least({table}.min_ms, excluded.min_ms),
        max_ms = greatest({table}.max_ms, excluded.max_ms)"""


#: The statements that fold ``new_rows`` into every rollup.
FOLD = (_fold_hour(), *(_fold_hist(t) for t in HIST_LEVELS))
