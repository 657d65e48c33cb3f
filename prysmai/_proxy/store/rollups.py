"""The rollups every store engine keeps beside its traces: what they are keyed by, and the
log-scale histogram buckets their latency percentiles are read from.

Engine-neutral: an engine folds traces into tables of these shapes (SQLite: :mod:`.sqlite.rollups`)
and the query layer (:mod:`.queries`) reads them. The histogram bucket of a latency ``x``
(milliseconds) is ``floor(16 * ln(max(x, 0.001) * 1000))``: bucket ``b`` holds
``[e^(b/16), e^((b+1)/16)) / 1000`` ms, so its bounds differ by a factor of ``e^(1/16)`` = 1.0645
(see :mod:`.queries` for the percentile error this gives).
"""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

#: Histogram buckets per e-fold of latency.
BUCKETS_PER_E = 16
#: Latencies below this many ms share bucket 0.
BUCKET_FLOOR_MS = 0.001

#: Dimensions of ``rollup_hour`` (after ``hour``): totals by hour and these.
HOUR_DIMS = ("project", "model", "endpoint", "status")
#: Totals rollups (each keyed by its period and :data:`HOUR_DIMS`): table -> (period in seconds,
#: the column holding the period's start).
TOTALS_LEVELS: dict[str, tuple[int, str]] = {"rollup_hour": (3600, "hour")}
#: Histogram rollups: table -> (period in seconds, dimensions kept). A table's size is bounded by
#: periods x dimension values x buckets, whatever the traffic: hourly by project (time series,
#: overviews), daily by project, model and endpoint (breakdowns, filtered overviews).
#: Schema 9 adds the daily one by project alone: a time series of days reads a row per day, project
#: and bucket instead of one per day, project, model, endpoint and bucket (a tenth of them here).
#: Schema 10 adds the hourly one by project, model and endpoint: the partial days at a range's edges
#: and a sub-day series split or filtered by model or endpoint read it, not the rows (an hour's rows
#: are at most its traces, so its size is bounded by the traffic, as a sum of the hourly ones by
#: project is). Of two levels of one period, a read takes the one with fewer dimensions that answers.
HIST_LEVELS: dict[str, tuple[int, tuple[str, ...]]] = {
    "rollup_hist_hour": (3600, ("project",)),
    "rollup_hist_day": (86400, ("project", "model", "endpoint")),
    "rollup_hist_project_day": (86400, ("project",)),
    "rollup_hist_model_hour": (3600, ("project", "model", "endpoint")),
}
#: The rollups by quarter hour (PostgreSQL version 11; an engine says whether it keeps them:
#: ``Dialect.quarter_hours``): totals by 15 minutes and :data:`HOUR_DIMS`, latency and TTFT
#: histograms by 15 minutes and project. The overview of a day, the range the dashboard opens
#: with, has a series of 15-minute buckets, which no hourly rollup can answer: at 10 M traces that
#: was a day's 440 000 rows grouped twice a page. They also answer the whole quarters of a
#: range's partial hours (a 7-day range starts mid-hour), leaving at most 15 minutes of rows at
#: each edge. SQLite keeps none (its day page meets its target at 1 M traces from the rows, read
#: through a covering index; every fold is work for the one machine's writer).
QUARTER = 900
QUARTER_TOTALS: dict[str, tuple[int, str]] = {"rollup_quarter": (QUARTER, "period")}
QUARTER_HIST: dict[str, tuple[int, tuple[str, ...]]] = {"rollup_hist_quarter": (QUARTER, ("project",))}
#: Every totals or histogram rollup the query layer knows how to read.
EVERY_TOTALS_LEVEL = {**TOTALS_LEVELS, **QUARTER_TOTALS}
EVERY_HIST_LEVEL = {**HIST_LEVELS, **QUARTER_HIST}
METRICS = (("latency", "latency_ms"), ("ttft", "ttft_ms"))
#: Per-key rollups (schema 4): the traces' column -> its table, totals by day, project and that
#: key (a trace without one under ``''``). Users and sessions are many, so these keep no
#: histogram and no model or status: they answer the user and session lists and the overview's
#: top users and sessions over whole days, for a filter that names only time and project.
KEY_ROLLUPS = {"user_id": "rollup_user_day", "session_id": "rollup_session_day"}
KEY_PERIOD = 86400
#: Per-key rollups by hour (PostgreSQL version 10): the per-day ones' columns and key at an hour's
#: grain. A range's partial days are read from them, and only its partial hours from the rows: at
#: hundreds of thousands of traces a day, an hour of a user or session is one row where its
#: traces are many. SQLite keeps none (its partial days are read through a covering index, and its
#: pages meet their targets without; every fold is work for the one machine's writer): the query
#: layer uses them where the engine's dialect says it has them (``Dialect.hourly_keys``).
KEY_HOUR_ROLLUPS = {"user_id": "rollup_user_hour", "session_id": "rollup_session_hour"}
KEY_HOUR_PERIOD = 3600
#: All-time rollups (schema 9): what ``rollup_hour`` and ``rollup_hist_day`` hold, without the
#: period -- the totals by project, model, endpoint and status, the histograms by project, model
#: and endpoint, over every trace kept. An overview of all time (its totals, its project, model and
#: endpoint breakdowns) reads them alone: a few hundred rows however long the store's history.
ALL_TOTALS = "rollup_all"
ALL_HIST = "rollup_hist_all"
ALL_HIST_DIMS = ("project", "model", "endpoint")
#: ``rollup_hist_all`` built again from ``rollup_hist_day`` (both engines), when retention has
#: removed whole days of it: a bucket's smallest and largest value are then those of the days kept,
#: as a read of the daily rollup would give (a delete subtracts counts, it cannot narrow them).
REBUILD_ALL_HIST = (
    f"DELETE FROM {ALL_HIST}",
    f"INSERT INTO {ALL_HIST} ({', '.join(ALL_HIST_DIMS)}, metric, bucket, n, min_ms, max_ms) "
    f"SELECT {', '.join(ALL_HIST_DIMS)}, metric, bucket, sum(n), min(min_ms), max(max_ms) FROM rollup_hist_day "
    f"GROUP BY {', '.join(ALL_HIST_DIMS)}, metric, bucket HAVING sum(n) > 0",
)
#: All-time per-key rollups (schema 9): the per-key totals over every trace kept, by key and
#: project, folded and un-folded with the per-day ones. The overview's top users and sessions over
#: all time read them (one row per key) instead of regrouping every day of the per-day rollups.
#: They keep no first or last time: a delete could not take those back. Each key has a row per
#: project and one more, under the project :data:`EVERY_PROJECT`, for its totals over every
#: project: an admin's top keys are then the table's largest rows, found through an index on
#: ``(project, requests)`` without adding up any row.
KEY_ALL_ROLLUPS = {"user_id": "rollup_user_all", "session_id": "rollup_session_all"}
#: The project of the all-time per-key rows that count every project (no project is named ``''``).
EVERY_PROJECT = ""
#: What the per-key rollups total, in this order.
KEY_TOTALS = ("requests", "errors", "cancelled", "total_tokens", "cost_usd", "unpriced", "no_usage")
#: The score rollups (schema 9): the count and the sum of the number and boolean scores (a
#: category has no average) by project, score name and one of the trace's columns (``dim``:
#: ``model`` or ``user``, its value in ``key``, ``''`` for none), per day and over all time. The
#: score averages read them for whole days and for all time; a project's averages are its
#: ``model`` rows added up. Kept by the scores' own writes (:mod:`.scores`) in their transaction.
SCORE_ROLLUP_DAY = "rollup_score_day"
SCORE_ROLLUP_ALL = "rollup_score_all"
SCORE_DIMS = {"model": "trace_model", "user": "trace_user"}
#: Statuses counted as errors (``errors``, ``error_rate``): a request that failed. ``cancelled``
#: (the client went away first) is counted on its own.
ERROR_STATUSES = ("error", "timeout")

