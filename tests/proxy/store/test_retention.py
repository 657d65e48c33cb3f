"""Retention (store/retention.py, store/sqlite/retention.py): old traces deleted in batches, the
rollups equal to what is kept, the freed space reused or given back -- so a store under steady
traffic stops growing."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.request
from typing import Any

import pytest

from prysmai._proxy.store.retention import Retention
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine
from prysmai._proxy.store.sqlite.migrations import migrate

from ..conftest import KEY, FakeUpstream, Proxy
from .test_queries import assert_rollups_equal_rows, random_rows, row

DAY = 86400.0
BASE = 1_700_000_000.0


def _insert(engine: SQLiteEngine, conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    written, _, failed = engine.insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows])
    assert written == len(rows) and not failed


def _day_of_traffic(day: int, n: int = 150) -> list[dict[str, Any]]:
    rows = random_rows(n, seed=day, base=BASE + day * DAY)
    for r in rows:  # spread over the day (random_rows spans 50 hours), bodies of ~3 KB
        r["created_at"] = BASE + day * DAY + (r["created_at"] - BASE - day * DAY) % DAY
        r["response_body"] = "y" * 3000
    return rows


def _size(path: str) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return os.path.getsize(path) + (os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0)


def _sixty_days(path: str, retention_days: float | None) -> list[int]:
    """Sixty days of steady traffic, retention running at the end of each day; the store's size
    after each day."""
    engine = SQLiteEngine(path)
    conn = engine.open_for_writing()
    clock = [BASE]
    keep = None if retention_days is None else retention_days * DAY
    retention = Retention(engine, lambda: ({}, keep), batch=200, pause=0, clock=lambda: clock[0])
    sizes = []
    try:
        for day in range(60):
            _insert(engine, conn, _day_of_traffic(day))
            clock[0] = BASE + (day + 1) * DAY
            retention.run_once()
            sizes.append(_size(path))
        assert_rollups_equal_rows(conn)
        oldest = conn.execute("SELECT min(created_at) FROM traces").fetchone()[0]
        if keep is not None:
            assert oldest >= clock[0] - keep
            # No rollup row is left at zero for an hour that is gone.
            cutoff = clock[0] - keep
            assert not conn.execute(
                "SELECT 1 FROM rollup_hour WHERE requests <= 0 AND hour + 3600 <= ?", (cutoff,)
            ).fetchone()
    finally:
        retention.stop()
        conn.close()
    return sizes


def test_sixty_days_at_thirty_days_retention_the_store_stops_growing(tmp_path: Any) -> None:
    sizes = _sixty_days(str(tmp_path / "kept.db"), 30)
    assert sizes[-1] <= sizes[34] * 1.1, sizes  # level after the first deletions
    assert sizes[-1] < sizes[29] * 1.25, sizes
    # And without retention the same traffic keeps growing it (what the test would see if the
    # deletes did nothing).
    grown = _sixty_days(str(tmp_path / "all.db"), None)
    assert grown[-1] > grown[29] * 1.8, grown
    assert grown[-1] > sizes[-1] * 1.6


def test_a_store_from_before_incremental_vacuum_reuses_the_space(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE unrelated (a)")  # a store that already had tables: auto_vacuum stays off
    migrate(conn)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    sizes = _sixty_days(path, 30)
    assert sizes[-1] <= sizes[34] * 1.1, sizes
    SQLiteEngine(str(tmp_path / "new.db")).open_for_writing().close()
    new = sqlite3.connect(str(tmp_path / "new.db"))
    assert new.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # a new store gives space back
    new.close()


def test_each_project_its_own_retention_and_the_rest_the_flags(tmp_path: Any) -> None:
    engine = SQLiteEngine(str(tmp_path / "t.db"))
    conn = engine.open_for_writing()
    now = BASE + 100 * DAY
    rows = [
        row(now - age * DAY, project=project, latency_ms=5.0, total_tokens=3)
        for project in ("short", "forever", "gone", "default")
        for age in (0.5, 3, 20, 60)
    ]
    _insert(engine, conn, rows)
    plan = ({"short": 1 * DAY, "forever": None, "default": 30 * DAY}, 10 * DAY)
    retention = Retention(engine, lambda: plan, batch=1, pause=0, clock=lambda: now)
    assert retention.run_once() == 3 + 2 + 1  # short: 3, gone (no project now): 2, default: 1
    left = sorted((p, round((now - c) / DAY, 1)) for p, c in conn.execute("SELECT project, created_at FROM traces"))
    assert left == [
        ("default", 0.5),
        ("default", 3.0),
        ("default", 20.0),
        ("forever", 0.5),
        ("forever", 3.0),
        ("forever", 20.0),
        ("forever", 60.0),
        ("gone", 0.5),
        ("gone", 3.0),
        ("short", 0.5),
    ]
    assert_rollups_equal_rows(conn)
    assert retention.counters()["deleted"] == 6
    conn.close()


def test_a_retention_pass_waits_for_the_writer_and_never_blocks_a_reader(tmp_path: Any) -> None:
    path = str(tmp_path / "t.db")
    engine = SQLiteEngine(path)
    conn = engine.open_for_writing()
    _insert(engine, conn, [row(BASE - 90 * DAY + i) for i in range(1000)])
    reader = engine.read_connection()
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM traces").fetchone()[0] == 1000  # a snapshot held open
    conn.execute("BEGIN IMMEDIATE")  # the writer holds the lock for a moment
    retention = Retention(engine, lambda: ({}, 30 * DAY), batch=100, pause=0, interval=3600)
    retention.start()
    time.sleep(0.3)
    assert retention.deleted == 0  # waiting for the lock
    conn.execute("COMMIT")
    deadline = time.monotonic() + 10
    while retention.deleted < 1000:
        assert time.monotonic() < deadline, retention.counters()
        time.sleep(0.02)
    retention.stop()
    assert reader.execute("SELECT count(*) FROM traces").fetchone()[0] == 1000  # its snapshot, unblocked
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM traces").fetchone()[0] == 0
    reader.close()
    conn.close()


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_the_proxy_deletes_expired_traces_at_start_and_keeps_its_stats_right(
    fake: FakeUpstream, tmp_path: Any, writer: str
) -> None:
    path = str(tmp_path / "t.db")
    engine = SQLiteEngine(path)
    conn = engine.open_for_writing()
    now = time.time()
    _insert(engine, conn, [row(now - 45 * DAY + i, total_tokens=7) for i in range(300)])
    _insert(engine, conn, [row(now - 2 * DAY + i, total_tokens=5) for i in range(20)])
    conn.close()
    proxy = Proxy(
        "--db",
        path,
        "--upstream",
        fake.url,  # type: ignore[attr-defined]
        "--key",
        KEY,
        "--retention",
        "30d",
        "--trace-writer",
        writer,
        OPENAI_API_KEY="sk-upstream-credential-0000",
    ).start()
    try:
        deadline = time.monotonic() + 20
        while True:
            request = urllib.request.Request(
                proxy.base + "/stats?since=all", headers={"Authorization": f"Bearer {KEY}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                stats = json.loads(response.read())
            if stats["requests"] == 20:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        assert stats["total_tokens"] == 100  # the rollups hold what is kept, no more
        request = urllib.request.Request(proxy.base + "/health", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["retention"]["deleted"] == 300
    finally:
        log = proxy.stop()
    assert "retention: deleted 300 trace(s)" in log
