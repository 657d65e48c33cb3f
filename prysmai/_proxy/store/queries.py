"""The one query layer over the trace store: filters, aggregates, pagination.

Used by ``prysmai stats`` / ``traces``, the read API (``/api/v1/stats``, ``/api/v1/traces``) and
the dashboard. Every function takes a DB-API connection and a :class:`TraceFilter`, and lets the
database do the work: aggregates are ``GROUP BY`` queries, lists are keyset-paginated ``LIMIT``
queries on an index; Python only merges a few hundred histogram rows. The SQL is standard except
what the engine's :class:`~.engine.Dialect` supplies (JSON access to metadata, case-insensitive
``LIKE``, the histogram bucket expression, an index hint), looked up by the connection's type, so
another engine shares this module by registering its own dialect.

**Aggregates over time** read the rollups (see :mod:`.rollups`) for the whole periods of the
range -- totals from ``rollup_hour``; histograms from ``rollup_hist_day`` for whole days and
``rollup_hist_hour`` for the whole hours around them -- and the ``traces`` table for the partial
periods at its edges, when the filter only names time, project, model, endpoint and status
(status: totals only); any other filter (user, session, key, metadata, text) reads ``traces``
through its covering indexes.

**Projects**: every function reads one project's traces when the filter names it
(:attr:`TraceFilter.project`; :func:`get_trace` and :func:`session_traces` take ``project=``); a
trace of another project is not found. The rollups and the covering indexes hold the project, so
a large project is read as the whole store is (filtered in the index); a small one
(:data:`SMALL_PROJECT`), and any project's traces listed by time, through ``traces_project``.

**Percentiles** are nearest-rank percentiles read from a log-scale histogram of 16 buckets per
e-fold (bucket bounds differ by a factor e^(1/16) = 1.0645). The value reported is the geometric
middle of the bucket holding the percentile's rank, clamped to the smallest and largest value
seen in that bucket, so it is within **3.2 %** (e^(1/32) - 1) of the exact nearest-rank value, and
exact when that bucket holds one distinct value.

**Pagination cursors** are opaque strings encoding the last row's (sort value, id); the next page
continues strictly after it, so traces arriving meanwhile never shift or repeat rows. NULL sort
values (no TTFT, unknown cost) come last in both directions.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime

from .engine import dialect_of
from .rollups import BUCKETS_PER_E, HIST_LEVELS, HOUR_DIMS, METRICS, bucket_bounds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    from .engine import Connection, Dialect

STATUSES = ("success", "error", "timeout", "cancelled")
#: Sort names accepted by :func:`list_traces` (column names, and the dashboard's short names).
SORTS = {
    "created_at": "created_at",
    "time": "created_at",
    "latency_ms": "latency_ms",
    "latency": "latency_ms",
    "ttft_ms": "ttft_ms",
    "ttft": "ttft_ms",
    "total_tokens": "total_tokens",
    "tokens": "total_tokens",
    "cost_usd": "cost_usd",
    "cost": "cost_usd",
}
BREAKDOWNS = ("project", "model", "endpoint", "user_id", "session_id")
MAX_LIMIT = 1000
MAX_BUCKETS = 5000
#: Columns of a listed trace: everything but the bodies.
SUMMARY_COLUMNS = (
    "id",
    "created_at",
    "method",
    "endpoint",
    "model",
    "response_model",
    "stream",
    "status",
    "http_status",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "user_id",
    "session_id",
    "key_id",
    "project",
    "provider",
    "metadata",
    "notes",
    "error",
    "provider_request_id",
)
_SUMMARY = ", ".join(SUMMARY_COLUMNS)
_HOUR = 3600
_ERR = "CASE WHEN status <> 'success' THEN 1 ELSE 0 END"
_UNPRICED = "CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END"


def _traces(conn: Connection, f: TraceFilter, seek: bool = False) -> str:
    """``traces``, read time-first when the filter has a start and no key-like column to seek (a
    small project's own index, with ``seek``, is one)."""
    if f.since is not None and f.user_id is None and f.session_id is None and f.key_id is None and not seek:
        return dialect_of(conn).time_first("traces")
    return "traces"


#: A project with fewer traces than this is read through its own index (``traces_project``) and
#: its rows; a larger one through the covering indexes an unscoped query reads, which hold the
#: project too.
SMALL_PROJECT = 5000


def _small_project(conn: Connection, f: TraceFilter) -> bool:
    """Whether ``f`` names a small project (at most :data:`SMALL_PROJECT` index entries read)."""
    if f.project is None:
        return False
    sql = "SELECT count(*) FROM (SELECT 1 FROM traces WHERE project = ? LIMIT ?) AS firsts"
    return int(conn.execute(sql, [f.project, SMALL_PROJECT]).fetchone()[0]) < SMALL_PROJECT


# -- filters ------------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def parse_time(name: str, value: str, now: float | None = None) -> float:
    """Unix seconds (``1732800000``), a duration ago (``30s``, ``15m``, ``1h``, ``7d``, ``2w``) or
    an ISO date/time (local time if it has no zone)."""
    if _NUMBER.match(value):
        return float(value)
    m = _DURATION.match(value)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{name}: expected unix seconds, a time ago like 15m, 1h, 7d, or an ISO date/time "
            f"like 2025-01-31T12:00, not {value!r}"
        ) from None


