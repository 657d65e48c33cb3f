"""Spend against budget: each project's month of spend beside ``monthly_budget_usd``, its last
minute of requests beside ``requests_per_minute``, and the ``429`` answers its limits gave, over
time. One read for the read API (``budgets``), ``prysmai stats --budgets`` and the dashboard.

The month is the one the proxy enforces the budget over (:func:`month_start`, which
:mod:`..server.limits` uses too): the UTC calendar month, from its first second. The spend is the
sum of the traces' ``cost_usd`` in it, read from the hourly rollups (:func:`.queries.month_spend`,
what the proxy seeds its budget counters from at start-up); a month starts on a whole hour, so the
rollups' hours cover it exactly. The pace is the month's average so far: spend / days elapsed
since the month began; at that pace the rest of the budget lasts ``days_left`` days, until
``runs_out_at`` (which may be after the month's end: the budget then lasts the month).

The request rate is what the project sent in the last :data:`WINDOW_SECONDS` (the limit's sliding
window) less what the limits refused: the requests the limit counts. The limits' refusals are the
traces the proxy answered ``429`` itself with one of :data:`REFUSAL_CODES` (``traces.error_code``,
schema 8; PostgreSQL version 5); a provider's own ``429``, relayed, is not one. They are read
through an index of those rows only, so a read costs what the refusals in its range do.
"""

from __future__ import annotations

import calendar
import math
import time

from .engine import dialect_of
from .queries import MAX_BUCKETS, month_spend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..config.projects import Limits
    from .engine import Connection

#: The ``code`` of each limit's ``429`` (``traces.error_code``) and the limit's name here.
REFUSAL_CODES = ("project_rate_limit_exceeded", "project_budget_exceeded")
LIMIT_NAMES = {"project_rate_limit_exceeded": "rate", "project_budget_exceeded": "budget"}
#: The request-rate limit's sliding window, in seconds.
WINDOW_SECONDS = 60.0
_DAY = 86400.0
# Literal codes (constants of ours), so that SQLite and PostgreSQL match the condition with the
# partial index of the refusals (a bound parameter would not).
_REFUSED = "error_code IN (" + ", ".join(f"'{c}'" for c in REFUSAL_CODES) + ")"


def month_start(now: float) -> float:
    """The first second of ``now``'s UTC calendar month (unix time)."""
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def month_end(now: float) -> float:
    """The first second of the UTC calendar month after ``now``'s."""
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def budgets(
    conn: Connection,
    limits: Mapping[str, Limits],
    *,
    now: float,
    project: str | None = None,
    since: float | None = None,
    until: float | None = None,
    bucket: int = 86400,
) -> dict[str, Any]:
    """Each project's spend and rate against its limits at ``now``, and its limits' refusals in
    ``[since, until)`` (``since`` ``None``: from the first one stored; ``until`` ``None``: to
    ``now``) per ``bucket`` seconds. ``limits``: the configured projects' limits; the projects
    shown are those, and any other with traces this month or refusals in the range; only
    ``project`` when given."""
    width = int(bucket)
    if width != bucket or width < 1:
        raise ValueError(f"bucket must be a whole number of seconds >= 1, not {bucket!r}")
    start = month_start(now)
    end = now if until is None else until
    scope, scoped = ("", []) if project is None else (" AND project = ?", [project])
    spent = month_spend(conn, start)
    rate = _last_minute(conn, now, scope, scoped)
    refused, first = _refusals(conn, since, until, width, scope, scoped)
    names = set(limits) | set(spent) | set(refused)
    if project is not None:
        names = {project}
    if since is not None:
        first = math.floor(since / width)
    elif first is None:
        first = math.floor(start / width)
    last = max(first, math.ceil(end / width) - 1)
    if last - first + 1 > MAX_BUCKETS:
        raise ValueError(f"a {width} s bucket gives more than {MAX_BUCKETS} buckets over this range; widen it")
    rows = []
    for name in sorted(names):
        limit = limits.get(name)
        rpm = None if limit is None else limit.requests_per_minute
        usd = None if limit is None else limit.monthly_budget_usd
        per_bucket = refused.get(name, {})
        series = [{"t": k * width, **per_bucket.get(k, {"rate": 0, "budget": 0})} for k in range(first, last + 1)]
        rows.append(
            {
                "project": name,
                "configured": limit is not None,
                "limited": rpm is not None or usd is not None,
                "spend": _spend(spent.get(name, 0.0), usd, now, start),
                "rate": _rate(rate.get(name, 0), rpm),
                "refusals": {
                    "rate": sum(p["rate"] for p in per_bucket.values()),
                    "budget": sum(p["budget"] for p in per_bucket.values()),
                    "series": series,
                },
            }
        )
    return {
        "object": "budgets",
        "as_of": now,
        "month_start": start,
        "month_end": month_end(now),
        "since": first * width if since is None else since,
        "until": until,
        "bucket_seconds": width,
        "projects": rows,
    }