#: Row conditions, in SQL both engines read, for what the rollups and the query layer count: a
#: request that failed; a cost unknown although usage was reported (no price for the model); no
#: usage reported (nothing to price: a failure, a cancel). ``api/costs.py`` classifies a single
#: trace the same way.
ERRORS_SQL = "(status IN (" + ", ".join(f"'{s}'" for s in ERROR_STATUSES) + "))"
UNPRICED_SQL = "(cost_usd IS NULL AND total_tokens IS NOT NULL)"
NO_USAGE_SQL = "(cost_usd IS NULL AND total_tokens IS NULL)"


def key_sql(dim: str, row: str = "") -> str:
    """A rollup's key column ``dim`` of a row (``row``: a prefix such as ``"OLD."``): a NULL model,
    user or session is keyed ``''`` (a primary key column cannot usefully hold NULL for an upsert;
    the proxy stores no empty id, so ``''`` is "none")."""
    return f"coalesce({row}{dim}, '')" if dim in ("model", *KEY_ROLLUPS) else f"{row}{dim}"


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """The latency range ``[low, high)`` in ms that ``bucket`` covers."""
    return (
        math.exp(bucket / BUCKETS_PER_E) * BUCKET_FLOOR_MS,
        math.exp((bucket + 1) / BUCKETS_PER_E) * BUCKET_FLOOR_MS,
    )


