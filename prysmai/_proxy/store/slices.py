"""Slicing the traces: the values a filter can take (suggestions), and the overview's time series
split by one group (top N plus "other").

Both read the rollups where those keep the field, and a bounded number of the latest traces where
they do not:

* **Suggestions** of models, endpoints and projects come from ``rollup_hour`` (the hours the range
  touches), of users from ``rollup_user_day`` (its days): exact counts, at any store size. Providers
  and metadata keys and values are not in any rollup: they come from the latest
  :data:`SCAN_BOUND` traces of the range (``complete`` is false when the range holds more).
* **Group series** by model or project come from the rollups, as the overview's own series do;
  by user, the top users come from the per-day user rollup and their series from their own rows
  (through the user index), "other" being the whole series less theirs; by a metadata key, from
  the latest :data:`META_SCAN` traces of the filter (``complete`` false and ``scanned_since`` the
  oldest trace read when there are more).
"""

from __future__ import annotations

import json
import math
import time

from .engine import dialect_of
from .queries import (
    _BAD_META_KEY,
    _CANCELLED,
    _ERR,
    _NO_USAGE,
    _UNPRICED,
    SERIES_METRICS,
    ParamError,
    TraceFilter,
    _Agg,
    _by_time,
    _check_width,
    _collect,
    _conditions,
    _Grouping,
    _key_groups,
    _keys_all_time,
    _merge,
    _raw_totals_sql,
    _series,
    _small_project,
    _tiered,
    _Tiers,
    _totals_tiers,
    _traces,
    _where,
)
from .rollups import (
    BUCKET_FLOOR_MS,
    BUCKETS_PER_E,
    ERROR_STATUSES,
    EVERY_HIST_LEVEL,
    EVERY_TOTALS_LEVEL,
    KEY_PERIOD,
    KEY_ROLLUPS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .engine import Connection

    #: Groups of a split: (key, {bucket number: totals and histograms}), in order.
    Groups = list[tuple[Any, dict[int, _Agg]]]

#: What :func:`suggestions` suggests values of.
SUGGEST_FIELDS = ("model", "provider", "user", "endpoint", "project", "meta_key", "meta_value")
#: Fields kept by ``rollup_hour`` -> their column.
_HOUR_FIELDS = {"model": "model", "endpoint": "endpoint", "project": "project"}
#: Latest traces of the range a suggestion of a field no rollup keeps (provider, metadata) reads.
SCAN_BOUND = 5_000
#: Values a suggestion gives at most.
MAX_SUGGESTIONS = 100
#: What :func:`group_series` splits by (and ``meta:KEY``).
GROUP_BYS = ("model", "project", "user")
#: Groups a split shows at most, besides "other".
MAX_GROUPS = 10
#: Latest traces of the filter a split by a metadata key reads.
META_SCAN = 10_000
_HOUR = 3600


def suggestions(
    conn: Connection,
    f: TraceFilter,
    field: str,
    *,
    meta_key: str | None = None,
    prefix: str | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """The values of ``field`` (:data:`SUGGEST_FIELDS`) seen in ``f``'s time range and project
    (its other conditions do not narrow them), the most frequent first: ``{"field", "values":
    [{"value", "count"}], "complete"}``; ``prefix``: only values starting with it, any case;
    ``meta_value`` needs ``meta_key``. ``complete`` is false when the values come from the
    latest :data:`SCAN_BOUND` traces of a range holding more."""
    if field not in SUGGEST_FIELDS:
        raise ParamError("field", f"field must be one of {', '.join(SUGGEST_FIELDS)}, not {field!r}")
    if field == "meta_value" and (not meta_key or _BAD_META_KEY.search(meta_key)):
        raise ParamError("meta_key", "field=meta_value needs meta_key: the metadata key whose values to suggest")
    if isinstance(limit, bool) or not 1 <= limit <= MAX_SUGGESTIONS:
        raise ParamError("limit", f"limit must be a whole number from 1 to {MAX_SUGGESTIONS}, not {limit!r}")
    scope = TraceFilter(since=f.since, until=f.until, project=f.project)
    if field in _HOUR_FIELDS or field == "user":
        values, complete = _from_rollup(conn, scope, field, prefix, limit), True
    else:
        values, complete = _from_latest(conn, scope, field, meta_key, prefix, limit)
    out: dict[str, Any] = {"object": "suggestions", "field": field}
    if field == "meta_value":
        out["meta_key"] = meta_key
    out["values"] = [{"value": v, "count": n} for v, n in values]
    out["complete"] = complete
    return out


def _from_rollup(conn: Connection, f: TraceFilter, field: str, prefix: str | None, limit: int) -> list[tuple[str, int]]:
    if field == "user":
        table, column, time_column, period = KEY_ROLLUPS["user_id"], "user_id", "period", KEY_PERIOD
    else:
        table, column, time_column, period = "rollup_hour", _HOUR_FIELDS[field], "hour", _HOUR
    clauses: list[str] = [f"{column} <> ''"]  # '' is "none" in a rollup's key
    params: list[Any] = []
    if f.project is not None:
        clauses.append("project = ?")
        params.append(f.project)
    if f.since is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(math.floor(f.since / period) * period)
    if f.until is not None:
        clauses.append(f"{time_column} < ?")
        params.append(f.until)
    if prefix:
        sql, more = dialect_of(conn).starts_with(column, prefix)
        clauses.append(sql)
        params += more
    sql = (
        f"SELECT {column}, sum(requests) FROM {table}{_where(clauses)} GROUP BY {column} "
        f"HAVING sum(requests) > 0 ORDER BY sum(requests) DESC, {column} LIMIT ?"
    )
    return [(v, int(n)) for v, n in conn.execute(sql, [*params, limit])]


def _from_latest(
    conn: Connection, f: TraceFilter, field: str, meta_key: str | None, prefix: str | None, limit: int
) -> tuple[list[tuple[str, int]], bool]:
    column = "provider" if field == "provider" else "metadata"
    clauses, params = _conditions(conn, f, seek=True)
    sql = f"SELECT {column} FROM traces{_where(clauses)} ORDER BY created_at DESC LIMIT ?"
    counts: dict[str, int] = {}
    read = 0
    wanted = (prefix or "").lower()
    for (value,) in conn.execute(sql, [*params, SCAN_BOUND]):
        read += 1
        for found in _values(field, value, meta_key):
            if found.lower().startswith(wanted):
                counts[found] = counts.get(found, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return ranked, read < SCAN_BOUND


def _values(field: str, value: Any, meta_key: str | None) -> list[str]:
    """The suggestible values in one trace's ``provider`` or ``metadata`` column."""
    if field == "provider":
        return [value] if isinstance(value, str) and value else []
    meta = _metadata(value)
    if field == "meta_key":
        # Only keys a metadata filter can name.
        return [k for k in meta if k and not _BAD_META_KEY.search(k)]
    text = meta_text(meta.get(meta_key)) if meta_key is not None else None
    return [] if text is None else [text]


def _metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # SQLite keeps it as JSON text; PostgreSQL's driver gives a dict
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def meta_text(value: Any) -> str | None:
    """A metadata member as a metadata filter compares it (text; a boolean is 1 or 0), or ``None``
    for a member such a filter cannot match the same way on every engine (a fraction, an object, a
    list, null)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


# -- group series -----------------------------------------------------------------------------------
def group_series(
    conn: Connection, f: TraceFilter, by: str, bucket_seconds: int, top: int = 5, *, latency: bool = True
) -> dict[str, Any]:
    """``f``'s time series (requests, errors, cost, latency percentiles per bucket, as
    :func:`~.queries.timeseries`) split by ``by``: ``model``, ``project``, ``user`` or ``meta:KEY``.
    The ``top`` groups with the most requests, each ``{"key", "requests", "timeseries"}`` (``key``
    ``None``: traces without one), then ``{"other": true, ...}`` for the rest (for users: traces
    without a user too), when there is a rest. Without ``latency`` the percentiles are ``None``
    and no histogram is read: the counts come from the hourly rollup alone (by model, project)."""
    width = _check_width(bucket_seconds)
    if isinstance(top, bool) or not 1 <= top <= MAX_GROUPS:
        raise ParamError("top", f"top must be a whole number from 1 to {MAX_GROUPS}, not {top!r}")
    now = time.time()
    meta_key = by[len("meta:") :] if by.startswith("meta:") else None
    out: dict[str, Any] = {"object": "group_series", "by": by, "bucket_seconds": width}
    complete, scanned_since = True, None
    if meta_key is not None:
        if not meta_key or _BAD_META_KEY.search(meta_key):
            raise ParamError("by", 'by=meta:KEY needs a metadata key, without ", \\ or control characters')
        groups, other, complete, scanned_since = _by_meta(conn, f, meta_key, width, top, latency)
    elif by == "user":
        groups, other = _by_user(conn, f, width, top, now, latency)
    elif by in ("model", "project"):
        groups, other = _by_rollup_column(conn, f, by, width, top, now, latency)
    else:
        raise ParamError("by", f"by must be one of {', '.join(GROUP_BYS)} or meta:KEY, not {by!r}")
    rows = [_group(key, series, f, width, now) for key, series in groups]
    if other:
        rows.append({**_group(None, other, f, width, now), "other": True})
    out["groups"] = rows
    out["complete"] = complete
    out["scanned_since"] = scanned_since
    return out


def _group(key: Any, series: dict[int, _Agg], f: TraceFilter, width: int, now: float) -> dict[str, Any]:
    return {
        "key": key,
        "other": False,
        "requests": sum(a.requests for a in series.values()),
        "timeseries": _series(series, f, width, now),
    }


def _split(per_key: dict[Any, dict[int, _Agg]], top: int) -> tuple[Groups, dict[int, _Agg]]:
    """The ``top`` keys by requests (ties by key, ``None`` last) and the rest merged by bucket."""
    ranked = sorted(
        per_key.items(),
        key=lambda kv: (-sum(a.requests for a in kv[1].values()), kv[0] is None, "" if kv[0] is None else str(kv[0])),
    )
    other: dict[int, _Agg] = {}
    for _, series in ranked[top:]:
        for t, agg in series.items():
            other[t] = _merge([other[t], agg]) if t in other else agg
    return ranked[:top], other


def _add(per_key: dict[Any, dict[int, _Agg]], key: Any, t: int, agg: _Agg) -> None:
    series = per_key.setdefault(key, {})
    series[t] = _merge([series[t], agg]) if t in series else agg


def _totals(conn: Connection, f: TraceFilter, g: _Grouping, now: float) -> dict[Any, _Agg]:
    """:func:`~.queries._collect` without the histograms: the totals of ``f``'s traces by ``g``,
    whole hours from ``rollup_hour`` when the filter allows, the rest from ``traces``."""
    aggs: dict[Any, _Agg] = {}
    seek = not f.rollup_ok and _small_project(conn, f)
    reads = _Tiers(conn, aggs, g.n)

    def raw(lo: float | None, hi: float | None) -> None:
        reads.totals.append(_raw_totals_sql(conn, f, g.raw, lo, hi, seek, g.n))

    _tiered(f.since, f.until, now, _totals_tiers(conn, f, g, reads), raw)
    reads.read()
    return aggs


def _collected(conn: Connection, f: TraceFilter, g: _Grouping, now: float, latency: bool) -> dict[Any, _Agg]:
    # A split shows the series of its groups: their latency histograms alone (SERIES_METRICS).
    return _collect(conn, f, g, now, metrics=SERIES_METRICS) if latency else _totals(conn, f, g, now)


def _by_rollup_column(
    conn: Connection, f: TraceFilter, column: str, width: int, top: int, now: float, latency: bool
) -> tuple[Groups, dict[int, _Agg]]:
    dialect = dialect_of(conn)

    def per(seconds: int, time_column: str) -> str | None:
        return f"{dialect.period(time_column, width)}, {column}" if width % seconds == 0 else None

    grouping = _Grouping(
        f"{dialect.period('created_at', width)}, {column}",
        {t: per(seconds, time_column) for t, (seconds, time_column) in EVERY_TOTALS_LEVEL.items()},
        {t: per(seconds, "period") if column in dims else None for t, (seconds, dims) in EVERY_HIST_LEVEL.items()},
        2,
    )
    per_key: dict[Any, dict[int, _Agg]] = {}
    for (t, key), agg in _collected(conn, f, grouping, now, latency).items():
        _add(per_key, key or None, int(t), agg)  # the rollups keep a missing model as ''
    return _split(per_key, top)


def _by_user(
    conn: Connection, f: TraceFilter, width: int, top: int, now: float, latency: bool
) -> tuple[Groups, dict[int, _Agg]]:
    # The users' requests alone (no other total, no first or last time), as the overview finds its
    # top users: over all time the largest rows of the all-time rollup (one more, for the row of
    # the traces without a user), over a range the partial days' rows or rollup rows less the rest.
    seek = _small_project(conn, f)
    if _keys_all_time(f, times=False):
        source, params = _key_groups(conn, f, "user_id", seek, now, times=False, top=top + 1)
    else:
        source, params = _key_groups(conn, f, "user_id", seek, now, times=False, columns=("requests",))
    sql = f"SELECT k FROM ({source}) AS keys WHERE k IS NOT NULL ORDER BY requests DESC, k LIMIT ?"
    users = [k for (k,) in conn.execute(sql, [*params, top])]
    dialect = dialect_of(conn)
    total = {int(t): a for t, a in _collected(conn, f, _by_time(dialect, width), now, latency).items()}
    per_key: dict[Any, dict[int, _Agg]] = {}
    if users:
        # The top users' rows, through the user index, which holds every column read here
        # (the charts need no prompt/completion split and no TTFT).
        clauses, params = _conditions(conn, f)
        clauses.append(f"user_id IN ({', '.join('?' * len(users))})")
        period = dialect.period("created_at", width)
        sql = (
            f"SELECT {period}, user_id, count(*), sum({_ERR}), sum({_CANCELLED}), sum(total_tokens), "
            f"sum(cost_usd), sum({_UNPRICED}), sum({_NO_USAGE}) FROM traces{_where(clauses)} GROUP BY 1, 2"
        )
        for t, user, n, errors, cancelled, tokens, cost, unpriced, no_usage in conn.execute(sql, [*params, *users]):
            agg = _Agg()
            agg.add_totals(n, errors, cancelled, 0, 0, tokens, cost, unpriced, no_usage)
            per_key.setdefault(user, {})[int(t)] = agg
        if latency:
            sql = (
                f"SELECT {period}, user_id, {dialect.bucket('latency_ms')}, count(*), min(latency_ms), max(latency_ms) "
                f"FROM traces{_where([*clauses, dialect.unindexed('latency_ms') + ' IS NOT NULL'])} GROUP BY 1, 2, 3"
            )
            for t, user, bucket, n, lo, hi in conn.execute(sql, [*params, *users]):
                per_key[user][int(t)].add_hist("latency", bucket, n, lo, hi)
    groups: Groups = [(user, per_key.get(user, {})) for user in users]
    other = {}
    for t, agg in total.items():
        rest = _minus(agg, [series[t] for _, series in groups if t in series])
        if rest.requests > 0:
            other[t] = rest
    return groups, other


def _minus(total: _Agg, parts: list[_Agg]) -> _Agg:
    """``total`` less ``parts`` (a subset of its traces): counts and histogram counts subtract
    exactly; a remaining bucket keeps the total's bounds, so a percentile read from it stays
    within its bucket. (The parts' prompt and completion tokens and TTFT, not read, are not
    subtracted: no series shows them.)"""
    out = _Agg()
    out.add_totals(
        total.requests - sum(p.requests for p in parts),
        total.errors - sum(p.errors for p in parts),
        total.cancelled - sum(p.cancelled for p in parts),
        total.prompt - sum(p.prompt for p in parts),
        total.completion - sum(p.completion for p in parts),
        total.total - sum(p.total for p in parts),
        max(0.0, total.cost - sum(p.cost for p in parts)),
        total.unpriced - sum(p.unpriced for p in parts),
        total.no_usage - sum(p.no_usage for p in parts),
    )
    for metric, hist in total.hist.items():
        for bucket, (n, lo, hi) in hist.items():
            left = int(n) - sum(int(p.hist[metric][bucket][0]) for p in parts if bucket in p.hist[metric])
            if left > 0:
                out.add_hist(metric, bucket, left, lo, hi)
    return out


def _bucket(ms: float) -> int:
    """The histogram bucket of a latency (see :mod:`.rollups`)."""
    return math.floor(BUCKETS_PER_E * math.log(max(ms, BUCKET_FLOOR_MS) * 1000))


def _by_meta(
    conn: Connection, f: TraceFilter, key: str, width: int, top: int, latency: bool
) -> tuple[Groups, dict[int, _Agg], bool, float | None]:
    seek = f.project is not None and _small_project(conn, f)
    clauses, params = _conditions(conn, f, seek=seek)
    sql = (
        "SELECT created_at, metadata, status, prompt_tokens, completion_tokens, total_tokens, cost_usd, "
        f"latency_ms, ttft_ms FROM {_traces(conn, f, seek)}{_where(clauses)} ORDER BY created_at DESC LIMIT ?"
    )
    per_key: dict[Any, dict[int, _Agg]] = {}
    read, oldest = 0, None
    for created, meta, status, prompt, completion, total, cost, latency_ms, ttft in conn.execute(
        sql, [*params, META_SCAN]
    ):
        read += 1
        oldest = created
        series = per_key.setdefault(meta_text(_metadata(meta).get(key)), {})
        agg = series.get(math.floor(created / width))
        if agg is None:
            agg = series[math.floor(created / width)] = _Agg()
        agg.add_totals(
            1,
            1 if status in ERROR_STATUSES else 0,
            1 if status == "cancelled" else 0,
            prompt,
            completion,
            total,
            cost,
            1 if cost is None and total is not None else 0,
            1 if cost is None and total is None else 0,
        )
        for metric, value in (("latency", latency_ms), ("ttft", ttft)):
            if value is not None and latency:
                agg.add_hist(metric, _bucket(value), 1, value, value)
    complete = read < META_SCAN
    groups, other = _split(per_key, top)
    return groups, other, complete, None if complete else oldest


__all__ = ["GROUP_BYS", "META_SCAN", "SCAN_BOUND", "SUGGEST_FIELDS", "group_series", "meta_text", "suggestions"]