def _spend(spent: float, budget: float | None, now: float, start: float) -> dict[str, Any]:
    days = max(now - start, 1.0) / _DAY
    pace = spent / days
    doc: dict[str, Any] = {
        "month_usd": spent,
        "budget_usd": budget,
        "remaining_usd": None,
        "used": None,
        "exhausted": False,
        "pace_usd_per_day": pace,
        "days_left": None,
        "runs_out_at": None,
    }
    if budget is not None:
        remaining = max(0.0, budget - spent)
        doc.update(remaining_usd=remaining, used=spent / budget, exhausted=spent >= budget)
        if spent >= budget:
            doc["days_left"] = 0.0
        elif pace > 0:
            doc["days_left"] = remaining / pace
            doc["runs_out_at"] = now + remaining / pace * _DAY
    return doc


def _rate(requests: int, rpm: int | None) -> dict[str, Any]:
    return {
        "last_minute": requests,
        "requests_per_minute": rpm,
        "used": None if rpm is None else requests / rpm,
    }


def _last_minute(conn: Connection, now: float, scope: str, scoped: list[Any]) -> dict[str, int]:
    """Requests per project in the window ending at ``now``, the limits' refusals left out: every
    trace less the refusals, two counts each answered from an index alone (a busy minute holds
    many rows; neither count reads them)."""
    window = "created_at > ? AND created_at <= ?" + scope
    params = [now - WINDOW_SECONDS, now, *scoped]
    found = {
        p: int(n)
        for p, n in conn.execute(f"SELECT project, count(*) FROM traces WHERE {window} GROUP BY project", params)
    }
    # The refusals through their own index, not the time index (whose rows would all be read).
    at = dialect_of(conn).unindexed("created_at")
    sql = f"SELECT project, count(*) FROM traces WHERE {_REFUSED} AND {at} > ? AND {at} <= ?{scope} GROUP BY project"
    for p, n in conn.execute(sql, params):
        found[p] -= int(n)
    return {p: n for p, n in found.items() if n}


def _refusals(
    conn: Connection, since: float | None, until: float | None, width: int, scope: str, scoped: list[Any]
) -> tuple[dict[str, dict[int, dict[str, int]]], int | None]:
    """The limits' refusals per project, bucket number and limit; and the first bucket found."""
    where, params = _REFUSED + scope, list(scoped)
    if since is not None:
        where += " AND created_at >= ?"
        params.append(since)
    if until is not None:
        where += " AND created_at < ?"
        params.append(until)
    k = dialect_of(conn).period("created_at", width)
    sql = f"SELECT project, {k} AS k, error_code, count(*) FROM traces WHERE {where} GROUP BY project, k, error_code"
    out: dict[str, dict[int, dict[str, int]]] = {}
    first: int | None = None
    for name, bucket, code, n in conn.execute(sql, params):
        b = int(bucket)
        first = b if first is None else min(first, b)
        counts = out.setdefault(name, {}).setdefault(b, {"rate": 0, "budget": 0})
        counts[LIMIT_NAMES[code]] += int(n)
    return out, first


__all__ = ["LIMIT_NAMES", "REFUSAL_CODES", "WINDOW_SECONDS", "budgets", "month_end", "month_start"]