#: The scored traces' rollups (SQLite schema 10, PostgreSQL version 9): the totals and latency/TTFT
#: histograms of the traces that have at least one score of a name, by score name, day, project
#: and model. ``stats?score=NAME`` reads them for whole days instead of every scored trace's row.
#: A trace is folded in when it gets its first score of the name and taken back when its last one
#: is deleted (:mod:`.scores`, in that write's transaction), or when the trace itself is deleted
#: (SQLite: a trigger; PostgreSQL: retention's take-back and its dropped days).
SCORED_TOTALS = "rollup_scored_day"
SCORED_HIST = "rollup_scored_hist_day"
SCORED_KEY = ("name", "period", "project", "model")
SCORED_COUNTS = (
    "requests",
    "errors",
    "cancelled",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced",
    "no_usage",
)


def scored_fold_sql(
    period: Callable[[str], str], bucket: Callable[[str], str], source: str, name: str, where: str, sign: str = ""
) -> tuple[str, str]:
    """The two statements (totals, histograms) that add (``sign`` ``""``) or take out (``"-"``)
    the traces of ``source`` (a FROM clause whose trace columns are unqualified) under the score
    name ``name`` (an SQL expression) to the scored traces' rollups, for the rows ``where`` says.
    ``period`` and ``bucket``: the engine's SQL for a time's day number and a latency's bucket.
    A take-back leaves a bucket's bounds as they were, as every rollup's delete does."""
    day = f"{period('created_at')} * {KEY_PERIOD}"
    keys = f"{name}, {day}, project, coalesce(model, '')"
    flags = {
        "errors": ERRORS_SQL,
        "cancelled": "(status = 'cancelled')",
        "unpriced": UNPRICED_SQL,
        "no_usage": NO_USAGE_SQL,
    }
    sums = ", ".join(
        f"{sign}count(*)"
        if c == "requests"
        else f"{sign}sum(CASE WHEN {flags[c]} THEN 1 ELSE 0 END)"
        if c in flags
        else f"{sign}coalesce(sum({c}), 0)"
        for c in SCORED_COUNTS
    )
    key = ", ".join(SCORED_KEY)
    totals = (
        f"INSERT INTO {SCORED_TOTALS} ({key}, {', '.join(SCORED_COUNTS)}) SELECT * FROM ("
        f"SELECT {keys}, {sums} FROM {source} WHERE {where} GROUP BY 1, 2, 3, 4) AS scored WHERE true "
        f"ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{c} = {SCORED_TOTALS}.{c} + excluded.{c}" for c in SCORED_COUNTS)
    )
    selects = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {keys}, '{metric}' AS metric, {bucket(column)} AS bucket, {sign}count(*) AS n, "
        f"min({column}) AS lo, max({column}) AS hi FROM {source} WHERE {where} AND {column} IS NOT NULL "
        f"GROUP BY 1, 2, 3, 4, 5, 6) AS {metric}"
        for metric, column in METRICS
    )
    bounds = (
        ""
        if sign
        else (
            f", min_ms = CASE WHEN excluded.min_ms < {SCORED_HIST}.min_ms THEN excluded.min_ms "
            f"ELSE {SCORED_HIST}.min_ms END, max_ms = CASE WHEN excluded.max_ms > {SCORED_HIST}.max_ms "
            f"THEN excluded.max_ms ELSE {SCORED_HIST}.max_ms END"
        )
    )
    hist = (
        f"INSERT INTO {SCORED_HIST} ({key}, metric, bucket, n, min_ms, max_ms) SELECT * FROM ({selects}) AS hists "
        f"WHERE true ON CONFLICT ({key}, metric, bucket) DO UPDATE SET n = {SCORED_HIST}.n + excluded.n{bounds}"
    )
    return totals, hist


#: The pairs (trace, score name) of every scored trace: the scores' (one row per trace and name).
SCORED_PAIRS = "(SELECT DISTINCT trace_id, name FROM scores) AS s JOIN traces ON traces.id = s.trace_id"
