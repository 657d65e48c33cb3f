"""Retention on the PostgreSQL store (store/postgres/engine.py): whole day partitions dropped when
nothing in them is kept, row deletes (taken out of the rollups) where projects of longer retention
share a day, and the rollups then equal to what is left -- checked against a SQLite store folded
from scratch from the rows PostgreSQL kept."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from typing import Any

from prysmai._proxy.store import Store, TraceFilter, queries, slices
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.retention import Retention
from prysmai._proxy.store.rollups import KEY_HOUR_ROLLUPS
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from .test_postgres import close_enough
from .test_queries import random_rows, row

DAY = 86400.0
BASE = 1_700_006_400.0  # a UTC midnight


def _as_tuples(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(r.get(c) for c in COLUMNS) for r in rows]


def _day(day: int, n: int, project: str = "default") -> list[tuple[Any, ...]]:
    rows = random_rows(n, seed=day, base=BASE + day * DAY, project=project)
    for r in rows:
        r["created_at"] = BASE + day * DAY + (r["created_at"] - BASE - day * DAY) % DAY
    return _as_tuples(rows)


def _partitions(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'trace_rows'::regclass ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def _assert_rollups_match_rows(pg_url: str, tmp_path: Any, now: float) -> None:
    """Every aggregate the dashboard reads answers on PostgreSQL as on a SQLite store holding the
    same rows (whose rollups are folded from scratch)."""
    conn = PostgresEngine(pg_url).connect()
    try:
        cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM traces")
        kept = [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()
    path = str(tmp_path / f"kept-{len(kept)}.db")
    with SQLiteEngine(path).open_for_writing() as sconn:
        rows = [list(r) for r in kept]
        meta = COLUMNS.index("metadata")
        for r in rows:  # JSONB comes back parsed
            if r[meta] is not None and not isinstance(r[meta], str):
                r[meta] = json.dumps(r[meta])
        insert_rows(sconn, [tuple(r) for r in rows])
    sqlite_store, pg_store = Store.existing(path, read_time_limit=None), Store.existing(pg_url, read_time_limit=None)
    assert sqlite_store is not None and pg_store is not None
    try:
        for f in (
            TraceFilter(),
            TraceFilter(project="web"),
            TraceFilter(since=now - 5 * DAY, until=now),
            # A week whose first day is mostly inside it: that day is its rollup less the rest.
            TraceFilter(since=math.floor(now / DAY) * DAY - 6.8 * DAY, until=now),
        ):
            for fn, args in (
                (queries.stats, (f,)),
                (queries.overview, (f,)),
                (queries.breakdown, (f, "model", 10)),
                (queries.breakdown, (f, "user_id", 10)),
                # The all-time rollups (version 6) after whole days dropped and rows deleted.
                (queries.breakdown, (f, "session_id", 3)),
                (queries.overview_page, (f, 86400, queries.BREAKDOWNS, 5)),
                (queries.users, (f,)),
                (queries.sessions, (f,)),
                # The hourly histograms by model (version 9): a 2-hour split and a model's series
                # (over the range of days: all time, they would be too many buckets).
                *(
                    [
                        (slices.group_series, (f, "model", 7200)),
                        (queries.timeseries, (dataclasses.replace(f, model="a"), 7200)),
                        # The rollups by quarter hour (version 11): a day's page of 15-minute buckets.
                        (queries.overview_page, (dataclasses.replace(f, since=now - DAY - 0.5), 900, (), 5)),
                    ]
                    if f.since is not None
                    else []
                ),
            ):
                a, b = sqlite_store.read_sync(fn, *args), pg_store.read_sync(fn, *args)
                assert close_enough(a, b), (fn.__name__, f)
    finally:
        sqlite_store.close()
        pg_store.close()
    # Row for row, the hourly histograms by model equal those folded from scratch (a delete leaves
    # a bucket's bounds as they were: its count is compared).
    hist = "SELECT period, project, model, endpoint, metric, bucket, n FROM rollup_hist_model_hour WHERE n <> 0"
    # PostgreSQL's rollups by quarter hour (version 11; SQLite keeps none), added up by hour, hold
    # what SQLite's hourly ones hold.
    quarters = {
        "SELECT hour, project, model, endpoint, status, requests, total_tokens FROM rollup_hour WHERE requests <> 0": (
            "SELECT period / 3600 * 3600, project, model, endpoint, status, sum(requests), sum(total_tokens) "
            "FROM rollup_quarter GROUP BY 1, 2, 3, 4, 5 HAVING sum(requests) <> 0"
        ),
        "SELECT period, project, metric, bucket, n FROM rollup_hist_hour WHERE n <> 0": (
            "SELECT period / 3600 * 3600, project, metric, bucket, sum(n) FROM rollup_hist_quarter "
            "GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0"
        ),
    }
    with sqlite3.connect(path) as sconn:
        want = sorted(tuple(r) for r in sconn.execute(hist))
        want_hours = [sorted(tuple(r) for r in sconn.execute(sql)) for sql in quarters]
    conn = PostgresEngine(pg_url).connect()
    try:
        got = sorted(tuple(r) for r in conn.execute(hist).fetchall())
        got_hours = [sorted(tuple(r) for r in conn.execute(sql).fetchall()) for sql in quarters.values()]
    finally:
        conn.close()
    assert got == want and want
    assert got_hours == want_hours and all(want_hours)
    _assert_key_hours_match_rows(pg_url, kept)


def _assert_key_hours_match_rows(pg_url: str, kept: list[tuple[Any, ...]]) -> None:
    """Row for row, the hourly per-key rollups (version 10, PostgreSQL's own) hold the totals of
    the rows kept, added up here from the rows (a delete leaves a row's first and last times as
    they were: its totals are compared)."""
    at = {c: COLUMNS.index(c) for c in ("created_at", "project", "status", "total_tokens", "cost_usd")}
    conn = PostgresEngine(pg_url).connect()
    try:
        for column, table in KEY_HOUR_ROLLUPS.items():
            want: dict[tuple[Any, ...], list[Any]] = {}
            for r in kept:
                key = (math.floor(r[at["created_at"]] / 3600) * 3600, r[at["project"]], r[COLUMNS.index(column)] or "")
                tokens, cost = r[at["total_tokens"]], r[at["cost_usd"]]
                totals = want.setdefault(key, [0, 0, 0, 0, 0.0, 0, 0])
                for i, add in enumerate(
                    (
                        1,
                        r[at["status"]] in ("error", "timeout"),
                        r[at["status"]] == "cancelled",
                        tokens or 0,
                        cost or 0.0,
                        cost is None and tokens is not None,
                        cost is None and tokens is None,
                    )
                ):
                    totals[i] += add
            got = {
                (period, project, k): list(totals)
                for period, project, k, *totals in conn.execute(
                    f"SELECT period, project, {column}, requests, errors, cancelled, total_tokens, cost_usd, "
                    f"unpriced, no_usage FROM {table} WHERE requests <> 0"
                ).fetchall()
            }
            assert close_enough(dict(sorted(got.items())), dict(sorted(want.items()))), table
    finally:
        conn.close()


def test_a_month_at_ten_days_retention_drops_whole_days_and_frees_their_disk(pg_url: str, tmp_path: Any) -> None:
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    clock = [BASE]
    # As the proxy plans it with --retention 10d and one project.
    retention = Retention(engine, lambda: ({"default": 10 * DAY}, 10 * DAY), batch=100, pause=0, clock=lambda: clock[0])
    sizes = []
    try:
        for day in range(30):
            engine.insert_rows(conn, _day(day, 60))
            clock[0] = BASE + (day + 1) * DAY + 60
            retention.run_once()
            sizes.append(
                conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                    "WHERE inhparent IN ('trace_rows'::regclass, 'trace_bodies'::regclass)"
                ).fetchone()[0]
            )
        # Ten whole days kept (the days that ended before the cut are gone, whole).
        assert _partitions(conn) == [f"trace_rows_d{int(BASE / DAY) + d}" for d in range(20, 30)]
        oldest = conn.execute("SELECT min(created_at) FROM traces").fetchone()[0]
        assert oldest >= clock[0] - 10 * DAY - DAY
        assert conn.execute("SELECT count(*) FROM traces").fetchone()[0] == 10 * 60
        # No rollup row left for a day that is gone.
        cut = BASE + 20 * DAY
        assert not conn.execute("SELECT 1 FROM rollup_hour WHERE hour < %s", [cut]).fetchone()
        assert not conn.execute("SELECT 1 FROM rollup_user_day WHERE period < %s", [cut]).fetchone()
    finally:
        retention.stop()
        conn.close()
    assert sizes[-1] <= sizes[12] * 1.1, sizes  # level once deletions began: the disk is given back
    assert retention.counters()["deleted"] == 20 * 60
    _assert_rollups_match_rows(pg_url, tmp_path, clock[0])


def test_projects_sharing_days_keep_their_own_retention(pg_url: str, tmp_path: Any) -> None:
    """The SQLite test's plan (test_retention.py) on PostgreSQL: the same traces are left, row
    deletes where projects share a day, and the rollups follow."""
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    now = BASE + 100 * DAY
    rows = [
        row(now - age * DAY, project=project, latency_ms=5.0, total_tokens=3)
        for project in ("short", "forever", "gone", "default", "web")
        for age in (0.5, 3, 20, 60)
    ]
    engine.insert_rows(conn, _as_tuples(rows))
    plan = ({"short": 1 * DAY, "forever": None, "default": 30 * DAY, "web": 2 * DAY}, 10 * DAY)
    retention = Retention(engine, lambda: plan, batch=1, pause=0, clock=lambda: now)
    try:
        assert retention.run_once() == 3 + 2 + 1 + 3  # short: 3, gone: 2, default: 1, web: 3
        left = sorted(
            (p, round((now - c) / DAY, 1)) for p, c in conn.execute("SELECT project, created_at FROM traces").fetchall()
        )
        # The 60-day-old day still holds a trace of "forever": kept, its other traces deleted row by row.
        assert ("forever", 60.0) in left and len(left) == 20 - 9
        assert sorted(p for p, age in left if age > 10) == ["default", "forever", "forever"]
        # A second pass finds nothing more; the days emptied by row deletes are dropped.
        assert retention.run_once() == 0
        days = _partitions(conn)
        assert len(days) == len({int((now - age * DAY) // DAY) for age in (0.5, 3, 20, 60)})
    finally:
        retention.stop()
        conn.close()
    _assert_rollups_match_rows(pg_url, tmp_path, now)


def test_a_late_trace_of_a_day_another_replica_dropped_is_still_stored(pg_url: str) -> None:
    """A replica's writer knows which day partitions exist; another replica's retention drops
    one; a late trace for that day (shipped from an outbox after an outage) is stored all the same."""
    writer, other = PostgresEngine(pg_url), PostgresEngine(pg_url)
    wconn, oconn = writer.open_for_writing(), other.open_for_writing()
    try:
        writer.insert_rows(wconn, _day(0, 5))
        assert other.delete_expired(oconn, None, BASE + 2 * DAY, (), 100) == 5
        assert _partitions(oconn) == []
        late = _day(0, 3)
        late = [tuple(f"{i:032x}" if c == "id" else v for c, v in zip(COLUMNS, r)) for i, r in enumerate(late)]
        assert writer.insert_rows(wconn, late) == (3, 0, 0)
        assert wconn.execute("SELECT count(*) FROM traces").fetchone()[0] == 3
        assert wconn.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0] == 3
    finally:
        wconn.close()
        oconn.close()


def test_a_day_a_reader_holds_is_kept_until_the_reader_is_gone(pg_url: str) -> None:
    """Retention waits a moment for a day's lock, then leaves the day to the next pass: its rows
    are deleted one by one meanwhile, and ``reclaim`` drops the emptied days, the busy one once
    its reader has gone."""
    engine = PostgresEngine(pg_url)
    conn, reader = engine.open_for_writing(), engine.connect()
    first = int(BASE / DAY)
    try:
        engine.insert_rows(conn, _day(0, 5) + _day(1, 5))
        with reader.transaction():  # a read of the first day, under way throughout
            assert reader.execute(f"SELECT count(*) FROM trace_rows_d{first}").fetchone()[0] == 5
            assert engine.delete_expired(conn, None, BASE + 2 * DAY, (), 100) == 10
            # The walk stopped at the busy day: both days are left, emptied row by row.
            assert _partitions(conn) == [f"trace_rows_d{first}", f"trace_rows_d{first + 1}"]
            assert conn.execute("SELECT count(*) FROM traces").fetchone()[0] == 0
            assert engine.reclaim(conn) == (1, True)
            assert _partitions(conn) == [f"trace_rows_d{first}"]
        assert engine.reclaim(conn) == (1, True)
        assert _partitions(conn) == []
        assert engine.reclaim(conn) == (0, True)
        assert not conn.execute("SELECT 1 FROM rollup_hour WHERE requests > 0").fetchone()
    finally:
        reader.close()
        conn.close()
