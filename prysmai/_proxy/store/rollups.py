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

#: Histogram buckets per e-fold of latency.
BUCKETS_PER_E = 16
#: Latencies below this many ms share bucket 0.
BUCKET_FLOOR_MS = 0.001

#: Dimensions of ``rollup_hour`` (after ``hour``): totals by hour and these.
HOUR_DIMS = ("project", "model", "endpoint", "status")
#: Histogram rollups: table -> (period in seconds, dimensions kept). A table's size is bounded by
#: periods x dimension values x buckets, whatever the traffic: hourly by project (time series,
#: overviews), daily by project, model and endpoint (breakdowns, filtered overviews).
HIST_LEVELS: dict[str, tuple[int, tuple[str, ...]]] = {
    "rollup_hist_hour": (3600, ("project",)),
    "rollup_hist_day": (86400, ("project", "model", "endpoint")),
}
METRICS = (("latency", "latency_ms"), ("ttft", "ttft_ms"))
#: Per-key rollups (schema 4): the traces' column -> its table, totals by day, project and that
#: key (a trace without one under ``''``). Users and sessions are many, so these keep no
#: histogram and no model or status: they answer the user and session lists and the overview's
#: top users and sessions over whole days, for a filter that names only time and project.
KEY_ROLLUPS = {"user_id": "rollup_user_day", "session_id": "rollup_session_day"}
KEY_PERIOD = 86400
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