@dataclass(frozen=True)
class TraceFilter:
    """Which traces a query covers; every field ``None`` = all. ``since`` is inclusive, ``until``
    exclusive (unix seconds); ``meta_key``/``meta_value`` match one metadata member (compared as
    text); ``text`` is a case-insensitive (ASCII) substring of the request or response body;
    ``project`` is one project's traces only."""

    since: float | None = None
    until: float | None = None
    model: str | None = None
    endpoint: str | None = None
    status: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    key_id: str | None = None
    meta_key: str | None = None
    meta_value: str | None = None
    text: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if (self.meta_key is None) != (self.meta_value is None):
            raise ValueError("a metadata filter needs both a key and a value (meta=key=value)")
        if self.meta_key is not None and (not self.meta_key or '"' in self.meta_key or "\\" in self.meta_key):
            raise ValueError('metadata key must be non-empty, without " or \\')
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite time")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since must not be later than until")

    @classmethod
    def from_query(cls, query: Mapping[str, str], now: float | None = None) -> TraceFilter:
        """From a query string: ``project``, ``since``, ``until`` (unix seconds, ``15m``/``1h``/``7d``
        ago, or ISO), ``model``, ``endpoint``, ``status``, ``user``, ``session``, ``key``,
        ``meta=key=value``, ``q`` (text in bodies). Empty values and other names are ignored;
        a bad value raises ``ValueError`` saying what is expected."""

        def get(name: str) -> str | None:
            value = query.get(name)
            return value if value else None

        now = time.time() if now is None else now
        since, until, meta = get("since"), get("until"), get("meta")
        meta_key = meta_value = None
        if meta is not None:
            meta_key, sep, meta_value = meta.partition("=")
            if not sep or not meta_key:
                raise ValueError(f"meta: expected key=value, not {meta!r}")
        return cls(
            project=get("project"),
            since=parse_time("since", since, now) if since else None,
            until=parse_time("until", until, now) if until else None,
            model=get("model"),
            endpoint=get("endpoint"),
            status=get("status"),
            user_id=get("user"),
            session_id=get("session"),
            key_id=get("key"),
            meta_key=meta_key,
            meta_value=meta_value,
            text=get("q"),
        )

    @property
    def rollup_ok(self) -> bool:
        """Whether the hourly rollups can answer this filter (they keep project, model, endpoint,
        status)."""
        return (
            self.user_id is None
            and self.session_id is None
            and self.key_id is None
            and self.meta_key is None
            and self.text is None
        )


