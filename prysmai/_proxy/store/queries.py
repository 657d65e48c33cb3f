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
``rollup_hist_hour`` for the whole hours around them; on an engine that keeps them, the whole
quarter hours around those from the rollups by quarter hour -- and the ``traces`` table for the
partial periods at its edges, when the filter only names time, project, model, endpoint and status
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
import dataclasses
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime

from ..asgi import Query
from .engine import dialect_of
from .rollups import (
    ALL_HIST,
    ALL_HIST_DIMS,
    ALL_TOTALS,
    BUCKETS_PER_E,
    ERRORS_SQL,
    EVERY_HIST_LEVEL,
    EVERY_PROJECT,
    EVERY_TOTALS_LEVEL,
    HIST_LEVELS,
    HOUR_DIMS,
    KEY_ALL_ROLLUPS,
    KEY_HOUR_PERIOD,
    KEY_HOUR_ROLLUPS,
    KEY_PERIOD,
    KEY_ROLLUPS,
    METRICS,
    NO_USAGE_SQL,
    QUARTER_HIST,
    QUARTER_TOTALS,
    SCORED_COUNTS,
    SCORED_HIST,
    SCORED_TOTALS,
    TOTALS_LEVELS,
    UNPRICED_SQL,
    bucket_bounds,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, TypeVar

    from .engine import Connection, Dialect

    T = TypeVar("T")

STATUSES = ("success", "error", "timeout", "cancelled")
#: The histograms the rollups keep (``latency``, ``ttft``); a read may ask for some only.
HIST_METRICS = tuple(metric for metric, _ in METRICS)


class ParamError(ValueError):
    """A query parameter that cannot be used; ``param`` names it (as the read API and the CLI
    call it), the message says what is expected."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


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
    "prompt_preview",
    "answer_preview",
)
_SUMMARY = ", ".join(SUMMARY_COLUMNS)
_HOUR = 3600
#: Per-row counts: an error (error, timeout), a cancelled request, a cost unknown for want of a
#: price (usage was reported), no usage reported (the conditions of :mod:`.rollups`).
_ERR = f"CASE WHEN {ERRORS_SQL} THEN 1 ELSE 0 END"
_CANCELLED = "CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END"
_UNPRICED = f"CASE WHEN {UNPRICED_SQL} THEN 1 ELSE 0 END"
_NO_USAGE = f"CASE WHEN {NO_USAGE_SQL} THEN 1 ELSE 0 END"
#: A group's totals over ``traces`` rows, in :meth:`_Agg.add_totals`' order.
_RAW_TOTALS = (
    f"count(*), sum({_ERR}), sum({_CANCELLED}), sum(prompt_tokens), sum(completion_tokens), "
    f"sum(total_tokens), sum(cost_usd), sum({_UNPRICED}), sum({_NO_USAGE})"
)
#: The same over ``rollup_hour`` rows.
_HOUR_TOTALS = (
    f"sum(requests), sum(CASE WHEN {ERRORS_SQL} THEN requests ELSE 0 END), "
    "sum(CASE WHEN status = 'cancelled' THEN requests ELSE 0 END), sum(prompt_tokens), sum(completion_tokens), "
    "sum(total_tokens), sum(cost_usd), sum(unpriced), sum(no_usage)"
)


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
_BAD_META_KEY = re.compile('["\\\\\x00-\x1f\x7f-\x9f]')


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
    except (ValueError, OverflowError, OSError):  # not a date, or one the platform cannot place in time
        raise ParamError(
            name,
            f"{name}: expected unix seconds, a time ago like 15m, 1h, 7d, or an ISO date/time "
            f"like 2025-01-31T12:00, not {value!r}",
        ) from None


@dataclass(frozen=True)
class TraceFilter:
    """Which traces a query covers; every field ``None`` (or empty) = all. ``since`` is inclusive,
    ``until`` exclusive (unix seconds); ``model``, ``user_id``... are exact; ``model_prefix`` and
    ``user_prefix`` match the start of the model or user id, ignoring the case of ASCII letters;
    ``meta`` holds ``(key, value)`` pairs, each matching one metadata member (compared as text),
    all of which must match; ``text`` is searched for in the request and response bodies (see
    :meth:`~.engine.Dialect.text_search`); ``project`` is one project's traces only."""

    since: float | None = None
    until: float | None = None
    model: str | None = None
    endpoint: str | None = None
    status: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    key_id: str | None = None
    meta: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    project: str | None = None
    model_prefix: str | None = None
    user_prefix: str | None = None
    score: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    provider: str | None = None
    stream: bool | None = None
    http_status: int | None = None
    cost_min: float | None = None
    cost_max: float | None = None
    latency_min: float | None = None
    latency_max: float | None = None
    ttft_min: float | None = None
    ttft_max: float | None = None
    tokens_min: float | None = None
    tokens_max: float | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ParamError("status", f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        for key, value in self.meta:
            # Each key becomes a JSON path: a quote, a backslash or a control character (NUL above
            # all) would end or break it.
            if not key or _BAD_META_KEY.search(key):
                raise ParamError("meta", 'metadata key must be non-empty, without ", \\ or control characters')
            if not isinstance(value, str):
                raise ParamError("meta", "a metadata filter needs both a key and a value (meta=key=value)")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ParamError(name, f"{name} must be a finite time")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ParamError("since", "since must not be later than until")
        for name in ("score_min", "score_max"):
            value = getattr(self, name)
            if value is not None and self.score is None:
                raise ParamError(name, f"{name} needs a score name to apply to (score=helpful&{name}=...)")
            if value is not None and not math.isfinite(value):
                raise ParamError(name, f"{name} must be a finite number")
        if self.score_min is not None and self.score_max is not None and self.score_min > self.score_max:
            raise ParamError("score_min", "score_min must not be larger than score_max")
        for name in RANGES:
            low, high = getattr(self, name + "_min"), getattr(self, name + "_max")
            for bound, value in ((name + "_min", low), (name + "_max", high)):
                if value is not None and (not math.isfinite(value) or value < 0):
                    raise ParamError(bound, f"{bound} must be a number of at least 0, not {value!r}")
            if low is not None and high is not None and low > high:
                raise ParamError(name + "_min", f"{name}_min must not be larger than {name}_max")
        if self.http_status is not None and not 100 <= self.http_status <= 599:
            raise ParamError(
                "http_status", f"http_status must be an HTTP status from 100 to 599, not {self.http_status!r}"
            )

    @classmethod
    def from_query(cls, query: Mapping[str, str], now: float | None = None) -> TraceFilter:
        """From a query string: ``project``, ``since``, ``until`` (unix seconds, ``15m``/``1h``/``7d``
        ago, or ISO), ``model``, ``endpoint``, ``status``, ``user``, ``session``, ``key``,
        ``meta=key=value`` (repeatable: every condition must hold), ``q`` (text in bodies),
        ``model~`` and ``user~`` (a prefix, any case: ``user~=ali``), ``provider``, ``stream``
        (true/false), ``http_status``, and the ranges of :data:`RANGES` (``cost_min``,
        ``latency_max``...). Empty values and other
        names are ignored; a bad value raises ``ValueError`` saying what is expected. A
        :class:`~..asgi.Query` gives every ``meta``; a plain mapping its one."""

        def get(name: str) -> str | None:
            value = query.get(name)
            return value if value else None

        now = time.time() if now is None else now
        since, until = get("since"), get("until")
        metas = query.getall("meta") if isinstance(query, Query) else [m for m in [get("meta")] if m]
        meta = []
        for m in metas:
            key, sep, value = m.partition("=")
            if not sep or not key:
                raise ParamError("meta", f"meta: expected key=value, not {m!r}")
            meta.append((key, value))
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
            meta=tuple(meta),
            text=get("q"),
            model_prefix=get("model~"),
            user_prefix=get("user~"),
            score=get("score"),
            score_min=_score_bound("score_min", get("score_min")),
            score_max=_score_bound("score_max", get("score_max")),
            provider=get("provider"),
            stream=_flag("stream", get("stream")),
            http_status=_whole("http_status", get("http_status")),
            **{bound: _range_bound(bound, get(bound)) for name in RANGES for bound in (name + "_min", name + "_max")},
        )

    @property
    def keys_rollup_ok(self) -> bool:
        """Whether the per-day user and session rollups can answer this filter (they keep the
        project only)."""
        return self.rollup_ok and self.model is None and self.endpoint is None and self.status is None

    @property
    def rollup_ok(self) -> bool:
        """Whether the hourly rollups can answer this filter (they keep project, model, endpoint,
        status)."""
        return (
            self.user_id is None
            and self.session_id is None
            and self.key_id is None
            and not self.meta
            and self.text is None
            and self.model_prefix is None
            and self.user_prefix is None
            and self.score is None
            and self.provider is None
            and self.stream is None
            and self.http_status is None
            and all(getattr(self, n + "_min") is None and getattr(self, n + "_max") is None for n in RANGES)
        )


#: The range filters (``NAME_min``/``NAME_max``, inclusive) -> the column they bound: cost in USD,
#: latency and TTFT in ms, total tokens. A trace without a value (unknown cost, no TTFT) is not in
#: any range.
RANGES = {"cost": "cost_usd", "latency": "latency_ms", "ttft": "ttft_ms", "tokens": "total_tokens"}


def _range_bound(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ParamError(name, f"{name} must be a number of at least 0, not {value!r}") from None


def _flag(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ParamError(name, f"{name} must be true or false, not {value!r}")


def _whole(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.strip().isascii() and value.strip().isdigit()):  # ("²" is a digit to isdigit)
        raise ParamError(name, f"{name} must be a whole number, not {value!r}")
    return int(value)


def _score_bound(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ParamError(name, f"{name} must be a number (a boolean score is 1 or 0), not {value!r}") from None


def _conditions(
    conn: Connection,
    f: TraceFilter,
    since: float | None = None,
    until: float | None = None,
    *,
    times: bool = True,
    seek: bool = False,
    unindexed: frozenset[str] = frozenset(),
    score_probe: bool = False,
) -> tuple[list[str], list[Any]]:
    """WHERE clauses on ``traces`` for ``f``; ``since``/``until`` override the filter's range.
    The project is matched through ``traces_project`` only with ``seek``: otherwise SQLite would
    take that index for any query naming a project (an equality on its first column), and read
    every row of a large project for what a covering index answers. A score filter is the set of
    the scored traces' ids, or with ``score_probe`` a look-up of each row's scores (for a walk
    through traces in time order that meets a scored trace every few rows)."""
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
    for column in ("model", "endpoint", "status", "user_id", "session_id", "key_id", "provider", "http_status"):
        value = getattr(f, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if f.stream is not None:
        clauses.append("stream = ?")
        params.append(1 if f.stream else 0)
    for name, column in RANGES.items():
        # (``unindexed``: range columns the planner must not read through their index.)
        ranged = dialect_of(conn).unindexed(column) if column in unindexed else column
        for bound, op in ((getattr(f, name + "_min"), ">="), (getattr(f, name + "_max"), "<=")):
            if bound is not None:
                clauses.append(f"{ranged} {op} ?")
                params.append(bound)
    dialect = dialect_of(conn)
    for column, prefix in (("model", f.model_prefix), ("user_id", f.user_prefix)):
        if prefix is not None:
            sql, more = dialect.starts_with(column, prefix)
            clauses.append(sql)
            params += more
    for key, value in f.meta:
        sql, more = dialect.meta_equals(key, value)
        clauses.append(sql)
        params += more
    if f.text is not None:
        sql, more = dialect.text_search(conn, f.text)
        clauses.append(sql)
        params += more
    if f.score is not None:  # traces with a score of that name (in that range): see .scores
        sql = "SELECT trace_id FROM scores WHERE name = ?"
        if score_probe:
            sql = "SELECT 1 FROM scores WHERE scores.trace_id = traces.id AND name = ?"
        params.append(f.score)
        if f.project is not None:
            sql += " AND score_project = ?"
            params.append(f.project)
        for bound, op in ((f.score_min, ">="), (f.score_max, "<=")):
            if bound is not None:
                sql += f" AND num {op} ?"
                params.append(bound)
        if not score_probe and times and since is not None and _short(since, until):
            # A short range's scored traces are the scores of that range, read through the scores'
            # time-first index (a score keeps its trace's time): not every score of the name.
            sql = sql.replace("name = ?", f"{dialect.unindexed('name')} = ?", 1)
            sql += " AND trace_time >= ?"
            params.append(since)
            if until is not None:
                sql += " AND trace_time < ?"
                params.append(until)
        clauses.append(f"EXISTS ({sql})" if score_probe else f"id IN ({sql})")
    return clauses, params


#: The longest range whose score filter reads the scores of the range (see :func:`_conditions`).
SHORT_RANGE = 2 * 86400


def _short(since: float, until: float | None) -> bool:
    return (time.time() if until is None else until) - since <= SHORT_RANGE


def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


# -- histogram aggregation ----------------------------------------------------------------------
class _Agg:
    """Totals and latency/TTFT histograms of one group (a time bucket, a model, everything)."""

    __slots__ = (
        "cancelled",
        "completion",
        "cost",
        "errors",
        "hist",
        "no_usage",
        "prompt",
        "requests",
        "sampled",
        "total",
        "unpriced",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.cancelled = self.prompt = self.completion = self.total = 0
        self.unpriced = self.no_usage = 0
        self.cost = 0.0
        # metric -> bucket -> [count, min, max]
        self.hist: dict[str, dict[int, list[float]]] = {"latency": {}, "ttft": {}}
        # The latency p50 and p95 of a sample of the rows, when the percentiles come from one.
        self.sampled: tuple[float | None, float | None] | None = None

    def add_totals(
        self,
        requests: int,
        errors: Any,
        cancelled: Any,
        prompt: Any,
        completion: Any,
        total: Any,
        cost: Any,
        unpriced: Any,
        no_usage: Any,
    ) -> None:
        self.requests += requests
        self.errors += errors or 0
        self.cancelled += cancelled or 0
        self.prompt += prompt or 0
        self.completion += completion or 0
        self.total += total or 0
        self.cost += cost or 0.0
        self.unpriced += unpriced or 0
        self.no_usage += no_usage or 0

    @property
    def priced(self) -> int:
        return self.requests - self.unpriced - self.no_usage

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


def _nearest_rank(ordered: list[float], pct: float) -> float | None:
    """The nearest-rank percentile of sorted values (``None`` for none)."""
    if not ordered:
        return None
    return float(ordered[max(1, math.ceil(len(ordered) * pct / 100 - 1e-9)) - 1])


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
    """How one aggregate groups rows, in SQL over each source: ``raw`` over ``traces``, ``totals``
    over each totals rollup, ``hist`` over each histogram rollup (``None``: that source cannot); each
    is ``n`` comma-separated expressions (a key of ``n`` > 1 is a tuple). ``columns``: the
    columns grouped by, when the grouping is by columns alone (the all-time rollups can answer it
    then), ``None`` when it is by time."""

    raw: str
    totals: dict[str, str | None]
    hist: dict[str, str | None]
    n: int = 1
    columns: tuple[str, ...] | None = None


_CONSTANT = _Grouping("0", dict.fromkeys(EVERY_TOTALS_LEVEL, "0"), dict.fromkeys(EVERY_HIST_LEVEL, "0"), columns=())
#: The histograms a time series reads: its buckets show latency percentiles and no TTFT, so the
#: histogram rollups' TTFT rows (those of every streamed group) are neither read nor sorted.
SERIES_METRICS = ("latency",)


def _by_column(column: str) -> _Grouping:
    return _by_columns((column,))


def _by_columns(columns: tuple[str, ...]) -> _Grouping:
    """Grouped by several of the rollups' dimensions at once (one read for several breakdowns)."""
    hist = {t: ", ".join(columns) if set(columns) <= set(dims) else None for t, (_, dims) in EVERY_HIST_LEVEL.items()}
    totals: dict[str, str | None] = dict.fromkeys(EVERY_TOTALS_LEVEL, ", ".join(columns))
    return _Grouping(", ".join(columns), totals, hist, len(columns), columns)


def _key(row: Any, n: int) -> Any:
    return row[0] if n == 1 else tuple(row[:n])


def _positions_of(values: list[Any]) -> str:
    """As many placeholders as ``values``, comma-separated."""
    return ", ".join("?" for _ in values)


def _positions(n: int) -> str:
    return ", ".join(str(i + 1) for i in range(n))


def _by_time(dialect: Dialect, width: int) -> _Grouping:
    def per(seconds: int, column: str) -> str | None:
        return dialect.period(column, width) if width % seconds == 0 else None

    return _Grouping(
        dialect.period("created_at", width),
        {t: per(seconds, column) for t, (seconds, column) in EVERY_TOTALS_LEVEL.items()},
        {t: per(seconds, "period") for t, (seconds, _) in EVERY_HIST_LEVEL.items()},
    )


def _agg(aggs: dict[Any, _Agg], g: Any) -> _Agg:
    agg = aggs.get(g)
    if agg is None:
        agg = aggs[g] = _Agg()
    return agg


def _raw_totals_sql(
    conn: Connection, f: TraceFilter, g: str, lo: float | None, hi: float | None, seek: bool, n: int
) -> tuple[str, list[Any]]:
    """The statement of a group's totals over the ``traces`` rows of ``[lo, hi)``."""
    clauses, params = _conditions(conn, f, lo, hi, seek=seek)
    table = _traces(conn, dataclasses.replace(f, since=lo), seek)
    return f"SELECT {g}, {_RAW_TOTALS} FROM {table}{_where(clauses)} GROUP BY {_positions(n)}", params


def _raw_hist_sql(
    conn: Connection,
    f: TraceFilter,
    g: str,
    lo: float | None,
    hi: float | None,
    seek: bool,
    n: int,
    metrics: tuple[str, ...],
) -> list[tuple[str, list[Any]]]:
    """The statements of a group's histograms (one a metric) over the ``traces`` rows of
    ``[lo, hi)``, each row as a histogram rollup's: key, metric, bucket, count, min, max."""
    clauses, params = _conditions(conn, f, lo, hi, seek=seek)
    # A range's rows through the index that starts with time: grouped by a column, SQLite would
    # otherwise walk that column's index (the project's, say) whole to skip a sort.
    table = _traces(conn, dataclasses.replace(f, since=lo), seek)
    out = []
    # A trace without the metric (no TTFT) counts nothing (``count(column)``; min and max skip it)
    # in whatever bucket its NULL falls. No ``IS NOT NULL`` condition: on PostgreSQL it made the
    # planner AND the day's whole TTFT index into the edge's scan (150 000 entries at 10 M traces
    # for an hour's 16 000 rows), where the rows of the range are read through the time index.
    where = _where(clauses)
    groups = ", ".join([*(str(i + 1) for i in range(n)), str(n + 2)])
    for metric, column in METRICS:
        if metric in metrics:
            cells = f"'{metric}', {dialect_of(conn).bucket(column)}, count({column}), min({column}), max({column})"
            out.append((f"SELECT {g}, {cells} FROM {table}{where} GROUP BY {groups}", params))
    return out


def _add_totals(aggs: dict[Any, _Agg], rows: Iterable[Any], n: int) -> None:
    """Add rows of a key (``n`` columns) and the totals of :meth:`_Agg.add_totals` to ``aggs``."""
    for row in rows:
        if row[n]:
            _agg(aggs, _key(row, n)).add_totals(*row[n:])


def _add_hists(aggs: dict[Any, _Agg], rows: Iterable[Any], n: int) -> None:
    """Add rows of a key (``n`` columns), metric, bucket, count, min and max to ``aggs``."""
    for row in rows:
        metric, bucket, count, lo_ms, hi_ms = row[n:]
        if count:
            _agg(aggs, _key(row, n)).add_hist(metric, bucket, count, lo_ms, hi_ms)


def _rollup_filters(f: TraceFilter, dims: Iterable[str]) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in dims:
        value = getattr(f, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return clauses, params


def _rollup_totals_sql(f: TraceFilter, g: str, table: str, lo: int | None, hi: int, n: int) -> tuple[str, list[Any]]:
    """The statement of a group's totals over the totals rollup ``table``'s periods in ``[lo, hi)``."""
    column = EVERY_TOTALS_LEVEL[table][1]
    clauses, params = _rollup_filters(f, HOUR_DIMS)
    clauses.append(f"{column} < ?")
    params.append(hi)
    if lo is not None:
        clauses.append(f"{column} >= ?")
        params.append(lo)
    return _totals_sql(g, table, clauses, n), params


def _totals_levels(conn: Connection) -> dict[str, tuple[int, str]]:
    """The totals rollups the store of ``conn`` keeps, the longest period first."""
    return {**TOTALS_LEVELS, **(QUARTER_TOTALS if dialect_of(conn).quarter_hours() else {})}


def _hist_levels(conn: Connection) -> dict[str, tuple[int, tuple[str, ...]]]:
    """The histogram rollups the store of ``conn`` keeps."""
    return {**HIST_LEVELS, **(QUARTER_HIST if dialect_of(conn).quarter_hours() else {})}


def _totals_sql(g: str, table: str, clauses: list[str], n: int) -> str:
    return f"SELECT {g}, {_HOUR_TOTALS} FROM {table}{_where(clauses)} GROUP BY {_positions(n)}"


def _rollup_hist_sql(
    conn: Connection,
    f: TraceFilter,
    g: str,
    table: str,
    lo: int | None,
    hi: int,
    n: int,
    metrics: tuple[str, ...],
) -> tuple[str, list[Any]]:
    """The statement of a group's histograms over the histogram rollup ``table``'s periods in
    ``[lo, hi)``."""
    clauses, params = _rollup_filters(f, EVERY_HIST_LEVEL[table][1])
    clauses.append("period < ?")
    params.append(hi)
    if lo is not None:
        clauses.append("period >= ?")
        params.append(lo)
    return _hists_sql(conn, g, table, clauses, params, n, metrics)


def _hists_sql(
    conn: Connection,
    g: str,
    table: str,
    clauses: list[str],
    params: list[Any],
    n: int,
    metrics: tuple[str, ...] = HIST_METRICS,
) -> tuple[str, list[Any]]:
    """The statement of the histograms of the rollup ``table``'s rows matching ``clauses``, grouped
    by ``g``; ``metrics``: only those metrics' histograms (a histogram rollup holds one row per
    metric, so each one left out is rows neither read nor sorted)."""
    if metrics != HIST_METRICS:
        clauses = [*clauses, f"metric IN ({_positions_of(list(metrics))})"]
        params = [*params, *metrics]
    sql = (
        f"SELECT {g}, metric, bucket, {dialect_of(conn).count_sum('n')}, min(min_ms), max(max_ms) "
        f"FROM {table}{_where(clauses)} "
        f"GROUP BY {_positions(n + 2)}"
    )
    return sql, params


class _Tiers:
    """The statements of one aggregate's tiers (rollups over whole periods, rows at the range's
    edges), read as one statement for the totals and one for the histograms: the database adds
    the tiers' groups up, so a group is one row to load and add in Python, not one a tier.

    ``each``: the names of the ``n`` key columns, to group by each of them alone and by none
    instead of by all of them at once (``aggs`` is then keyed by ``(name, value)``, and
    ``("", None)`` for every trace): the breakdowns of one read, added up by the database."""

    def __init__(self, conn: Connection, aggs: dict[Any, _Agg], n: int, each: tuple[str, ...] | None = None) -> None:
        self.conn = conn
        self.aggs = aggs
        self.n = n
        self.each = each
        self.totals: list[tuple[str, list[Any]]] = []
        self.hists: list[tuple[str, list[Any]]] = []

    def read(self) -> None:
        # (Rows fetched at once: psycopg loads a result's rows in one call, not one call a row.)
        n = self.n if self.each is None else 2
        if self.totals:
            sums = ("requests", "errors", "cancelled", "prompt", "completion", "total", "cost", "unpriced", "no_usage")
            sql, params = self._union(self.totals, [], [f"sum({c})" for c in sums], sums)
            _add_totals(self.aggs, self.conn.execute(sql, params).fetchall(), n)
        if self.hists:
            added = [dialect_of(self.conn).count_sum("c"), "min(lo)", "max(hi)"]
            sql, params = self._union(self.hists, ["metric", "bucket"], added, ("c", "lo", "hi"))
            _add_hists(self.aggs, self.conn.execute(sql, params).fetchall(), n)
        self.totals, self.hists = [], []

    def _union(
        self, parts: list[tuple[str, list[Any]]], extra: list[str], sums: list[str], columns: tuple[str, ...]
    ) -> tuple[str, list[Any]]:
        keys = [f"k{i}" for i in range(self.n)]
        if self.each is None:
            if len(parts) == 1:
                return parts[0]
            groups = [(keys, keys)]
        else:
            groups = [([f"'{name}'", key], [key]) for name, key in zip(self.each, keys)]
            groups.append((["''", "NULL"], []))
        names = ", ".join([*keys, *extra, *columns])
        union = " UNION ALL ".join(sql for sql, _ in parts)
        sql = f"WITH parts({names}) AS ({union})"
        source = "parts"
        if self.each is not None:
            # The tiers' rows added up by every key first: each grouping then reads a group a row.
            merged = ", ".join(f"{total} AS {column}" for total, column in zip(sums, columns))
            every = ", ".join([*keys, *extra])
            sql += f", merged AS (SELECT {every}, {merged} FROM parts GROUP BY {every})"
            source = "merged"
        selects = []
        for shown, by in groups:
            grouped = ", ".join([*by, *extra])
            columns_of = ", ".join([*shown, *extra, *sums])
            selects.append(f"SELECT {columns_of} FROM {source}" + (f" GROUP BY {grouped}" if grouped else ""))
        return f"{sql} {' UNION ALL '.join(selects)}", [p for _, params in parts for p in params]


def _tiered(
    lo: float | None,
    hi: float | None,
    now: float,
    tiers: list[tuple[int, Callable[[int | None, int], None]]],
    raw: Callable[[float | None, float | None], None],
) -> None:
    """Cover ``[lo, hi)`` with the coarsest tier's whole periods, the rest with finer tiers, and
    what no tier covers whole with ``raw`` (``None`` = open end). An empty range reads nothing."""
    if lo is not None and hi is not None and lo >= hi:
        return
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


def _collect(
    conn: Connection,
    f: TraceFilter,
    grouping: _Grouping,
    now: float | None = None,
    *,
    metrics: tuple[str, ...] = HIST_METRICS,
    each: bool = False,
) -> dict[Any, _Agg]:
    """Totals and histograms of ``f``'s traces by group: whole periods from the rollups that can
    answer the filter and the grouping, the partial periods at the edges from ``traces``;
    ``metrics``: the histograms read (:data:`SERIES_METRICS` for a time series). ``each``, for a
    grouping by columns: by each column alone and by none (see :class:`_Tiers`)."""
    now = time.time() if now is None else now
    aggs: dict[Any, _Agg] = {}
    g = grouping
    # The rollups answer whole periods: rows are read for the edges only, through traces_agg,
    # unless the filter needs them all (then a small project's are found through its index).
    seek = not f.rollup_ok and _small_project(conn, f)
    tiers = _Tiers(conn, aggs, g.n, g.columns if each else None)

    def raw_totals(lo: float | None, hi: float | None) -> None:
        tiers.totals.append(_raw_totals_sql(conn, f, g.raw, lo, hi, seek, g.n))

    def raw_hist(lo: float | None, hi: float | None) -> None:
        tiers.hists.extend(_raw_hist_sql(conn, f, g.raw, lo, hi, seek, g.n, metrics))

    # All time, grouped by columns the all-time rollups keep: they alone answer it.
    every = f.rollup_ok and f.since is None and f.until is None and g.columns is not None
    if every and g.columns is not None and set(g.columns) <= set(HOUR_DIMS):
        _all_time(conn, tiers, f, g.columns, ALL_TOTALS, HOUR_DIMS)
    else:
        _tiered(f.since, f.until, now, _totals_tiers(conn, f, g, tiers), raw_totals)

    if every and g.columns is not None and f.status is None and set(g.columns) <= set(ALL_HIST_DIMS):
        _all_time(conn, tiers, f, g.columns, ALL_HIST, ALL_HIST_DIMS, metrics)
        tiers.read()
        return aggs
    hists: list[tuple[int, Callable[[int | None, int], None]]] = []

    def rollup_hist(table: str, group: str, lo: int | None, hi: int) -> None:
        tiers.hists.append(_rollup_hist_sql(conn, f, group, table, lo, hi, g.n, metrics))

    # The coarsest period first and, of two with the same period, the one with fewer rows (fewer
    # dimensions) that can answer.
    for table, (seconds, dims) in sorted(_hist_levels(conn).items(), key=lambda kv: (-kv[1][0], len(kv[1][1]))):
        group = g.hist.get(table)
        # A histogram rollup keeps no status, and only its own dimensions.
        unkept = [d for d in HOUR_DIMS if d != "status" and d not in dims]
        if (
            group is not None
            and f.rollup_ok
            and f.status is None
            and all(getattr(f, d) is None for d in unkept)
            and all(seconds != s for s, _ in hists)
        ):
            hists.append((seconds, functools.partial(rollup_hist, table, group)))
    _tiered(f.since, f.until, now, hists, raw_hist)
    tiers.read()
    return aggs


def _totals_tiers(
    conn: Connection, f: TraceFilter, g: _Grouping, tiers: _Tiers
) -> list[tuple[int, Callable[[int | None, int], None]]]:
    """The totals rollups that can answer ``f`` grouped by ``g``, as :func:`_tiered`'s tiers
    (the longest period first) adding their statements to ``tiers``: none when the filter needs
    the rows."""

    def read(table: str, group: str, lo: int | None, hi: int) -> None:
        tiers.totals.append(_rollup_totals_sql(f, group, table, lo, hi, g.n))

    out: list[tuple[int, Callable[[int | None, int], None]]] = []
    for table, (seconds, _) in _totals_levels(conn).items():
        group = g.totals.get(table)
        if f.rollup_ok and group is not None:
            out.append((seconds, functools.partial(read, table, group)))
    return out


def _all_time(
    conn: Connection,
    tiers: _Tiers,
    f: TraceFilter,
    columns: tuple[str, ...],
    table: str,
    dims: tuple[str, ...],
    metrics: tuple[str, ...] = HIST_METRICS,
) -> None:
    """Totals (``rollup_all``) or histograms (``rollup_hist_all``, of ``metrics``) of every trace
    of ``f``, grouped by ``columns``: the all-time rollups, with no edges to read."""
    clauses, params = _rollup_filters(f, dims)
    n = max(1, len(columns))
    g = ", ".join(columns) or "0"
    if table == ALL_TOTALS:
        tiers.totals.append((_totals_sql(g, table, clauses, n), params))
    else:
        tiers.hists.append(_hists_sql(conn, g, table, clauses, params, n, metrics))


def _merge(aggs: Iterable[_Agg]) -> _Agg:
    """``aggs`` added up into a new aggregate."""
    out = _Agg()
    for a in aggs:
        out.add_totals(
            a.requests, a.errors, a.cancelled, a.prompt, a.completion, a.total, a.cost, a.unpriced, a.no_usage
        )
        for metric, hist in a.hist.items():
            for b, (n, lo, hi) in hist.items():
                out.add_hist(metric, b, int(n), lo, hi)
    return out


def _merged_by(groups: Iterable[tuple[Any, _Agg]]) -> dict[Any, _Agg]:
    """The aggregates of ``groups`` (key, aggregate) added up by key, each key's once (adding
    them up one at a time would copy the sum so far at each step); a key of one group keeps its
    aggregate as it is."""
    parts: dict[Any, list[_Agg]] = {}
    for key, agg in groups:
        parts.setdefault(key, []).append(agg)
    return {key: aggs[0] if len(aggs) == 1 else _merge(aggs) for key, aggs in parts.items()}


# -- aggregates ---------------------------------------------------------------------------------
def overview(conn: Connection, f: TraceFilter) -> dict[str, Any]:
    """Totals over ``f``: requests, errors (error and timeout), cancelled, tokens, cost (``None``
    when no request was priced; ``unpriced`` counts the requests of unpriced models that are not in
    it, ``no_usage`` those that reported no usage), latency and TTFT percentiles (ms)."""
    return _overview_of(_merge(_collect(conn, f, _CONSTANT).values()))


def _overview_of(agg: _Agg) -> dict[str, Any]:
    p50, p95, p99 = agg.percentiles("latency", (50, 95, 99))
    t50, t95 = agg.percentiles("ttft", (50, 95))
    return {
        "requests": agg.requests,
        "errors": agg.errors,
        "error_rate": agg.errors / agg.requests if agg.requests else None,
        "cancelled": agg.cancelled,
        "prompt_tokens": agg.prompt,
        "completion_tokens": agg.completion,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced": agg.unpriced,
        "no_usage": agg.no_usage,
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
    cancelled, cost, unpriced, no_usage, latency percentiles. Every bucket from ``since`` to ``until`` (or now) is
    present, empty ones with zero counts and ``None`` percentiles."""
    width = _check_width(bucket_seconds)
    now = time.time()
    end = now if f.until is None else f.until
    if f.since is not None and (end - f.since) / width > MAX_BUCKETS:
        raise ValueError(f"a {width} s bucket gives more than {MAX_BUCKETS} buckets over this range; widen it")
    return _series(_collect(conn, f, _by_time(dialect_of(conn), width), now, metrics=SERIES_METRICS), f, width, now)


def _check_width(bucket_seconds: Any) -> int:
    width = int(bucket_seconds)
    if width != bucket_seconds or width < 1:
        raise ValueError(f"bucket_seconds must be a whole number of seconds >= 1, not {bucket_seconds!r}")
    return width


def _series(aggs: dict[Any, _Agg], f: TraceFilter, width: int, now: float) -> list[dict[str, Any]]:
    """The time series of :func:`timeseries` from ``aggs`` (keyed by bucket number)."""
    end = now if f.until is None else f.until
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
                    "cancelled": 0,
                    "cost_usd": 0.0,
                    "unpriced": 0,
                    "no_usage": 0,
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
                "cancelled": agg.cancelled,
                "cost_usd": agg.cost_usd,
                "unpriced": agg.unpriced,
                "no_usage": agg.no_usage,
                "latency_p50": p50,
                "latency_p95": p95,
                "latency_p99": p99,
            }
        )
    return out


def _breakdown_row(key: Any, agg: _Agg) -> dict[str, Any]:
    if agg.sampled is not None:
        p50, p95 = agg.sampled
    else:
        p50, p95 = agg.percentiles("latency", (50, 95))
    return {
        "key": key,
        "requests": agg.requests,
        "errors": agg.errors,
        "cancelled": agg.cancelled,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced": agg.unpriced,
        "no_usage": agg.no_usage,
        "latency_p50": p50,
        "latency_p95": p95,
    }


def breakdown(conn: Connection, f: TraceFilter, by: str, limit: int = 20) -> list[dict[str, Any]]:
    """The ``limit`` most requested values of ``by`` (project, model, endpoint, user_id,
    session_id) with their totals and latency p50/p95; ``key`` is ``None`` for traces without one."""
    if by not in BREAKDOWNS:
        raise ValueError(f"breakdown by must be one of {', '.join(BREAKDOWNS)}, not {by!r}")
    limit = _check_limit(limit)
    if by in ROLLUP_BREAKDOWNS:
        return _rollup_breakdowns(conn, f, (by,), limit)[by]
    # Users and sessions: the top keys by count from the per-day rollups (and the range's partial
    # days) when the filter allows, else through a covering index; then the latency
    # histograms of those keys only, through the key's own index.
    seek = _small_project(conn, f)
    clauses, params = _conditions(conn, f, seek=seek)
    order = "ORDER BY requests DESC, k IS NULL, k LIMIT ?"
    if _keys_all_time(f, times=False):
        source, source_params = _key_groups(conn, f, by, seek, times=False, top=limit)
        found = conn.execute(f"{source} {order}", [*source_params, limit]).fetchall()
    elif (candidates := _key_candidates(conn, f, by, limit)) is not None:
        # The candidates' totals (a few keys, sought), and the top of them as the ranking orders.
        source, source_params = _key_groups(conn, f, by, seek, times=False, keys=candidates) if candidates else ("", [])
        sought = conn.execute(source, source_params).fetchall() if candidates else []
        found = sorted(sought, key=lambda row: (-row[1], row[0] is None, row[0] or ""))[:limit]
    else:
        # Over a range, the keys' requests alone are added up to find the top keys (the other
        # totals would cost as much again, for every key), then the totals of those keys only.
        source, source_params = _key_groups(conn, f, by, seek, times=False, columns=("requests",))
        top = [key for key, _requests in conn.execute(f"{source} {order}", [*source_params, limit])]
        source, source_params = _key_groups(conn, f, by, seek, times=False, keys=top) if top else ("", [])
        rows = {row[0]: row for row in conn.execute(source, source_params)} if top else {}
        found = [rows[key] for key in top]
    aggs = {}
    for key, *totals, _first, _last in found:
        agg = aggs[key] = _Agg()
        agg.add_totals(totals[0], totals[1], totals[2], 0, 0, *totals[3:])
    _sample_percentiles(conn, f, by, seek, clauses, params, list(aggs.values()), list(aggs))
    return [_breakdown_row(k, a) for k, a in aggs.items()]


#: The most keys :func:`_key_candidates` names; with more, the range is ranked whole.
KEY_CANDIDATES = 100
_FLOAT_REQUESTS = "CAST(requests AS DOUBLE PRECISION)"


def _key_candidates(conn: Connection, f: TraceFilter, column: str, limit: int) -> list[Any] | None:
    """The keys of ``column`` (user_id, session_id) that may be among the ``limit`` most
    requested in ``f``'s range, found from the per-day rollup alone: a key's requests on the whole
    days inside the range are at most its requests in the range, and on every day the range
    touches at least them, so a key whose requests on those days are fewer than the ``limit``-th
    largest on the whole days cannot be among them. A range's partial days are then never
    grouped key by key (at 10 M traces, their hourly rows are tens of thousands): the few keys
    left are sought. ``None`` (rank the range whole) where the engine keeps no hourly per-key
    rollup (SQLite reads a partial day through a covering index, and meets its targets), for a
    filter the rollups cannot answer, or when more than :data:`KEY_CANDIDATES` keys are left."""
    if not (f.keys_rollup_ok and f.since is not None and dialect_of(conn).hourly_keys()):
        return None
    clauses, params = _rollup_filters(f, ("project",))
    clauses.append("period >= ?")
    params.append(math.floor(f.since / KEY_PERIOD) * KEY_PERIOD)
    inside: list[str] = ["period >= ?"]
    inside_params: list[Any] = [math.ceil(f.since / KEY_PERIOD) * KEY_PERIOD]
    if f.until is not None:
        # Whole numbers, as the periods are: the days that start before the end, and those that
        # end by it.
        clauses.append("period < ?")
        params.append(math.ceil(f.until / KEY_PERIOD) * KEY_PERIOD)
        inside.append("period < ?")
        inside_params.append(math.floor(f.until / KEY_PERIOD) * KEY_PERIOD)
    # Added up as floats (exact for whole numbers below 2 ** 53): PostgreSQL adds bigints up as
    # numerics, several times slower, for every key of the range.
    bounds = (
        f"SELECT NULLIF({column}, '') AS k, sum(CASE WHEN {' AND '.join(inside)} THEN {_FLOAT_REQUESTS} ELSE 0 END) "
        f"AS least, sum({_FLOAT_REQUESTS}) AS most FROM {KEY_ROLLUPS[column]}{_where(clauses)} GROUP BY {column}"
    )
    sql = (
        f"WITH bounds AS MATERIALIZED ({bounds}) SELECT k FROM bounds WHERE most > 0 AND most >= "
        "coalesce((SELECT least FROM bounds ORDER BY least DESC LIMIT 1 OFFSET ?), 0) LIMIT ?"
    )
    found = [row[0] for row in conn.execute(sql, [*inside_params, *params, limit - 1, KEY_CANDIDATES + 1]).fetchall()]
    return None if len(found) > KEY_CANDIDATES else found


def _sample_percentiles(
    conn: Connection,
    f: TraceFilter,
    by: str,
    seek: bool,
    clauses: list[str],
    params: list[Any],
    aggs: list[_Agg],
    keys: list[Any],
) -> None:
    """Set each key's latency p50 and p95 (nearest rank) over its latest traces in the range, at
    most :data:`KEY_LATENCY_SAMPLE` of them, read through the key's own index, newest first: one
    statement for every key (on PostgreSQL, a statement is a round trip and a plan)."""
    if not keys:
        return
    table = "traces" if not seek else _traces(conn, f, seek)
    parts: list[str] = []
    values: list[Any] = []
    for i, key in enumerate(keys):
        member = f"{by} = ?" if key is not None else f"{by} IS NULL"
        parts.append(
            f"SELECT {i} AS k, latency_ms FROM (SELECT latency_ms FROM {table}"
            f"{_where([*clauses, member, dialect_of(conn).unindexed('latency_ms') + ' IS NOT NULL'])} "
            f"ORDER BY created_at DESC LIMIT {KEY_LATENCY_SAMPLE}) AS sample{i}"
        )
        values += [*params, *([key] if key is not None else [])]
    samples: list[list[float]] = [[] for _ in keys]
    for k, latency in conn.execute(" UNION ALL ".join(parts), values).fetchall():
        samples[k].append(latency)
    for agg, sample in zip(aggs, samples):
        sample.sort()
        agg.sampled = (_nearest_rank(sample, 50), _nearest_rank(sample, 95))


#: Breakdowns the rollups keep (one read of them answers all three).
ROLLUP_BREAKDOWNS = ("project", "model", "endpoint")


def _rollup_breakdowns(
    conn: Connection, f: TraceFilter, bys: tuple[str, ...], limit: int, now: float | None = None
) -> dict[str, list[dict[str, Any]]]:
    """A breakdown by each of ``bys`` (of :data:`ROLLUP_BREAKDOWNS`), from one read of the rollups
    grouped by all of them: a histogram is a sum of counts, so each breakdown's percentiles are
    what a read of its own would give."""
    return _breakdowns_of(_collect(conn, f, _by_columns(bys), now, each=True), bys, limit)


def _breakdowns_of(aggs: dict[Any, _Agg], bys: tuple[str, ...], limit: int) -> dict[str, list[dict[str, Any]]]:
    """The breakdowns of :func:`_rollup_breakdowns` from ``aggs``, read with ``each`` (keyed by
    ``(column, value)``)."""
    out = {}
    for by in bys:
        # The rollups keep a missing model as ''.
        merged = _merged_by((value or None, a) for (column, value), a in aggs.items() if column == by)
        top = sorted(merged.items(), key=lambda kv: (-kv[1].requests, "" if kv[0] is None else str(kv[0])))[:limit]
        out[by] = [_breakdown_row(k, a) for k, a in top]
    return out


#: A user's or a session's latency percentiles in a breakdown are those of its latest traces in
#: the range, at most this many (exact over them): a few reads per key, however busy the key.
KEY_LATENCY_SAMPLE = 1000


#: The most periods (days, or hours) of a per-key rollup whose rows :func:`_key_groups` seeks key
#: by key, period by period, for a few keys; more are read whole.
KEY_SEEK_PERIODS = 62

#: One group's totals over ``traces`` rows (every column in the user and session indexes).
_GROUP_SUMS = (
    "count(*)",
    f"sum({_ERR})",
    f"sum({_CANCELLED})",
    "sum(total_tokens)",
    "sum(cost_usd)",
    f"sum({_UNPRICED})",
    f"sum({_NO_USAGE})",
    "min(created_at)",
    "max(created_at)",
)
#: The columns of :func:`_key_groups`' rows, after ``k``.
_GROUP_COLUMNS = (
    "requests",
    "errors",
    "cancelled",
    "total_tokens",
    "cost_usd",
    "unpriced",
    "no_usage",
    "first_seen",
    "last_seen",
)


def _keys_all_time(f: TraceFilter, times: bool) -> bool:
    """Whether :func:`_key_groups` reads the all-time per-key rollups (rows with every total)."""
    return not times and f.keys_rollup_ok and f.since is None and f.until is None


def _key_groups(
    conn: Connection,
    f: TraceFilter,
    column: str,
    seek: bool,
    now: float | None = None,
    *,
    times: bool = True,
    top: int | None = None,
    columns: tuple[str, ...] = _GROUP_COLUMNS,
    keys: list[Any] | None = None,
    kept: bool = True,
) -> tuple[str, list[Any]]:
    """A query of ``f``'s traces grouped by ``column`` (user_id, session_id): one row per key
    (``k``, ``None`` for traces without one) with :data:`_GROUP_COLUMNS`. Whole days come from the
    key's per-day rollup when the filter names only time and project, and the whole hours of the
    partial days from its hourly rollup where the engine keeps one (``Dialect.hourly_keys``), the
    rest from ``traces``.
    Without ``times`` (``first_seen`` and ``last_seen`` then ``NULL``), all time comes from the
    key's all-time rollup: one row per key in the project (or over every project), and with
    ``top`` only the rows that may be among the ``top`` most requested -- those with at least the
    requests of the ``top``-th largest row, ties included, found through the rollup's index.
    Otherwise the rows hold only ``columns`` of :data:`_GROUP_COLUMNS`, and with ``keys`` only
    those keys' rows, read through the keys' indexes (a few keys of many). Without ``kept``, keys
    whose traces were all deleted keep their rows (their rollup rows' times still count)."""
    parts: list[str] = []
    params: list[Any] = []
    named = [k for k in keys or () if k is not None]
    if _keys_all_time(f, times):
        table = KEY_ALL_ROLLUPS[column]
        project = EVERY_PROJECT if f.project is None else f.project
        sql = (
            f"SELECT NULLIF({column}, '') AS k, {', '.join(_GROUP_COLUMNS[:-2])}, NULL AS first_seen, "
            f"NULL AS last_seen FROM {table} WHERE project = ? AND requests "
        )
        params = [project]
        if top is None:
            sql += "> 0"
        else:
            # One condition on requests (with two, SQLite may seek by the weaker one).
            sql += (
                f">= coalesce((SELECT requests FROM {table} WHERE project = ? "
                "ORDER BY requests DESC LIMIT 1 OFFSET ?), 1)"
            )
            params += [project, top - 1]
        return f"SELECT * FROM ({sql}) AS top_keys", params

    def raw(lo: float | None, hi: float | None, sign: str = "") -> None:
        clauses, more = _conditions(conn, f, lo, hi, seek=seek)
        table = _traces(conn, dataclasses.replace(f, since=lo), seek)
        if keys is not None:
            # The key's own index (key, time) finds these keys' rows in the range.
            table = "traces"
            among = [f"{column} IN ({_positions_of(named)})"] if named else []
            if None in keys:
                among += [f"{column} IS NULL", f"{column} = ''"]
            clauses.append(f"({' OR '.join(among)})")
            more.extend(named)
        # ``sign`` '-': the rows taken away from a day's rollup row (no first or last time then).
        seen = "min(created_at), max(created_at)" if not sign else "NULL, NULL"
        seen = seen.replace(", ", " AS first_seen, ") + " AS last_seen"
        parts.append(
            f"SELECT NULLIF({column}, '') AS k, {sign}count(*) AS requests, {sign}sum({_ERR}) AS errors, "
            f"{sign}sum({_CANCELLED}) AS cancelled, {sign}sum(total_tokens) AS total_tokens, "
            f"{sign}sum(cost_usd) AS cost_usd, {sign}sum({_UNPRICED}) AS unpriced, {sign}sum({_NO_USAGE}) AS no_usage, "
            f"{seen} FROM {table}{_where(clauses)} GROUP BY {column}"
        )
        params.extend(more)

    # Read once for every part, from the all-time totals (a few rows a project): a walk of the
    # traces' project index is a statement per project, each a seek in every day partition on
    # PostgreSQL. A project whose traces were all deleted may be listed; its seeks find nothing.
    store_projects = functools.cache(
        lambda: [row[0] for row in conn.execute(f"SELECT DISTINCT project FROM {ALL_TOTALS} ORDER BY project")]
    )

    def rollup(lo: int | None, hi: int, seconds: int = KEY_PERIOD, sign: str = "") -> None:
        """The rows of the per-key rollup of ``seconds``-long periods (a day's or an hour's) for
        the periods in ``[lo, hi)``; ``sign`` '-': their totals taken away (no first or last time)."""
        clauses, more = _rollup_filters(f, ("project",))
        if keys is not None and lo is not None and (hi - lo) // seconds <= KEY_SEEK_PERIODS:
            # Every (period, project, key) of the rollup's primary key, sought: not the range's rows.
            periods = list(range(lo, hi, seconds))
            clauses.append(f"period IN ({_positions_of(periods)})")
            more.extend(periods)
            if f.project is None:
                names = store_projects()
                clauses.append(f"project IN ({_positions_of(names)})" if names else "0 = 1")
                more.extend(names)
        else:
            clauses.append("period < ?")
            more.append(hi)
            if lo is not None:
                clauses.append("period >= ?")
                more.append(lo)
        if keys is not None:
            wanted = [*named, *([""] if None in keys else [])]
            clauses.append(f"{column} IN ({_positions_of(wanted)})")
            more.extend(wanted)
        table = KEY_ROLLUPS[column] if seconds == KEY_PERIOD else KEY_HOUR_ROLLUPS[column]
        if sign:
            taken = ", ".join(f"{sign}{c} AS {c}" for c in _GROUP_COLUMNS[:-2])
            selected = f"{taken}, NULL AS first_seen, NULL AS last_seen"
        else:
            selected = ", ".join(_GROUP_COLUMNS)
        parts.append(f"SELECT NULLIF({column}, '') AS k, {selected} FROM {table}{_where(clauses)}")
        params.extend(more)

    now = time.time() if now is None else now
    hourly = f.keys_rollup_ok and dialect_of(conn).hourly_keys()

    def within_day(lo: float | None, hi: float | None, sign: str = "") -> None:
        """The part ``[lo, hi)`` of a day (or of two, for a range of no whole day): its whole hours
        from the hourly per-key rollup where the store keeps one, the rest from the rows."""
        if not hourly:
            raw(lo, hi, sign)
            return
        _tiered(
            lo,
            hi,
            now,
            [(KEY_HOUR_PERIOD, lambda a, b: rollup(a, b, KEY_HOUR_PERIOD, sign))],
            lambda a, b: raw(a, b, sign),
        )

    def edge(lo: float | None, hi: float | None) -> None:
        """The part ``[lo, hi)`` of a day, or -- when that is most of the day and no first or last
        time is asked for -- the day's rollup rows less the part of the day outside the range: the
        smaller read, as exact (every total is a sum; the rollup rows are those rows' sums)."""
        if times or not f.keys_rollup_ok or lo is None:
            within_day(lo, hi)
            return
        day = math.floor(lo / KEY_PERIOD) * KEY_PERIOD
        end = day + KEY_PERIOD
        if hi is not None and hi > end:
            within_day(lo, hi)
            return
        # Rows are about proportional to time, and none is later than now.
        stop = min(end, now)
        inside = max(0.0, min(stop, now if hi is None else hi) - lo)
        if max(0.0, stop - day) - inside >= inside:
            within_day(lo, hi)
            return
        rollup(day, end)
        if lo > day:
            within_day(day, lo, "-")
        if hi is None:
            raw(end, None)
        elif hi < end:
            within_day(hi, end, "-")

    tiers: list[tuple[int, Callable[[int | None, int], None]]] = []
    if f.keys_rollup_ok:
        tiers.append((KEY_PERIOD, rollup))
    _tiered(f.since, f.until, now, tiers, edge)
    sums = ", ".join(
        f"{'min' if c == 'first_seen' else 'max' if c == 'last_seen' else 'sum'}({c}) AS {c}" for c in columns
    )
    # A rollup row whose traces were all deleted stays, with no requests.
    having = " HAVING sum(requests) > 0" if kept else ""
    return f"SELECT k, {sums} FROM ({' UNION ALL '.join(parts)}) AS parts GROUP BY k{having}", params


def _alongside(conn: Connection, fn: Callable[[Connection], T]) -> Callable[[], T]:
    """``fn`` on another connection in this read's snapshot, in a thread, where the engine can
    (PostgreSQL: ``alongside``), started now; otherwise ``fn(conn)`` once its result is asked for.
    Returns what gives the result."""
    start = getattr(conn, "alongside", None)
    if start is None:
        return lambda: fn(conn)
    return start(fn)  # type: ignore[no-any-return]


def overview_page(
    conn: Connection, f: TraceFilter, bucket_seconds: int, breakdowns: Iterable[str], rows: int
) -> dict[str, Any]:
    """The dashboard's overview: :func:`overview`, :func:`timeseries` and a :func:`breakdown` by
    each of ``breakdowns`` (``rows`` each), read in one snapshot, so its numbers cannot disagree:
    on one connection's read transaction, or (PostgreSQL) on two at once that share it. The
    project, model and endpoint breakdowns come from one read, which the database also adds up
    whole: the range's totals and histograms (the same traces as the series'). The series' buckets
    then show latency percentiles only, and no TTFT is read per bucket. Without those breakdowns
    the totals are the series' buckets added up."""
    now = time.time()
    bys = tuple(breakdowns)
    kept = tuple(by for by in bys if by in ROLLUP_BREAKDOWNS)
    width, limit = _check_width(bucket_seconds), _check_limit(rows)
    metrics = SERIES_METRICS if kept else HIST_METRICS
    keyed = [by for by in bys if by not in kept]

    def series_and_keys(other: Connection) -> tuple[dict[Any, _Agg], dict[str, list[dict[str, Any]]]]:
        series = _collect(other, f, _by_time(dialect_of(other), width), now, metrics=metrics)
        return series, {by: breakdown(other, f, by, limit) for by in keyed[1::2]}

    # Where the engine can, the series and every other user or session breakdown are read beside
    # the rest, in the same snapshot (two halves of about the same cost at 10 M traces).
    beside = _alongside(conn, series_and_keys)
    try:
        by_columns = _collect(conn, f, _by_columns(kept), now, each=True) if kept else None
        found = {by: breakdown(conn, f, by, limit) for by in keyed[0::2]}
    finally:
        series, more = beside()
    found.update(more)
    found.update(_breakdowns_of(by_columns, kept, limit) if by_columns is not None else {})
    overall = _merge(series.values()) if by_columns is None else by_columns.get(("", None), _Agg())
    return {
        "overview": _overview_of(overall),
        "bucket_seconds": bucket_seconds,
        "timeseries": _series(series, f, bucket_seconds, now),
        "breakdowns": {by: found[by] for by in bys},
    }


def stats(conn: Connection, f: TraceFilter) -> dict[str, Any]:
    """``prysmai stats --json`` and ``GET /api/v1/stats``: totals and ``by_model``, with the keys
    of prysmai 0.1.0 (``unpriced_requests``, ``latency_p50_ms``...) plus p99 and TTFT p95."""
    by_model = _scored_by_model(conn, f) if _scored_rollup_ok(f) else _collect(conn, f, _by_column("model"))
    models = _merged_by((k or "(none)", a) for k, a in by_model.items())
    out = _legacy(_merge(by_model.values()))
    out["by_model"] = {m: _legacy(a) for m, a in sorted(models.items())}
    return out


# -- the scored traces' rollups (see .rollups): aggregates of the traces with a score of a name ------
def _scored_rollup_ok(f: TraceFilter) -> bool:
    """Whether the scored traces' rollups answer ``f``: a score name without bounds, and otherwise
    only time, project and model (what they keep)."""
    return (
        f.score is not None
        and f.score_min is None
        and f.score_max is None
        and f.endpoint is None
        and f.status is None
        and dataclasses.replace(f, score=None).rollup_ok
    )


def _scored_by_model(conn: Connection, f: TraceFilter, now: float | None = None) -> dict[Any, _Agg]:
    """Totals and histograms by model of the traces with a score named ``f.score``: whole days
    from the scored traces' rollups, the partial days at the range's edges from the rows."""
    aggs: dict[Any, _Agg] = {}
    seek = _small_project(conn, f)
    tiers = _Tiers(conn, aggs, 1)

    def rollup(lo: int | None, hi: int) -> None:
        clauses, params = _rollup_filters(f, ("project", "model"))
        clauses += ["name = ?", "period < ?"]
        params += [f.score, hi]
        if lo is not None:
            clauses.append("period >= ?")
            params.append(lo)
        sums = ", ".join(f"sum({c})" for c in SCORED_COUNTS)
        tiers.totals.append((f"SELECT model, {sums} FROM {SCORED_TOTALS}{_where(clauses)} GROUP BY model", params))
        tiers.hists.append(_hists_sql(conn, "model", SCORED_HIST, clauses, params, 1))

    def raw(lo: float | None, hi: float | None) -> None:
        tiers.totals.append(_raw_totals_sql(conn, f, "model", lo, hi, seek, 1))
        tiers.hists.extend(_raw_hist_sql(conn, f, "model", lo, hi, seek, 1, HIST_METRICS))

    _tiered(f.since, f.until, time.time() if now is None else now, [(KEY_PERIOD, rollup)], raw)
    tiers.read()
    return aggs


def _legacy(agg: _Agg) -> dict[str, Any]:
    p50, p95, p99 = agg.percentiles("latency", (50, 95, 99))
    t50, t95 = agg.percentiles("ttft", (50, 95))
    return {
        "requests": agg.requests,
        "errors": agg.errors,
        "error_rate": agg.errors / agg.requests if agg.requests else 0.0,
        "cancelled": agg.cancelled,
        "prompt_tokens": agg.prompt,
        "completion_tokens": agg.completion,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced_requests": agg.unpriced,
        "no_usage_requests": agg.no_usage,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
        "ttft_p50_ms": t50,
        "ttft_p95_ms": t95,
    }


# -- lists ----------------------------------------------------------------------------------------
def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ParamError("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def _encode_cursor(payload: list[Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str) -> list[Any]:
    """The payload of a cursor of ``kind``: ``[kind, sort value, tie-break, 0]`` (the tie-break is
    an id, or a row's number in the store). Anything a client may have put there instead is
    refused here, before it reaches the database as a parameter."""
    invalid = "invalid cursor (pass back next_cursor as it was given)"
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, RecursionError):
        raise ParamError("cursor", invalid) from None
    if not isinstance(payload, list) or len(payload) != 4 or payload[0] != kind:
        raise ParamError("cursor", "this cursor belongs to another listing or sort order; start again without it")
    if not _sql_value(payload[1]) or payload[2] is None or isinstance(payload[2], float) or not _sql_value(payload[2]):
        raise ParamError("cursor", invalid)
    return payload


def _sql_value(value: Any) -> bool:
    """Whether ``value`` can be a sort value of ours: NULL, text, a finite real or a 64-bit integer."""
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return isinstance(value, float) and math.isfinite(value)


_INT64 = (-(2**63), 2**63 - 1)


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
    bodies: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of traces (no bodies; with ``bodies``, their request and response bodies too:
    an export's) and the cursor of the next page (``None`` at the end).
    ``sort``: created_at (time), latency_ms (latency), ttft_ms (ttft), total_tokens (tokens),
    cost_usd (cost); ties broken by id in time order, by arrival (newest first when descending)
    in the others; rows without a value come last."""
    column = SORTS.get(sort)
    if column is None:
        raise ParamError("sort", f"sort must be one of {', '.join(sorted(set(SORTS.values())))}, not {sort!r}")
    limit = _check_limit(limit)
    # Ties: by id in time order (traces_agg ends with it); in a sort column's order, by arrival
    # (the row's number, which each sort index holds without storing the 32-character id again).
    tie = "id" if column == "created_at" else dialect_of(conn).row_order()
    kind = f"traces:{column}:{'desc' if descending else 'asc'}" + ("" if tie == "id" else ":arrival")
    after = _decode_cursor(cursor, kind) if cursor else None
    op, order = ("<", "DESC") if descending else (">", "ASC")
    # A project's traces by time alone are one range of traces_project (which holds the ids); with
    # any other filter or order, a large project's are picked from the covering traces_agg.
    by_time_only = column == "created_at" and f == TraceFilter(since=f.since, until=f.until, project=f.project)
    # Sorted by another column: the column's own index, walked in order with each row checked
    # against the filter, when the filter keeps many traces; otherwise the filter's rows, sorted.
    walk = column != "created_at" and _walk_sort_index(conn, f, limit)
    seek = not walk and f.project is not None and (by_time_only or _small_project(conn, f))
    # In time order, a range filter keeping few traces is read through its column's index (its
    # matches sorted by time), else the time index is walked with each range checked on the row.
    through = _range_seek(conn, f) if column == "created_at" else None
    unindexed = frozenset(c for c in RANGES.values() if c != through) if column == "created_at" else frozenset()
    probe = column == "created_at" and _common_score(conn, f, limit)
    clauses, params = _conditions(conn, f, seek=seek, unindexed=unindexed, score_probe=probe)
    # Not walking it, the sort column is an expression (unary +), so that SQLite does not.
    value = column if walk or (column == "created_at" and through is None) else dialect_of(conn).unindexed(column)
    # Pick the page's rows first (from an index when the filter allows), then read just those
    # rows: sorting full rows would read every row of the range, bodies included.
    keys: list[Any] = []
    in_nulls = after is not None and after[1] is None
    if not in_nulls:
        table = dialect_of(conn).sorted_by("traces", column) if walk else "traces"
        where = [*clauses, f"{value} IS NOT NULL"]
        more = list(params)
        if after is not None:
            where.append(f"({value}, {tie}) {op} (?, ?)")
            more += [after[1], after[2]]
        sql = f"SELECT {tie} FROM {table}{_where(where)} ORDER BY {value} {order}, {tie} {order} LIMIT ?"
        keys = [r[0] for r in conn.execute(sql, [*more, limit + 1])]
    if len(keys) <= limit and column != "created_at":
        # Rows without a value come last, by arrival (the sort indexes hold only rows with one).
        where = [*clauses, f"{value} IS NULL"]
        more = list(params)
        if in_nulls and after is not None:
            where.append(f"{tie} {op} ?")
            more.append(after[2])
        # Not walking: the filter's rows, sorted (unary +), not every row in rowid order until enough
        # match -- all of them, when none does.
        order_by = tie if walk else dialect_of(conn).unindexed(tie)
        sql = f"SELECT {tie} FROM traces{_where(where)} ORDER BY {order_by} {order} LIMIT ?"
        keys += [r[0] for r in conn.execute(sql, [*more, limit + 1 - len(keys)])]
    page = keys[:limit]
    by_key: dict[Any, dict[str, Any]] = {}
    if page:
        columns = _SUMMARY + (", request_body, response_body" if bodies else "")
        sql = f"SELECT {tie} AS page_key, {columns} FROM traces WHERE {tie} IN ({', '.join('?' * len(page))})"
        by_key = {r.pop("page_key"): r for r in _rows(conn, sql, page)}
    found = [(k, by_key[k]) for k in page if k in by_key]
    rows = [r for _, r in found]
    if len(keys) <= limit or not rows:
        return rows, None
    last_key, last = found[-1]
    return rows, _encode_cursor([kind, last[column], last_key, 0])


#: Traces a list counts at most: past this, the total is "more than" (counting every match of a
#: large store would take longer than the page itself).
COUNT_BOUND = 10_000


def count_traces(conn: Connection, f: TraceFilter, bound: int = COUNT_BOUND) -> tuple[int, bool]:
    """How many traces ``f`` matches, counted up to ``bound``: ``(n, True)`` exactly, or
    ``(bound, False)`` when there are more."""
    seek = f.project is not None and _small_project(conn, f)
    clauses, params = _conditions(conn, f, seek=seek)
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {_traces(conn, f, seek)}{_where(clauses)} LIMIT ?) AS matched"
    n = int(conn.execute(sql, [*params, bound + 1]).fetchone()[0])
    return (n, True) if n <= bound else (bound, False)


def neighbours(
    conn: Connection, f: TraceFilter, trace_id: str, *, sort: str = "created_at", descending: bool = True
) -> tuple[str | None, str | None] | None:
    """The ids of the traces just before and just after ``trace_id`` in the list of ``f`` in this
    order (``None`` at either end); ``None`` when there is no such trace (in ``f``'s project)."""
    column = SORTS.get(sort)
    if column is None:
        raise ParamError("sort", f"sort must be one of {', '.join(sorted(set(SORTS.values())))}, not {sort!r}")
    tie = "id" if column == "created_at" else dialect_of(conn).row_order()
    scope, scoped = _in_project(conn, f.project)
    found = conn.execute(f"SELECT {column}, {tie} FROM traces WHERE id = ?{scope}", [trace_id, *scoped]).fetchone()
    if found is None:
        return None
    value, key = found

    def after(desc: bool) -> dict[str, Any] | None:
        kind = f"traces:{column}:{'desc' if desc else 'asc'}" + ("" if tie == "id" else ":arrival")
        cursor = _encode_cursor([kind, value, key, 0])
        rows, _ = list_traces(conn, f, sort=sort, descending=desc, cursor=cursor, limit=1)
        return rows[0] if rows else None

    following = after(descending)
    # Backwards: the list in the other order, after this trace. Traces without a value come last
    # in both orders, so that list goes on into them where this one would have come from the last
    # trace with a value (and the reverse).
    preceding = after(not descending)
    if value is not None and preceding is not None and preceding[column] is None:
        preceding = None
    elif value is None and preceding is None:
        firsts, _ = list_traces(conn, f, sort=sort, descending=not descending, limit=1)
        preceding = firsts[0] if firsts and firsts[0][column] is not None else None
    return (None if preceding is None else preceding["id"]), (None if following is None else following["id"])


#: A range filter keeping fewer traces than this is listed in time order through its column's
#: index (those traces sorted by time); one keeping more, by walking the time index.
RANGE_SEEK = 20_000


def _range_seek(conn: Connection, f: TraceFilter) -> str | None:
    """The column of ``f``'s range filter (:data:`RANGES`) keeping the fewest traces, when it keeps
    fewer than :data:`RANGE_SEEK` (counted through its index, up to that); ``None`` without one,
    or when a user, session, key or text filter has an index of its own to read."""
    if f.user_id is not None or f.session_id is not None or f.key_id is not None or f.text is not None:
        return None
    best: tuple[int, str] | None = None
    for name, column in RANGES.items():
        bounds = [
            (b, op) for b, op in ((getattr(f, name + "_min"), ">="), (getattr(f, name + "_max"), "<=")) if b is not None
        ]
        if not bounds:
            continue
        where = " AND ".join(f"{column} {op} ?" for _, op in bounds)
        sql = f"SELECT count(*) FROM (SELECT 1 FROM traces WHERE {where} LIMIT ?) AS matched"
        n = int(conn.execute(sql, [*(b for b, _ in bounds), RANGE_SEEK]).fetchone()[0])
        if n < RANGE_SEEK and (best is None or n < best[0]):
            best = (n, column)
    return None if best is None else best[1]


#: How many times a row read to check it against a filter costs an index entry read to sort it.
_LOOKUP_COST = 16


def _walk_sort_index(conn: Connection, f: TraceFilter, limit: int) -> bool:
    """Whether a page sorted by a column is cheaper read by walking that column's index, checking
    each row against ``f``: when ``f`` keeps ``m`` of ``n`` traces, the walk reads about
    ``limit * n / m`` rows, the other way ``m`` index entries and a sort. So when
    ``m * m >= _LOOKUP_COST * limit * n``; ``m`` is counted up to that bound (through the index
    of the time range or the project, or from the hourly rollups)."""
    if f == TraceFilter():
        return True
    if not f.rollup_ok:  # a user, session, key, text...: few rows, found through their own index
        return False
    total = dialect_of(conn).traces_bound(conn)
    needed = math.ceil(math.sqrt(_LOOKUP_COST * (limit + 1) * total))
    if f.model is None and f.endpoint is None and f.status is None:
        clauses, params = _conditions(conn, f, seek=f.project is not None)
        sql = f"SELECT count(*) FROM (SELECT 1 FROM traces{_where(clauses)} LIMIT ?) AS firsts"
        return int(conn.execute(sql, [*params, needed]).fetchone()[0]) >= needed
    clauses, params = _rollup_filters(f, HOUR_DIMS)
    if f.since is not None:
        clauses.append("hour >= ?")
        params.append(math.floor(f.since / _HOUR) * _HOUR)
    if f.until is not None:
        clauses.append("hour < ?")
        params.append(f.until)
    sql = f"SELECT coalesce(sum(requests), 0) FROM rollup_hour{_where(clauses)}"
    return int(conn.execute(sql, params).fetchone()[0]) >= needed


def _common_score(conn: Connection, f: TraceFilter, limit: int) -> bool:
    """Whether a page in time order of the traces with ``f``'s score is cheaper found by walking
    the traces newest first and looking up each one's scores (``scores_by_trace_name``) than by
    reading every scored trace and sorting them: when the score is on ``m`` of ``n`` traces, the
    walk looks up about ``limit * n / m`` of them, the other way reads ``m`` rows (each about the
    cost of a look-up: two index seeks): so when ``m * m >= limit * n``, the scores counted (up to
    that bound) through ``scores_by_name``."""
    if f.score is None:
        return False
    total = dialect_of(conn).traces_bound(conn)
    needed = math.ceil(math.sqrt((limit + 1) * total))
    sql = "SELECT 1 FROM scores WHERE name = ?"
    params: list[Any] = [f.score]
    if f.project is not None:
        sql += " AND score_project = ?"
        params.append(f.project)
    for bound, op in ((f.score_min, ">="), (f.score_max, "<=")):
        if bound is not None:
            sql += f" AND num {op} ?"
            params.append(bound)
    found = conn.execute(f"SELECT count(*) FROM ({sql} LIMIT ?) AS firsts", [*params, needed]).fetchone()[0]
    return int(found) >= needed


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


#: Orders of the sessions and users lists: name -> the expression sorted on (no NULL: a cursor
#: holds the value).
GROUP_SORTS = {
    "last_seen": "last_seen",
    "requests": "requests",
    "errors": "errors",
    "cost": "coalesce(cost_usd, 0)",
    "tokens": "coalesce(total_tokens, 0)",
}


def _groups(
    conn: Connection,
    f: TraceFilter,
    column: str,
    cursor: str | None,
    limit: int,
    sort: str = "last_seen",
    descending: bool = True,
    search: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    limit = _check_limit(limit)
    value = GROUP_SORTS.get(sort)
    if value is None:
        raise ParamError("sort", f"sort must be one of {', '.join(GROUP_SORTS)}, not {sort!r}")
    # (The default order keeps the cursors it has always given.)
    kind = f"{column}s" + ("" if (sort, descending) == ("last_seen", True) else f":{sort}:{descending}")
    seek = _small_project(conn, f)
    recent = None
    if (sort, descending) == ("last_seen", True) and not cursor and not search:
        recent = _recent_keys(conn, f, column, seek, limit + 1)
    if recent is None:
        source, params = _key_groups(conn, f, column, seek)
    else:
        source, params = _key_groups(conn, f, column, seek, keys=recent)
    where = "k IS NOT NULL"
    op, order = ("<", "DESC") if descending else (">", "ASC")
    if search:
        # Any part of the id, any case (ASCII), as text: % and _ are not wildcards here.
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where += " AND lower(k) LIKE ? ESCAPE '\\'"
        params = [*params, f"%{escaped}%"]
    if cursor:
        after = _decode_cursor(cursor, kind)
        where += f" AND ({value}, k) {op} (?, ?)"
        params = [*params, after[1], after[2]]
    sql = (
        f"SELECT *, {value} AS sort_value FROM ({source}) AS listed WHERE {where} "
        f"ORDER BY {value} {order}, k {order} LIMIT ?"
    )
    rows = []
    values = []
    for key, requests, errors, cancelled, total, cost, unpriced, no_usage, first, last, sort_value in conn.execute(
        sql, [*params, limit + 1]
    ):
        agg = _Agg()
        agg.add_totals(requests, errors, cancelled, 0, 0, total, cost, unpriced, no_usage)
        values.append(sort_value)
        rows.append(
            {
                column: key,
                "requests": requests,
                "errors": errors,
                "cancelled": cancelled,
                "total_tokens": total or 0,
                "cost_usd": agg.cost_usd,
                "unpriced": unpriced,
                "no_usage": no_usage,
                "first_seen": first,
                "last_seen": last,
            }
        )
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode_cursor([kind, values[limit - 1], rows[-1][column], 0])


#: Most of the newest traces :func:`_recent_keys` walks for a page's keys before it gives up.
RECENT_WALK = 20000


def _recent_keys(conn: Connection, f: TraceFilter, column: str, seek: bool, wanted: int) -> list[Any] | None:
    """The keys that may be among the ``wanted`` most recently seen of ``f`` (``None``: not found
    in the newest :data:`RECENT_WALK` traces): with them, a first page sorted by last seen reads the
    totals of those keys alone instead of grouping every key of the range.

    The newest traces are walked until ``wanted`` keys are seen; the time ``t`` of the last one
    bounds the page: those keys were last seen at ``t`` or later, so every key of the page was
    too. Such a key has a row -- of a day's rollup, whose ``last_seen`` is that day's and never
    lowered by a delete, or of the traces -- last seen at ``t`` or later, on ``t``'s day or after:
    those rows' keys, grouped as the page groups them, are the answer (a superset of the page's)."""
    if not f.keys_rollup_ok:
        return None
    clauses, params = _conditions(conn, f, seek=seek)
    unindexed = dialect_of(conn).unindexed(column)
    clauses += [f"{unindexed} IS NOT NULL", f"{unindexed} <> ''"]
    table = "traces" if seek else dialect_of(conn).time_first("traces")
    sql = f"SELECT {column}, created_at FROM {table}{_where(clauses)} ORDER BY created_at DESC LIMIT ? OFFSET ?"
    seen: set[Any] = set()
    bound = None
    walked = 0
    # A short walk first (a page's keys are usually among the newest few hundred traces).
    for step in (min(RECENT_WALK, 50 * wanted), RECENT_WALK):
        if step <= walked:
            continue
        for key, created_at in conn.execute(sql, [*params, step - walked, walked]).fetchall():
            seen.add(key)
            if len(seen) >= wanted:
                bound = created_at
                break
        if bound is not None:
            break
        walked = step
    if bound is None:
        return None
    day = math.floor(bound / KEY_PERIOD) * KEY_PERIOD
    since = day if f.since is None else max(f.since, day)
    source, more = _key_groups(conn, dataclasses.replace(f, since=since), column, seek, kept=False)
    sql = f"SELECT k FROM ({source}) AS recent WHERE k IS NOT NULL AND last_seen >= ?"
    found = [k for (k,) in conn.execute(sql, [*more, bound])]
    return found or None


def sessions(
    conn: Connection,
    f: TraceFilter,
    *,
    cursor: str | None = None,
    limit: int = 50,
    sort: str = "last_seen",
    descending: bool = True,
    search: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Sessions seen in ``f``'s traces, most recently active first (or by ``sort``: requests,
    errors, cost, tokens), with their totals; ``search``: only ids holding this text, any case."""
    return _groups(conn, f, "session_id", cursor, limit, sort, descending, search)


def users(
    conn: Connection,
    f: TraceFilter,
    *,
    cursor: str | None = None,
    limit: int = 50,
    sort: str = "last_seen",
    descending: bool = True,
    search: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Users seen in ``f``'s traces, as :func:`sessions`."""
    return _groups(conn, f, "user_id", cursor, limit, sort, descending, search)


def session_page(
    conn: Connection,
    session_id: str,
    *,
    cursor: str | None = None,
    limit: int = 100,
    project: str | None = None,
) -> dict[str, Any]:
    """A session (its conversation timeline): ``totals`` over all its traces (requests, errors,
    cancelled, tokens, cost...), one page of its traces in full, oldest first, and the cursor of
    the next page (``None`` at the end); only ``project``'s traces when given. Read in the
    caller's one snapshot, so the totals and the pages agree."""
    limit = _check_limit(limit)
    scope, scoped = _in_project(conn, project)
    sql = f"SELECT {', '.join(_GROUP_SUMS)} FROM traces WHERE session_id = ?{scope}"
    requests, errors, cancelled, total, cost, unpriced, no_usage, first, last = conn.execute(
        sql, [session_id, *scoped]
    ).fetchone()
    agg = _Agg()
    if requests:
        agg.add_totals(requests, errors, cancelled, 0, 0, total, cost, unpriced, no_usage)
    totals = {
        "requests": agg.requests,
        "errors": agg.errors,
        "cancelled": agg.cancelled,
        "total_tokens": agg.total,
        "cost_usd": agg.cost_usd,
        "unpriced": agg.unpriced,
        "no_usage": agg.no_usage,
        "first_seen": first,
        "last_seen": last,
    }
    where, params = f"session_id = ?{scope}", [session_id, *scoped]
    if cursor:
        after = _decode_cursor(cursor, "session")
        where += " AND (created_at, id) > (?, ?)"
        params += [after[1], after[2]]
    traces = _rows(conn, f"SELECT * FROM traces WHERE {where} ORDER BY created_at, id LIMIT ?", [*params, limit + 1])
    next_cursor = None
    if len(traces) > limit:
        traces = traces[:limit]
        next_cursor = _encode_cursor(["session", traces[-1]["created_at"], traces[-1]["id"], 0])
    return {"totals": totals, "traces": traces, "next_cursor": next_cursor}


def project_exists(conn: Connection, project: str) -> bool:
    """Whether the store holds a trace of ``project``."""
    return conn.execute("SELECT 1 FROM traces WHERE project = ? LIMIT 1", [project]).fetchone() is not None


def projects(conn: Connection) -> list[str]:
    """The projects the store holds traces of, in order (one index seek each)."""
    out: list[str] = []
    row = conn.execute("SELECT min(project) FROM traces").fetchone()
    while row is not None and row[0] is not None:
        out.append(row[0])
        row = conn.execute("SELECT min(project) FROM traces WHERE project > ?", [row[0]]).fetchone()
    return out


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
    "project_exists",
    "projects",
    "session_page",
    "sessions",
    "stats",
    "timeseries",
    "users",
]