def _conditions(
    conn: Connection,
    f: TraceFilter,
    since: float | None = None,
    until: float | None = None,
    *,
    times: bool = True,
    seek: bool = False,
) -> tuple[list[str], list[Any]]:
    """WHERE clauses on ``traces`` for ``f``; ``since``/``until`` override the filter's range.
    The project is matched through ``traces_project`` only with ``seek``: otherwise SQLite would
    take that index for any query naming a project (an equality on its first column), and read
    every row of a large project for what a covering index answers."""
    clauses: list[str] = []
    params: list[Any] = []
    if f.project is not None:
        # Through traces_project only with seek (see above).
        clauses.append("project = ?" if seek else f"{dialect_of(conn).unindexed('project')} = ?")
        params.append(f.project)
    if times:
        since = f.since if since is None else since
        until = f.until if until is None else until
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created_at < ?")
            params.append(until)
    for column in ("model", "endpoint", "status", "user_id", "session_id", "key_id"):
        value = getattr(f, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if f.meta_key is not None and f.meta_value is not None:
        sql, more = dialect_of(conn).meta_equals(f.meta_key, f.meta_value)
        clauses.append(sql)
        params += more
    if f.text is not None:
        sql, more = dialect_of(conn).contains(("request_body", "response_body"), f.text)
        clauses.append(sql)
        params += more
    return clauses, params


def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


# -- histogram aggregation ----------------------------------------------------------------------
class _Agg:
    """Totals and latency/TTFT histograms of one group (a time bucket, a model, everything)."""

    __slots__ = ("completion", "cost", "errors", "hist", "priced", "prompt", "requests", "total", "unpriced")

    def __init__(self) -> None:
        self.requests = self.errors = self.prompt = self.completion = self.total = 0
        self.priced = self.unpriced = 0
        self.cost = 0.0
        # metric -> bucket -> [count, min, max]
        self.hist: dict[str, dict[int, list[float]]] = {"latency": {}, "ttft": {}}

    def add_totals(
        self, requests: int, errors: int, prompt: Any, completion: Any, total: Any, cost: Any, unpriced: int
    ) -> None:
        self.requests += requests
        self.errors += errors or 0
        self.prompt += prompt or 0
        self.completion += completion or 0
        self.total += total or 0
        self.cost += cost or 0.0
        self.unpriced += unpriced or 0
        self.priced = self.requests - self.unpriced

    def add_hist(self, metric: str, bucket: int, n: int, lo: float, hi: float) -> None:
        if not n:
            return
        cell = self.hist[metric].get(bucket)
        if cell is None:
            self.hist[metric][bucket] = [n, lo, hi]
        else:
            cell[0] += n
            cell[1] = min(cell[1], lo)
            cell[2] = max(cell[2], hi)

    def percentiles(self, metric: str, pcts: Iterable[float]) -> list[float | None]:
        return histogram_percentiles(self.hist[metric], pcts)

    @property
    def cost_usd(self) -> float | None:
        # Unknown is not zero: with no priced request there is no cost to report.
        return self.cost if self.priced else None


def histogram_percentiles(hist: Mapping[int, list[float]], pcts: Iterable[float]) -> list[float | None]:
    """Nearest-rank percentiles from ``{bucket: [count, min, max]}`` (see the module docstring)."""
    n = sum(int(c[0]) for c in hist.values())
    if n <= 0:
        return [None for _ in pcts]
    order = sorted(b for b, c in hist.items() if c[0] > 0)
    out: list[float | None] = []
    for p in pcts:
        rank = max(1, math.ceil(n * p / 100 - 1e-9))
        seen = 0
        for b in order:
            count, lo, hi = hist[b]
            seen += int(count)
            if seen >= rank:
                low, high = bucket_bounds(b)
                mid = math.sqrt(low * high)
                out.append(float(lo) if lo == hi else min(max(mid, float(lo)), float(hi)))
                break
    return out


@dataclass(frozen=True)
class _Grouping:
    """How one aggregate groups rows, in SQL over each source: ``raw`` over ``traces``, ``hour``
    over ``rollup_hour``, ``hist`` over each histogram rollup (``None``: that source cannot)."""

    raw: str
    hour: str | None
    hist: dict[str, str | None]


_CONSTANT = _Grouping("0", "0", {t: "0" for t in HIST_LEVELS})


def _by_column(column: str) -> _Grouping:
    return _Grouping(column, column, {t: column if column in dims else None for t, (_, dims) in HIST_LEVELS.items()})


def _by_time(dialect: Dialect, width: int) -> _Grouping:
    def per(seconds: int, column: str) -> str | None:
        return dialect.period(column, width) if width % seconds == 0 else None

    return _Grouping(
        dialect.period("created_at", width),
        per(_HOUR, "hour"),
        {t: per(seconds, "period") for t, (seconds, _) in HIST_LEVELS.items()},
    )


def _agg(aggs: dict[Any, _Agg], g: Any) -> _Agg:
    agg = aggs.get(g)
    if agg is None:
        agg = aggs[g] = _Agg()
    return agg


def _raw_totals(
    conn: Connection,
    aggs: dict[Any, _Agg],
    f: TraceFilter,
    g: str,
    lo: float | None,
    hi: float | None,
    seek: bool = False,
) -> None:
    clauses, params = _conditions(conn, f, lo, hi, seek=seek)
    sql = (
        f"SELECT {g} AS g, count(*), sum({_ERR}), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), "
        f"sum(cost_usd), sum({_UNPRICED}) FROM traces{_where(clauses)} GROUP BY g"
    )
    for key, n, errors, prompt, completion, total, cost, unpriced in conn.execute(sql, params):
        _agg(aggs, key).add_totals(n, errors, prompt, completion, total, cost, unpriced)


def _raw_hist(
    conn: Connection,
    aggs: dict[Any, _Agg],
    f: TraceFilter,
    g: str,
    lo: float | None,
    hi: float | None,
    seek: bool = False,
) -> None:
    clauses, params = _conditions(conn, f, lo, hi, seek=seek)
    for metric, column in METRICS:
        b = dialect_of(conn).bucket(column)
        sql = (
            f"SELECT {g} AS g, {b} AS b, count(*), min({column}), max({column}) FROM traces"
            f"{_where([*clauses, f'{column} IS NOT NULL'])} GROUP BY g, b"
        )
        for key, bucket, n, lo_ms, hi_ms in conn.execute(sql, params):
            _agg(aggs, key).add_hist(metric, bucket, n, lo_ms, hi_ms)


def _rollup_filters(f: TraceFilter, dims: Iterable[str]) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in dims:
        value = getattr(f, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return clauses, params


def _rollup_totals(conn: Connection, aggs: dict[Any, _Agg], f: TraceFilter, g: str, lo: int | None, hi: int) -> None:
    clauses, params = _rollup_filters(f, HOUR_DIMS)
    clauses.append("hour < ?")
    params.append(hi)
    if lo is not None:
        clauses.append("hour >= ?")
        params.append(lo)
    sql = (
        f"SELECT {g} AS g, sum(requests), sum(CASE WHEN status <> 'success' THEN requests ELSE 0 END), "
        f"sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(cost_usd), sum(unpriced) "
        f"FROM rollup_hour{_where(clauses)} GROUP BY g"
    )
    for key, n, errors, prompt, completion, total, cost, unpriced in conn.execute(sql, params):
        if n:
            _agg(aggs, key).add_totals(n, errors, prompt, completion, total, cost, unpriced)


def _rollup_hist(
    conn: Connection, aggs: dict[Any, _Agg], f: TraceFilter, g: str, table: str, lo: int | None, hi: int
) -> None:
    clauses, params = _rollup_filters(f, HIST_LEVELS[table][1])
    clauses.append("period < ?")
    params.append(hi)
    if lo is not None:
        clauses.append("period >= ?")
        params.append(lo)
    sql = (
        f"SELECT {g} AS g, metric, bucket, sum(n), min(min_ms), max(max_ms) FROM {table}{_where(clauses)} "
        "GROUP BY g, metric, bucket"
    )
    for key, metric, bucket, n, lo_ms, hi_ms in conn.execute(sql, params):
        if n:
            _agg(aggs, key).add_hist(metric, bucket, n, lo_ms, hi_ms)


def _tiered(
    lo: float | None,
    hi: float | None,
    now: float,
    tiers: list[tuple[int, Callable[[int | None, int], None]]],
    raw: Callable[[float | None, float | None], None],
) -> None:
    """Cover ``[lo, hi)`` with the coarsest tier's whole periods, the rest with finer tiers, and
    what no tier covers whole with ``raw`` (``None`` = open end)."""
    if not tiers:
        raw(lo, hi)
        return
    (seconds, rollup), finer = tiers[0], tiers[1:]
    first = None if lo is None else math.ceil(lo / seconds) * seconds
    end = math.floor((now if hi is None else hi) / seconds) * seconds
    if first is not None and first >= end:
        _tiered(lo, hi, now, finer, raw)
        return
    rollup(first, end)
    if lo is not None and first is not None and lo < first:
        _tiered(lo, float(first), now, finer, raw)
    _tiered(float(end), hi, now, finer, raw)  # to ``hi``, or on past ``now`` when open


def _collect(conn: Connection, f: TraceFilter, grouping: _Grouping, now: float | None = None) -> dict[Any, _Agg]:
    """Totals and histograms of ``f``'s traces by group: whole periods from the rollups that can
    answer the filter and the grouping, the partial periods at the edges from ``traces``."""
    now = time.time() if now is None else now
    aggs: dict[Any, _Agg] = {}
    g = grouping
    # The rollups answer whole periods: rows are read for the edges only, through traces_agg,
    # unless the filter needs them all (then a small project's are found through its index).
    seek = not f.rollup_ok and _small_project(conn, f)

    def raw_totals(lo: float | None, hi: float | None) -> None:
        _raw_totals(conn, aggs, f, g.raw, lo, hi, seek)

    def raw_hist(lo: float | None, hi: float | None) -> None:
        _raw_hist(conn, aggs, f, g.raw, lo, hi, seek)

    totals: list[tuple[int, Callable[[int | None, int], None]]] = []
    hour_group = g.hour
    if f.rollup_ok and hour_group is not None:
        totals.append((_HOUR, lambda lo, hi: _rollup_totals(conn, aggs, f, hour_group, lo, hi)))
    _tiered(f.since, f.until, now, totals, raw_totals)

    hists: list[tuple[int, Callable[[int | None, int], None]]] = []
    for table, (seconds, dims) in sorted(HIST_LEVELS.items(), key=lambda kv: -kv[1][0]):
        group = g.hist.get(table)
        # A histogram rollup keeps no status, and only its own dimensions.
        unkept = [d for d in HOUR_DIMS if d != "status" and d not in dims]
        if group is not None and f.rollup_ok and f.status is None and all(getattr(f, d) is None for d in unkept):
            hists.append((seconds, functools.partial(_rollup_hist, conn, aggs, f, group, table)))
    _tiered(f.since, f.until, now, hists, raw_hist)
    return aggs


def _merge(aggs: Iterable[_Agg]) -> _Agg:
    out = _Agg()
    for a in aggs:
        out.add_totals(a.requests, a.errors, a.prompt, a.completion, a.total, a.cost, a.unpriced)
        for metric, hist in a.hist.items():
            for b, (n, lo, hi) in hist.items():
                out.add_hist(metric, b, int(n), lo, hi)
    return out


# -- aggregates ---------------------------------------------------------------------------------
def overview(conn: Connection, f: TraceFilter) -> dict[str, Any]:
    """Totals over ``f``: requests, errors, tokens, cost (``None`` when no request was priced;
    ``unpriced`` counts the requests of unknown cost), latency and TTFT percentiles (ms)."""
    agg = _merge(_collect(conn, f, _CONSTANT).values())
    p50, p95, p99 = agg.percentiles("latency", (50, 95, 99))
    t50, t95 = agg.percentiles("ttft", (50, 95))
    return {
        "requests": agg.requests,
        "errors": agg.errors,
        "error_rate": agg.errors / agg.requests if agg.requests else None,
        "prompt_tokens": agg.prompt,
        "completion_tokens": agg.completion,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced": agg.unpriced,
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
        "ttft_ms": {"p50": t50, "p95": t95},
    }


_NICE_BUCKETS = (
    1,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
)


def pick_bucket(since: float | None, until: float | None, now: float | None = None) -> int:
    """A round bucket width (seconds) giving at most ~120 buckets over ``[since, until)``; one day
    when ``since`` is open."""
    if since is None:
        return 86400
    span = max(1.0, (time.time() if now is None else now) - since if until is None else until - since)
    for width in _NICE_BUCKETS:
        if span / width <= 120:
            return width
    return math.ceil(span / 120 / 86400) * 86400


def timeseries(conn: Connection, f: TraceFilter, bucket_seconds: int) -> list[dict[str, Any]]:
    """Per time bucket ``[t, t + bucket_seconds)`` (``t`` a multiple of the width): requests, errors,
    cost, unpriced, latency percentiles. Every bucket from ``since`` to ``until`` (or now) is
    present, empty ones with zero counts and ``None`` percentiles."""
    width = int(bucket_seconds)
    if width != bucket_seconds or width < 1:
        raise ValueError(f"bucket_seconds must be a whole number of seconds >= 1, not {bucket_seconds!r}")
    now = time.time()
    end = now if f.until is None else f.until
    if f.since is not None and (end - f.since) / width > MAX_BUCKETS:
        raise ValueError(f"a {width} s bucket gives more than {MAX_BUCKETS} buckets over this range; widen it")
    aggs = _collect(conn, f, _by_time(dialect_of(conn), width), now)
    if f.since is not None:
        first = math.floor(f.since / width)
    elif aggs:
        first = min(int(k) for k in aggs)
    else:
        return []
    last = max(first, math.ceil(end / width) - 1)
    if aggs:
        last = max(last, max(int(k) for k in aggs))
    if last - first + 1 > MAX_BUCKETS:
        raise ValueError(f"a {width} s bucket gives more than {MAX_BUCKETS} buckets over this range; widen it")
    out = []
    for k in range(first, last + 1):
        agg = aggs.get(k)
        if agg is None:
            out.append(
                {
                    "t": k * width,
                    "requests": 0,
                    "errors": 0,
                    "cost_usd": 0.0,
                    "unpriced": 0,
                    "latency_p50": None,
                    "latency_p95": None,
                    "latency_p99": None,
                }
            )
            continue
        p50, p95, p99 = agg.percentiles("latency", (50, 95, 99))
        out.append(
            {
                "t": k * width,
                "requests": agg.requests,
                "errors": agg.errors,
                "cost_usd": agg.cost_usd,
                "unpriced": agg.unpriced,
                "latency_p50": p50,
                "latency_p95": p95,
                "latency_p99": p99,
            }
        )
    return out


def _breakdown_row(key: Any, agg: _Agg) -> dict[str, Any]:
    p50, p95 = agg.percentiles("latency", (50, 95))
    return {
        "key": key,
        "requests": agg.requests,
        "errors": agg.errors,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced": agg.unpriced,
        "latency_p50": p50,
        "latency_p95": p95,
    }


def breakdown(conn: Connection, f: TraceFilter, by: str, limit: int = 20) -> list[dict[str, Any]]:
    """The ``limit`` most requested values of ``by`` (project, model, endpoint, user_id,
    session_id) with their totals and latency p50/p95; ``key`` is ``None`` for traces without one."""
    if by not in BREAKDOWNS:
        raise ValueError(f"breakdown by must be one of {', '.join(BREAKDOWNS)}, not {by!r}")
    limit = _check_limit(limit)
    if by in ("project", "model", "endpoint"):  # kept by the rollups
        aggs = _collect(conn, f, _by_column(by))
        if by == "model":  # the rollups keep a missing model as ''
            merged: dict[Any, _Agg] = {}
            for k, a in aggs.items():
                key = k or None
                merged[key] = _merge([merged[key], a]) if key in merged else a
            aggs = merged
        top = sorted(aggs.items(), key=lambda kv: (-kv[1].requests, "" if kv[0] is None else str(kv[0])))[:limit]
        return [_breakdown_row(k, a) for k, a in top]
    # Users and sessions are not in the rollups: pick the top keys by count through the covering
    # index, then read the latency histograms of those keys only.
    seek = _small_project(conn, f)
    clauses, params = _conditions(conn, f, seek=seek)
    sql = (
        f"SELECT {by}, count(*) AS n, sum({_ERR}), sum(total_tokens), sum(cost_usd), sum({_UNPRICED}) "
        f"FROM {_traces(conn, f, seek)}{_where(clauses)} GROUP BY {by} ORDER BY n DESC, {by} IS NOT NULL, {by} LIMIT ?"
    )
    aggs = {}
    for key, n, errors, total, cost, unpriced in conn.execute(sql, [*params, limit]):
        agg = aggs[key] = _Agg()
        agg.add_totals(n, errors, 0, 0, total, cost, unpriced)
    keys = [k for k in aggs if k is not None]
    if aggs:
        member = []
        if keys:
            member.append(f"{by} IN ({', '.join('?' * len(keys))})")
        if None in aggs:
            member.append(f"{by} IS NULL")
        b = dialect_of(conn).bucket("latency_ms")
        sql = (
            f"SELECT {by}, {b} AS b, count(*), min(latency_ms), max(latency_ms) FROM {_traces(conn, f, seek)}"
            f"{_where([*clauses, '(' + ' OR '.join(member) + ')', 'latency_ms IS NOT NULL'])} GROUP BY {by}, b"
        )
        for key, bucket, n, lo, hi in conn.execute(sql, [*params, *keys]):
            aggs[key].add_hist("latency", bucket, n, lo, hi)
    return [_breakdown_row(k, a) for k, a in aggs.items()]


def overview_page(
    conn: Connection, f: TraceFilter, bucket_seconds: int, breakdowns: Iterable[str], rows: int
) -> dict[str, Any]:
    """The dashboard's overview: :func:`overview`, :func:`timeseries` and a :func:`breakdown` by
    each of ``breakdowns`` (``rows`` each), read on one connection -- in one read transaction,
    one snapshot, so its numbers cannot disagree."""
    return {
        "overview": overview(conn, f),
        "bucket_seconds": bucket_seconds,
        "timeseries": timeseries(conn, f, bucket_seconds),
        "breakdowns": {by: breakdown(conn, f, by, rows) for by in breakdowns},
    }


def stats(conn: Connection, f: TraceFilter) -> dict[str, Any]:
    """``prysmai stats --json`` and ``GET /api/v1/stats``: totals and ``by_model``, with the keys
    of prysmai 0.1.0 (``unpriced_requests``, ``latency_p50_ms``...) plus p99 and TTFT p95."""
    by_model = _collect(conn, f, _by_column("model"))
    models: dict[str, _Agg] = {}
    for k, a in by_model.items():
        name = k or "(none)"
        models[name] = _merge([models[name], a]) if name in models else a
    out = _legacy(_merge(by_model.values()))
    out["by_model"] = {m: _legacy(a) for m, a in sorted(models.items())}
    return out


def _legacy(agg: _Agg) -> dict[str, Any]:
    p50, p95, p99 = agg.percentiles("latency", (50, 95, 99))
    t50, t95 = agg.percentiles("ttft", (50, 95))
    return {
        "requests": agg.requests,
        "errors": agg.errors,
        "error_rate": agg.errors / agg.requests if agg.requests else 0.0,
        "prompt_tokens": agg.prompt,
        "completion_tokens": agg.completion,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced_requests": agg.unpriced,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
        "ttft_p50_ms": t50,
        "ttft_p95_ms": t95,
    }


# -- lists ----------------------------------------------------------------------------------------
def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def _encode_cursor(payload: list[Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str) -> list[Any]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise ValueError("invalid cursor (pass back next_cursor as it was given)") from None
    if not isinstance(payload, list) or len(payload) != 4 or payload[0] != kind:
        raise ValueError("this cursor belongs to another listing or sort order; start again without it")
    return payload


def row_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A trace row as JSON-ready data: ``stream`` as a bool, metadata and notes parsed."""
    out = dict(row)
    if "stream" in out and out["stream"] is not None:
        out["stream"] = bool(out["stream"])
    for key in ("metadata", "notes"):
        if isinstance(out.get(key), str):
            with contextlib.suppress(ValueError):  # otherwise shown as stored
                out[key] = json.loads(out[key])
    return out


def _rows(conn: Connection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [row_dict(dict(zip(names, r))) for r in cur]


def list_traces(
    conn: Connection,
    f: TraceFilter,
    *,
    sort: str = "created_at",
    descending: bool = True,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of traces (no bodies) and the cursor of the next page (``None`` at the end).
    ``sort``: created_at (time), latency_ms (latency), ttft_ms (ttft), total_tokens (tokens),
    cost_usd (cost); ties broken by id; rows without a value come last."""
    column = SORTS.get(sort)
    if column is None:
        raise ValueError(f"sort must be one of {', '.join(sorted(set(SORTS.values())))}, not {sort!r}")
    limit = _check_limit(limit)
    kind = f"traces:{column}:{'desc' if descending else 'asc'}"
    after = _decode_cursor(cursor, kind) if cursor else None
    op, order = ("<", "DESC") if descending else (">", "ASC")
    # A project's traces by time alone are one range of traces_project (which holds the ids); with
    # any other filter or order, a large project's are picked from the covering traces_agg.
    by_time_only = column == "created_at" and f == TraceFilter(since=f.since, until=f.until, project=f.project)
    seek = f.project is not None and (by_time_only or _small_project(conn, f))
    clauses, params = _conditions(conn, f, seek=seek)
    # Pick the page's ids first (from the covering index traces_agg when the filter allows), then
    # read just those rows: sorting full rows would read every row of the range, bodies included.
    ids: list[Any] = []
    in_nulls = after is not None and after[1] is None
    if not in_nulls:
        where = [*clauses, f"{column} IS NOT NULL"]
        more = list(params)
        if after is not None:
            where.append(f"({column}, id) {op} (?, ?)")
            more += [after[1], after[2]]
        sql = f"SELECT id FROM traces{_where(where)} ORDER BY {column} {order}, id {order} LIMIT ?"
        ids = [r[0] for r in conn.execute(sql, [*more, limit + 1])]
    if len(ids) <= limit and column != "created_at":
        where = [*clauses, f"{column} IS NULL"]
        more = list(params)
        if in_nulls and after is not None:
            where.append(f"id {op} ?")
            more.append(after[2])
        sql = f"SELECT id FROM traces{_where(where)} ORDER BY id {order} LIMIT ?"
        ids += [r[0] for r in conn.execute(sql, [*more, limit + 1 - len(ids)])]
    page = ids[:limit]
    by_id = {}
    if page:
        sql = f"SELECT {_SUMMARY} FROM traces WHERE id IN ({', '.join('?' * len(page))})"
        by_id = {r["id"]: r for r in _rows(conn, sql, page)}
    rows = [by_id[i] for i in page if i in by_id]
    if len(ids) <= limit or not rows:
        return rows, None
    last = rows[-1]
    return rows, _encode_cursor([kind, last[column], last["id"], 0])


_HEX = re.compile(r"^[0-9a-f]+$")


def _in_project(conn: Connection, project: str | None) -> tuple[str, list[Any]]:
    """`` AND`` the row is in ``project`` (nothing when ``None``), for a query that finds its rows
    by another index: the unary ``+`` keeps SQLite from walking the project's index instead."""
    return ("", []) if project is None else (f" AND {dialect_of(conn).unindexed('project')} = ?", [project])


def get_trace(conn: Connection, trace_id: str, *, project: str | None = None) -> dict[str, Any] | None:
    """One trace in full, by id or by a unique prefix of at least 8 hex characters; ``None`` if
    none matches (in ``project``, when given: a trace of another project is not found).
    ``ValueError`` for a prefix shorter than 8 or matching several traces."""
    scope, scoped = _in_project(conn, project)
    found = _rows(conn, f"SELECT * FROM traces WHERE id = ?{scope}", [trace_id, *scoped])
    if found:
        return found[0]
    prefix = trace_id.strip().lower()
    if not _HEX.match(prefix):
        return None
    if len(prefix) < 8:
        raise ValueError(f"trace id prefix too short: give at least 8 hex characters, not {len(prefix)}")
    # A range on the primary key index ('g' sorts after every hex digit).
    sql = f"SELECT * FROM traces WHERE id >= ? AND id < ?{scope} ORDER BY id LIMIT 2"
    found = _rows(conn, sql, [prefix, prefix + "g", *scoped])
    if len(found) > 1:
        raise ValueError(f"trace id prefix {prefix!r} is ambiguous: give more characters")
    return found[0] if found else None


def _groups(
    conn: Connection, f: TraceFilter, column: str, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    limit = _check_limit(limit)
    kind = f"{column}s"
    seek = _small_project(conn, f)
    clauses, params = _conditions(conn, f, seek=seek)
    clauses.append(f"{column} IS NOT NULL")
    having = ""
    more: list[Any] = []
    if cursor:
        after = _decode_cursor(cursor, kind)
        having = f" HAVING (max(created_at), {column}) < (?, ?)"
        more = [after[1], after[2]]
    sql = (
        f"SELECT {column}, count(*), sum({_ERR}), coalesce(sum(total_tokens), 0), sum(cost_usd), sum({_UNPRICED}), "
        f"min(created_at), max(created_at) AS last_seen FROM {_traces(conn, f, seek)}{_where(clauses)} "
        f"GROUP BY {column}{having} ORDER BY last_seen DESC, {column} DESC LIMIT ?"
    )
    rows = [
        {
            column: key,
            "requests": n,
            "errors": errors,
            "total_tokens": total,
            "cost_usd": cost,
            "unpriced": unpriced,
            "first_seen": first,
            "last_seen": last,
        }
        for key, n, errors, total, cost, unpriced, first, last in conn.execute(sql, [*params, *more, limit + 1])
    ]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode_cursor([kind, rows[-1]["last_seen"], rows[-1][column], 0])


def sessions(
    conn: Connection, f: TraceFilter, *, cursor: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], str | None]:
    """Sessions seen in ``f``'s traces, most recently active first, with their totals."""
    return _groups(conn, f, "session_id", cursor, limit)


def users(
    conn: Connection, f: TraceFilter, *, cursor: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], str | None]:
    """Users seen in ``f``'s traces, most recently active first, with their totals."""
    return _groups(conn, f, "user_id", cursor, limit)


def session_traces(
    conn: Connection, session_id: str, limit: int = 500, *, project: str | None = None
) -> list[dict[str, Any]]:
    """A session's traces in full, oldest first (its conversation timeline); only those of
    ``project`` when given."""
    limit = _check_limit(limit)
    scope, scoped = _in_project(conn, project)
    sql = f"SELECT * FROM traces WHERE session_id = ?{scope} ORDER BY created_at, id LIMIT ?"
    return _rows(conn, sql, [session_id, *scoped, limit])


def month_spend(conn: Connection, since: float) -> dict[str, float]:
    """USD spent per project from ``since`` (unix seconds on a whole hour, as the start of a UTC
    month is) to now, from the hourly rollups: what a monthly budget is checked against. Requests
    of unknown cost add nothing; a project without traces in the range is absent."""
    if not math.isfinite(since) or since % _HOUR:
        raise ValueError(f"since must be a whole hour (unix seconds divisible by {_HOUR}), not {since!r}")
    sql = "SELECT project, sum(cost_usd) FROM rollup_hour WHERE hour >= ? GROUP BY project"
    return {project: float(cost or 0.0) for project, cost in conn.execute(sql, [int(since)])}


__all__ = [
    "BREAKDOWNS",
    "BUCKETS_PER_E",
    "SORTS",
    "TraceFilter",
    "breakdown",
    "get_trace",
    "histogram_percentiles",
    "list_traces",
    "month_spend",
    "overview",
    "overview_page",
    "pick_bucket",
    "session_traces",
    "sessions",
    "stats",
    "timeseries",
    "users",
]
