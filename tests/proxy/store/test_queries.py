"""The query layer (prysmai._proxy.store.queries) and the schema migration, on real SQLite stores
written through the real TraceWriter writer, with expectations computed by hand or by brute force."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from prysmai._proxy.store import QueryTimeout, Store, StoreError, queries
from prysmai._proxy.store.queries import TraceFilter
from prysmai._proxy.store.reader import ReadRunner
from prysmai._proxy.store.rollups import bucket_bounds
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SCHEMA_VERSION, SQLiteEngine, insert_rows, rollups
from prysmai._proxy.store.writer import TraceWriter

from .sqltrace import statements_run

HOUR = 3600.0
BOUND = math.exp(1 / 32) - 1  # the documented percentile error bound (3.2 %)

# The schema prysmai 0.1.0 wrote (schema 1), copied verbatim: the migration must accept it as is.
V1_DDL = """
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    method TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    http_status INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    cost_usd REAL,
    request_body TEXT,
    response_body TEXT,
    error TEXT,
    user_id TEXT,
    session_id TEXT,
    metadata TEXT,
    notes TEXT,
    response_model TEXT,
    provider_request_id TEXT
);
CREATE INDEX IF NOT EXISTS traces_created_at ON traces (created_at);
CREATE INDEX IF NOT EXISTS traces_model ON traces (model, created_at);
CREATE INDEX IF NOT EXISTS traces_user ON traces (user_id, created_at);
CREATE INDEX IF NOT EXISTS traces_session ON traces (session_id, created_at);
PRAGMA user_version = 1;
"""
V1_COLUMNS = COLUMNS[: COLUMNS.index("provider_request_id") + 1]
V2_COLUMNS = COLUMNS[: COLUMNS.index("key_id") + 1]
# The schema prysmai wrote before projects (schema 2), dumped verbatim from a store it made.
V2_DDL = (Path(__file__).parents[1] / "schema_v2.sql").read_text()
#: Schema 4's indexes (a new store's, and a migrated one's).
INDEXES = {
    "traces_agg",
    "traces_project",
    "traces_user3",
    "traces_session3",
    "traces_key3",
    "traces_by_cost",
    "traces_by_latency",
    "traces_by_ttft",
    "traces_by_tokens",
    # Schema 6: the scores' (the table is there, empty, in a migrated store too).
    "scores_by_trace_name",  # (schema 9; scores_by_trace before)
    "scores_by_name",
    "scores_by_time",
    # Schema 8: the limits' refusals (a partial index of those rows only).
    "traces_limited",
    # Schema 9: the all-time per-key rollups' top entries.
    "rollup_user_all_top",
    "rollup_session_all_top",
}
#: Its triggers: the rollups' fold (once per batch) and delete, the search index's.
#: The triggers of a store: folding (rollups, the search index, the export outbox) once per batch.
TRIGGERS = [
    "export_enqueue",
    "rollup_fold",
    "scored_rollup_delete",
    "search_delete",
    "search_fold",
    "traces_rollup_delete",
]

_counter = iter(range(1, 10**9))


def row(created_at: float, **kw: Any) -> dict[str, Any]:
    return {
        "id": kw.pop("id", None) or f"{next(_counter):032x}",
        "created_at": created_at,
        "method": "POST",
        "endpoint": "chat/completions",
        "model": "m",
        "stream": 0,
        "status": "success",
        "http_status": 200,
        "latency_ms": 10.0,
        **kw,
    }


def write(path: str, rows: list[dict[str, Any]]) -> None:
    """Through the real writer thread, as the proxy writes."""
    store = TraceWriter(SQLiteEngine(path), lambda item: item, queue_size=len(rows) + 10)
    store.open()
    for r in rows:
        assert store.submit(r)
    store.close()
    assert store.written == len(rows) and store.failed == 0


def db(tmp_path: Any, rows: list[dict[str, Any]]) -> sqlite3.Connection:
    path = str(tmp_path / "t.db")
    write(path, rows)
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    return conn


def nearest_rank(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * pct / 100)) - 1]


# -- migration -----------------------------------------------------------------------------------
def test_a_v1_store_is_migrated_in_place_keeping_every_row(tmp_path: Any) -> None:
    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    rng = random.Random(7)
    base = 1_700_000_000.0
    rows = []
    for i in range(500):
        r = {c: None for c in V1_COLUMNS}
        r.update(
            id=f"{i:032x}",
            created_at=base + i * 37.0,
            method="POST",
            endpoint=rng.choice(["chat/completions", "embeddings"]),
            model=rng.choice(["a", "b", None]),
            stream=i % 2,
            status=rng.choice(["success", "success", "error"]),
            latency_ms=rng.choice([None, rng.uniform(1, 5000)]),
            ttft_ms=rng.uniform(1, 100) if i % 2 else None,
            total_tokens=rng.choice([None, rng.randint(1, 900)]),
            cost_usd=rng.choice([None, rng.uniform(0, 0.01)]),
            request_body='{"messages": []}',
            user_id=rng.choice(["u1", "u2", None]),
            session_id=f"s{i % 7}",
            metadata='{"env": "prod"}' if i % 3 else None,
        )
        rows.append(r)
    conn.executemany(
        f"INSERT INTO traces ({', '.join(V1_COLUMNS)}) VALUES ({', '.join('?' * len(V1_COLUMNS))})",
        [tuple(r[c] for c in V1_COLUMNS) for r in rows],
    )
    conn.commit()
    before = conn.execute("SELECT * FROM traces ORDER BY id").fetchall()
    conn.close()

    # The proxy's start-up path: open_db migrates, then the writer appends with the new column.
    store = TraceWriter(SQLiteEngine(path), lambda item: item)
    store.open()
    store.submit(row(base + 99_999, id="f" * 32, key_id="key_0123456789ab", latency_ms=3.0))
    store.close()

    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    after = conn.execute(f"SELECT {', '.join(V1_COLUMNS)} FROM traces WHERE key_id IS NULL ORDER BY id").fetchall()
    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    # Every row of 0.1.0 is in the default project, sent to no named provider.
    assert [tuple(r) for r in conn.execute("SELECT project, provider, count(*) FROM traces GROUP BY 1, 2")] == [
        ("default", None, 501)
    ]
    assert queries.overview(conn, TraceFilter(project="default"))["requests"] == 501
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert indexes == INDEXES
    assert conn.execute("SELECT key_id FROM traces WHERE created_at = ?", (base + 99_999,)).fetchone()[0] == (
        "key_0123456789ab"
    )
    # The rollups were back-filled: aggregates from them equal the raw rows'.
    everything = queries.overview(conn, TraceFilter())
    raw = queries.overview(conn, TraceFilter(text='"messages"'))  # a text filter reads raw rows only
    assert conn.execute("SELECT count(*) FROM traces WHERE request_body IS NULL").fetchone()[0] == 1
    assert everything["requests"] == 501 and raw["requests"] == 500
    assert raw["errors"] == everything["errors"] == sum(r["status"] in ("error", "timeout") for r in rows)
    # A cost is unknown for want of a price (usage reported) or of usage; the writer's row has neither.
    unpriced = sum(r["cost_usd"] is None and r["total_tokens"] is not None for r in rows)
    no_usage = sum(r["cost_usd"] is None and r["total_tokens"] is None for r in rows)
    assert raw["unpriced"] == everything["unpriced"] == unpriced
    assert raw["no_usage"] == everything["no_usage"] - 1 == no_usage
    assert raw["total_tokens"] == everything["total_tokens"] == sum(r["total_tokens"] or 0 for r in rows)
    assert everything["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in rows))
    assert raw["latency_ms"] == queries.overview(conn, TraceFilter(until=base + 99_000))["latency_ms"]
    conn.close()


def test_migration_is_idempotent(tmp_path: Any) -> None:
    path = str(tmp_path / "t.db")
    SQLiteEngine(path).open_for_writing().close()
    SQLiteEngine(path).open_for_writing().close()
    conn = sqlite3.connect(path)
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY 1")]
    assert triggers == TRIGGERS  # folding runs once per batch, not per row
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert indexes == INDEXES
    conn.close()


def test_rows_inserted_by_other_means_are_folded_when_the_store_is_opened(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    path = str(tmp_path / "t.db")
    write(path, [row(base, latency_ms=2.0)])
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO traces (id, created_at, method, endpoint, model, status, latency_ms, cost_usd) "
        "VALUES ('x', ?, 'POST', 'chat/completions', 'm', 'error', 8.0, 0.25)",
        (base + 60,),
    )
    conn.commit()
    conn.close()
    read = SQLiteEngine(path).open_existing()  # as prysmai stats and the dashboard open it
    assert read is not None
    got = queries.overview(read, TraceFilter())
    assert (got["requests"], got["errors"], got["cost_usd"]) == (2, 1, 0.25)
    read.execute("DELETE FROM traces WHERE id = 'x'")
    got = queries.overview(read, TraceFilter())
    assert (got["requests"], got["errors"], got["cost_usd"]) == (1, 0, None)  # none priced
    read.close()
    write(path, [row(base + 120, latency_ms=4.0)])  # the writer folds its own rows only once
    read = SQLiteEngine(path).open_existing()
    assert read is not None
    assert queries.overview(read, TraceFilter())["requests"] == 2
    assert read.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0] == 2
    read.close()


def v2_store(path: str, rows: list[dict[str, Any]]) -> None:
    """A store as prysmai wrote it at schema 2: its DDL, its rows, folded by its own trigger."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(V2_DDL)
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO traces ({', '.join(V2_COLUMNS)}) VALUES ({', '.join('?' * len(V2_COLUMNS))})",
        [tuple(r.get(c) for c in V2_COLUMNS) for r in rows],
    )
    # What schema 2's writer did after each batch: move the watermark; its trigger folds.
    conn.execute("UPDATE rollup_state SET fold_from = folded_rowid, folded_rowid = (SELECT max(rowid) FROM traces)")
    conn.execute("COMMIT")
    conn.close()


def random_rows(n: int, seed: int, base: float = 1_700_000_000.0, **fixed: Any) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        row(
            base + rng.uniform(0, 50 * HOUR),
            endpoint=rng.choice(["chat/completions", "embeddings", "responses"]),
            model=rng.choice(["a", "b", None]),
            stream=rng.randint(0, 1),
            status=rng.choice(["success", "success", "success", "error", "timeout"]),
            latency_ms=rng.choice([None, rng.lognormvariate(5, 1.2)]),
            ttft_ms=rng.choice([None, rng.lognormvariate(3, 1)]),
            prompt_tokens=rng.randint(0, 500),
            completion_tokens=rng.randint(0, 500),
            total_tokens=rng.choice([None, rng.randint(1, 900)]),
            cost_usd=rng.choice([None, 0.0, rng.uniform(0, 0.01)]),
            request_body='{"messages": ["hello"]}',
            response_body=rng.choice([None, "x" * rng.randint(0, 9000)]),  # some rows overflow a page
            user_id=rng.choice(["u1", "u2", None]),
            session_id=rng.choice([f"s{i}" for i in range(9)] + [None]),
            key_id=rng.choice(["key_aaaaaaaaaaaa", "key_bbbbbbbbbbbb", None]),
            metadata=rng.choice(['{"env": "prod"}', None]),
            **fixed,
        )
        for _ in range(n)
    ]


def assert_rollups_equal_rows(conn: sqlite3.Connection) -> None:
    """Every rollup holds exactly what its rows say (the rollups regrouped from scratch)."""
    hour = conn.execute(
        "SELECT hour, project, model, endpoint, status, requests, total_tokens, unpriced, no_usage FROM rollup_hour "
        "WHERE requests > 0 ORDER BY 1, 2, 3, 4, 5"
    ).fetchall()
    want = conn.execute(
        "SELECT CAST(created_at / 3600 AS INTEGER) * 3600, project, coalesce(model, ''), endpoint, status, "
        "count(*), coalesce(sum(total_tokens), 0), sum(cost_usd IS NULL AND total_tokens IS NOT NULL), "
        "sum(cost_usd IS NULL AND total_tokens IS NULL) FROM traces "
        "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
    ).fetchall()
    assert [tuple(r) for r in hour] == [tuple(r) for r in want]
    for column, table in (("user_id", "rollup_user_day"), ("session_id", "rollup_session_day")):
        got = conn.execute(
            f"SELECT period, project, {column}, requests, errors, cancelled, total_tokens, round(cost_usd, 9), "
            f"unpriced, no_usage FROM {table} WHERE requests > 0 ORDER BY 1, 2, 3"
        ).fetchall()
        want = conn.execute(
            f"SELECT CAST(created_at / 86400 AS INTEGER) * 86400, project, coalesce({column}, ''), count(*), "
            "sum(status IN ('error', 'timeout')), sum(status = 'cancelled'), coalesce(sum(total_tokens), 0), "
            "round(coalesce(sum(cost_usd), 0), 9), sum(cost_usd IS NULL AND total_tokens IS NOT NULL), "
            f"sum(cost_usd IS NULL AND total_tokens IS NULL) FROM traces GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        assert [tuple(r) for r in got] == [tuple(r) for r in want], table
    for table, seconds, dims in (
        ("rollup_hist_hour", 3600, "project"),
        ("rollup_hist_day", 86400, "project, model, endpoint"),
        ("rollup_hist_model_hour", 3600, "project, model, endpoint"),
    ):
        got = conn.execute(f"SELECT metric, sum(n) FROM {table} GROUP BY 1 ORDER BY 1").fetchall()
        counts = conn.execute("SELECT count(ttft_ms), count(latency_ms) FROM traces").fetchone()
        want_counts = [(m, n) for m, n in (("latency", counts[1]), ("ttft", counts[0])) if n]
        assert [tuple(r) for r in got] == want_counts, table
        keys = conn.execute(f"SELECT DISTINCT period, {dims} FROM {table} WHERE n > 0 ORDER BY 1, 2").fetchall()
        dim_sql = ", ".join("coalesce(model, '')" if d == "model" else d for d in dims.split(", "))
        want_keys = conn.execute(
            f"SELECT DISTINCT CAST(created_at / {seconds} AS INTEGER) * {seconds}, {dim_sql} FROM traces "
            "WHERE latency_ms IS NOT NULL OR ttft_ms IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
        assert sorted(tuple(k) for k in keys) == sorted(tuple(k) for k in want_keys), table
    assert_all_time_rollups_equal_rows(conn)


_BUCKET = "CAST(ln(max({0}, 0.001) * 1000) * 16 AS INTEGER)"


def assert_all_time_rollups_equal_rows(conn: sqlite3.Connection) -> None:
    """Schema 9's rollups -- all time, and the daily histograms by project -- and schema 10's hourly
    histograms by model hold exactly what the rows say, with no row below zero."""
    totals = (
        "count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
        "coalesce(sum(total_tokens), 0), round(coalesce(sum(cost_usd), 0), 9), "
        "sum(cost_usd IS NULL AND total_tokens IS NOT NULL), sum(cost_usd IS NULL AND total_tokens IS NULL)"
    )
    got = conn.execute(
        "SELECT project, model, endpoint, status, requests, prompt_tokens, completion_tokens, total_tokens, "
        "round(cost_usd, 9), unpriced, no_usage FROM rollup_all WHERE requests <> 0 ORDER BY 1, 2, 3, 4"
    ).fetchall()
    want = conn.execute(
        f"SELECT project, coalesce(model, ''), endpoint, status, {totals} FROM traces GROUP BY 1, 2, 3, 4 "
        "ORDER BY 1, 2, 3, 4"
    ).fetchall()
    assert [tuple(r) for r in got] == [tuple(r) for r in want], "rollup_all"
    key_totals = (
        "count(*), sum(status IN ('error', 'timeout')), sum(status = 'cancelled'), coalesce(sum(total_tokens), 0), "
        "round(coalesce(sum(cost_usd), 0), 9), sum(cost_usd IS NULL AND total_tokens IS NOT NULL), "
        "sum(cost_usd IS NULL AND total_tokens IS NULL)"
    )
    for column, table in (("user_id", "rollup_user_all"), ("session_id", "rollup_session_all")):
        got = conn.execute(
            f"SELECT project, {column}, requests, errors, cancelled, total_tokens, round(cost_usd, 9), unpriced, "
            f"no_usage FROM {table} WHERE requests <> 0 ORDER BY 1, 2"
        ).fetchall()
        want = conn.execute(
            f"SELECT * FROM (SELECT project, coalesce({column}, ''), {key_totals} FROM traces GROUP BY 1, 2 "
            f"UNION ALL SELECT '', coalesce({column}, ''), {key_totals} FROM traces GROUP BY 2) ORDER BY 1, 2"
        ).fetchall()
        assert [tuple(r) for r in got] == [tuple(r) for r in want], table
    for table, keys, rows_keys in (
        ("rollup_hist_all", "project, model, endpoint", "project, coalesce(model, ''), endpoint"),
        ("rollup_hist_project_day", "period, project", "CAST(created_at / 86400 AS INTEGER) * 86400, project"),
        (
            "rollup_hist_model_hour",
            "period, project, model, endpoint",
            "CAST(created_at / 3600 AS INTEGER) * 3600, project, coalesce(model, ''), endpoint",
        ),
    ):
        got = conn.execute(
            f"SELECT {keys}, metric, bucket, n FROM {table} WHERE n <> 0 ORDER BY {keys}, metric, bucket"
        ).fetchall()
        want = conn.execute(
            " UNION ALL ".join(
                f"SELECT * FROM (SELECT {rows_keys}, '{metric}' AS metric, {_BUCKET.format(column)} AS bucket, "
                f"count(*) FROM traces WHERE {column} IS NOT NULL GROUP BY {rows_keys}, bucket)"
                for metric, column in (("latency", "latency_ms"), ("ttft", "ttft_ms"))
            )
            + f" ORDER BY {', '.join(str(i + 1) for i in range(len(keys.split(', ')) + 2))}"
        ).fetchall()
        assert [tuple(r) for r in got] == [tuple(r) for r in want], table


def test_a_v2_store_is_migrated_in_place_keeping_every_row_in_the_default_project(tmp_path: Any) -> None:
    path = str(tmp_path / "v2.db")
    rows = random_rows(400, seed=11)
    v2_store(path, rows)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM traces WHERE rowid % 10 = 0")  # schema 2's delete trigger unfolds them
    conn.commit()
    before = conn.execute(f"SELECT {', '.join(V2_COLUMNS)} FROM traces ORDER BY id").fetchall()
    v2_overview = conn.execute("SELECT sum(requests), sum(unpriced), sum(total_tokens) FROM rollup_hour").fetchone()
    conn.close()
    assert v2_overview[0] == len(before) == 360

    # The proxy's start-up: open_db migrates; the writer then stores traces of a named project.
    store = TraceWriter(SQLiteEngine(path), lambda item: item)
    store.open()
    store.submit(row(1_700_000_000.0 + 5, id="f" * 32, project="web", provider="ollama", cost_usd=0.0))
    store.close()

    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after = conn.execute(f"SELECT {', '.join(V2_COLUMNS)} FROM traces WHERE id <> ? ORDER BY id", ("f" * 32,))
    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    groups = conn.execute("SELECT project, provider, count(*) FROM traces GROUP BY 1, 2 ORDER BY 1")
    assert [tuple(r) for r in groups] == [
        ("default", None, 360),
        ("web", "ollama", 1),
    ]
    assert_rollups_equal_rows(conn)
    default = queries.overview(conn, TraceFilter(project="default"))
    # Schema 2 counted every unknown cost as unpriced; schema 4 tells a missing price from missing usage.
    assert (default["requests"], default["unpriced"] + default["no_usage"], default["total_tokens"]) == tuple(
        v2_overview
    )
    web = queries.overview(conn, TraceFilter(project="web"))
    assert (web["requests"], web["cost_usd"], web["unpriced"]) == (1, 0.0, 0)  # priced at 0: known free
    assert queries.overview(conn, TraceFilter())["requests"] == 361
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert indexes == INDEXES
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == set(TRIGGERS)
    conn.close()


def test_a_schema_2_store_with_the_old_insert_trigger_is_migrated(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    path = str(tmp_path / "t.db")
    v2_store(path, [row(base + i, latency_ms=float(i + 1)) for i in range(5)])
    conn = sqlite3.connect(path, isolation_level=None)
    # As the first schema 2 left it: no watermark table (nor its trigger), a trigger that counted
    # each inserted row.
    conn.execute("DROP TABLE rollup_state")
    conn.execute(f"CREATE TRIGGER {rollups.OLD_INSERT_TRIGGER} AFTER INSERT ON traces BEGIN SELECT 1; END")
    conn.close()
    write(path, [row(base + 10, latency_ms=9.0)])
    read = SQLiteEngine(path).open_existing()
    assert read is not None
    names = [r[0] for r in read.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    assert sorted(names) == TRIGGERS
    assert queries.overview(read, TraceFilter())["requests"] == 6
    assert read.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0] == 6
    read.close()


@pytest.mark.parametrize("old", [1, 2])
def test_a_failed_migration_leaves_the_store_as_it_was(tmp_path: Any, old: int) -> None:
    path = str(tmp_path / "old.db")
    if old == 2:
        v2_store(path, [row(1_700_000_000.0 + i) for i in range(20)])
    else:
        conn = sqlite3.connect(path)
        conn.executescript(V1_DDL)
        conn.execute("INSERT INTO traces (id, created_at, method, endpoint, status) VALUES ('a', 1, 'POST', 'x', 'ok')")
        conn.commit()
        conn.close()
    conn = sqlite3.connect(path)
    # A table in the way of schema 3's new index: the last step fails, after the others ran.
    conn.execute("CREATE TABLE traces_project (x)")
    conn.commit()
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    content = conn.execute("SELECT * FROM traces ORDER BY id").fetchall()
    conn.close()
    with pytest.raises(StoreError, match="traces_project"):
        SQLiteEngine(path).open_for_writing()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == old
    assert conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert conn.execute("SELECT * FROM traces ORDER BY id").fetchall() == content
    conn.execute("DROP TABLE traces_project")
    conn.commit()
    conn.close()
    SQLiteEngine(path).open_for_writing().close()  # the next start-up migrates it
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*), min(project) FROM traces").fetchone() == (len(content), "default")
    conn.close()


def test_rollups_follow_inserts_and_deletes(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    rows = [row(base + i * 600, latency_ms=float(i + 1), cost_usd=0.5 if i % 2 else None) for i in range(24)]
    conn = db(tmp_path, rows)
    conn.execute("DELETE FROM traces WHERE created_at < ?", (base + 6 * 600,))
    got = queries.overview(conn, TraceFilter(until=base + 10 * HOUR))
    # Half the rows have no cost and no usage: "no usage", not "unpriced".
    assert got["requests"] == 18 and got["no_usage"] == 9 and got["unpriced"] == 0
    assert got["cost_usd"] == pytest.approx(4.5)
    assert got["latency_ms"]["p50"] == pytest.approx(nearest_rank([float(i + 1) for i in range(6, 24)], 50), rel=BOUND)


# -- aggregates ----------------------------------------------------------------------------------
def test_overview_by_hand(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    # Latencies 1, 2, 4, ..., 512 ms: one per histogram bucket, so percentiles are exact.
    rows = [
        row(
            base + i,
            latency_ms=float(2**i),
            status="error" if i in (3, 7) else "success",
            prompt_tokens=10,
            completion_tokens=i,
            total_tokens=10 + i,
            cost_usd=None if i < 4 else 0.25,
            stream=1 if i < 5 else 0,
            ttft_ms=float(2**i) / 2 if i < 5 else None,
        )
        for i in range(10)
    ]
    conn = db(tmp_path, rows)
    got = queries.overview(conn, TraceFilter())
    assert got == {
        "requests": 10,
        "errors": 2,
        "error_rate": 0.2,
        "cancelled": 0,
        "prompt_tokens": 100,
        "completion_tokens": 45,
        "total_tokens": 145,
        "cost_usd": 1.5,
        "unpriced": 4,
        "no_usage": 0,
        # nearest rank: p50 = 5th of 10, p95 = p99 = 10th
        "latency_ms": {"p50": 16.0, "p95": 512.0, "p99": 512.0},
        # TTFT 0.5, 1, 2, 4, 8: p50 = 3rd, p95 = 5th
        "ttft_ms": {"p50": 2.0, "p95": 8.0},
    }
    # Only unpriced requests: the cost is unknown, not $0.
    only_unpriced = queries.overview(conn, TraceFilter(until=base + 4))
    assert only_unpriced["cost_usd"] is None and only_unpriced["unpriced"] == 4
    empty = queries.overview(conn, TraceFilter(since=base + 100))
    assert empty["requests"] == 0 and empty["error_rate"] is None and empty["latency_ms"]["p50"] is None


def test_percentiles_within_the_stated_bound_and_rollup_equals_raw(tmp_path: Any) -> None:
    rng = random.Random(3)
    base = 1_700_000_000.0
    rows = [
        row(
            base + rng.uniform(0, 30 * HOUR),
            latency_ms=rng.lognormvariate(5, 1.2),
            ttft_ms=rng.lognormvariate(3, 1) if rng.random() < 0.4 else None,
            model=rng.choice(["a", "b", None]),
            status=rng.choice(["success"] * 9 + ["error"]),
            total_tokens=rng.randint(1, 100),
            cost_usd=rng.choice([None, 0.001, 0.002]),
            request_body="hello",
        )
        for _ in range(3000)
    ]
    conn = db(tmp_path, rows)
    since, until = base + 1.5 * HOUR + 17, base + 27.2 * HOUR
    for f in (TraceFilter(since=since, until=until), TraceFilter(since=since, until=until, model="a")):
        hybrid = queries.overview(conn, f)
        # A text filter every row matches forces the raw path: the two must agree (the cost up to
        # the order of floating-point additions).
        raw = queries.overview(conn, TraceFilter(since=f.since, until=f.until, model=f.model, text="hello"))
        assert hybrid.pop("cost_usd") == pytest.approx(raw.pop("cost_usd"), rel=1e-12)
        assert hybrid == raw
        chosen = [r for r in rows if since <= r["created_at"] < until and (f.model is None or r["model"] == f.model)]
        assert hybrid["requests"] == len(chosen)
        assert hybrid["errors"] == sum(r["status"] == "error" for r in chosen)
        assert hybrid["total_tokens"] == sum(r["total_tokens"] for r in chosen)
        assert raw["unpriced"] == sum(r["cost_usd"] is None for r in chosen) and raw["no_usage"] == 0
        for pct in (50, 95, 99):
            exact = nearest_rank([r["latency_ms"] for r in chosen], pct)
            assert abs(hybrid["latency_ms"][f"p{pct}"] / exact - 1) <= BOUND
        exact_ttft = nearest_rank([r["ttft_ms"] for r in chosen if r["ttft_ms"] is not None], 95)
        assert abs(hybrid["ttft_ms"]["p95"] / exact_ttft - 1) <= BOUND
    # Time series and breakdowns read day, hour and raw tiers too: the same as from raw rows alone.
    f, raw_f = TraceFilter(since=since, until=until), TraceFilter(since=since, until=until, text="hello")
    for width in (3600, 7200, 86400):
        for got, want in zip(queries.timeseries(conn, f, width), queries.timeseries(conn, raw_f, width)):
            assert got.pop("cost_usd") == pytest.approx(want.pop("cost_usd"), rel=1e-12)
            assert got == want
    for by in ("model", "endpoint"):
        got_rows, want_rows = queries.breakdown(conn, f, by), queries.breakdown(conn, raw_f, by)
        for got, want in zip(got_rows, want_rows):
            assert got.pop("cost_usd") == pytest.approx(want.pop("cost_usd"), rel=1e-12)
            assert got == want
    errors_only = TraceFilter(since=since, until=until, status="error")
    assert queries.overview(conn, errors_only)["requests"] == sum(
        r["status"] == "error" for r in chosen_all(rows, since, until)
    )
    stats = queries.stats(conn, TraceFilter())
    assert set(stats["by_model"]) == {"a", "b", "(none)"}
    assert sum(m["requests"] for m in stats["by_model"].values()) == stats["requests"] == 3000


def chosen_all(rows: list[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    return [r for r in rows if since <= r["created_at"] < until]


def test_histogram_percentile_clamps_to_what_was_seen() -> None:
    lo, _ = bucket_bounds(100)
    assert queries.histogram_percentiles({100: [3, lo * 1.01, lo * 1.02]}, [50]) == [lo * 1.02]
    assert queries.histogram_percentiles({}, [50, 99]) == [None, None]


def test_timeseries_buckets_include_empty_ones(tmp_path: Any) -> None:
    base = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # an hour boundary
    rows = [
        row(base + 10, latency_ms=5.0, cost_usd=0.1, total_tokens=10),
        row(base + 20, latency_ms=7.0, status="error", cost_usd=None),
        row(base + 3 * HOUR + 5, latency_ms=100.0, cost_usd=None, total_tokens=20),
    ]
    conn = db(tmp_path, rows)
    f = TraceFilter(since=base, until=base + 4 * HOUR)
    for width in (1800, 3600):  # sub-hour: raw rows; whole hours: rollups
        series = queries.timeseries(conn, f, width)
        assert [p["t"] for p in series] == [base + k * width for k in range(int(4 * HOUR / width))]
        first, last = series[0], series[int(3 * HOUR / width)]
        assert (first["requests"], first["errors"], first["cost_usd"], first["unpriced"]) == (2, 1, 0.1, 0)
        assert first["no_usage"] == 1  # the error reported no usage: not an unpriced model
        assert (first["latency_p50"], first["latency_p99"]) == (5.0, 7.0)
        assert (last["requests"], last["cost_usd"], last["unpriced"], last["latency_p50"]) == (1, None, 1, 100.0)
        empty = series[1]
        assert (empty["requests"], empty["errors"], empty["cost_usd"], empty["latency_p50"]) == (0, 0, 0.0, None)
    with pytest.raises(ValueError, match="bucket"):
        queries.timeseries(conn, f, 0)


def test_pick_bucket() -> None:
    assert queries.pick_bucket(0, 15 * 60) == 10
    assert queries.pick_bucket(0, 3600) == 30
    assert queries.pick_bucket(0, 86400) == 900
    assert queries.pick_bucket(0, 7 * 86400) == 7200
    assert queries.pick_bucket(0, 30 * 86400) == 21600
    assert queries.pick_bucket(None, None) == 86400
    for span in (60, 900, 3600, 86400, 7 * 86400, 30 * 86400, 400 * 86400):
        assert span / queries.pick_bucket(0, span) <= 120


def test_breakdown(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    rows = [row(base + i, model="a", user_id="u1", latency_ms=1.0, total_tokens=1, cost_usd=0.1) for i in range(5)]
    rows += [row(base + 10 + i, model="b", user_id=None, latency_ms=2.0, status="error") for i in range(3)]
    rows += [row(base + 20, model=None, user_id="u2", latency_ms=4.0, endpoint="embeddings", total_tokens=3)]
    rows += [row(base + 30, model="c", user_id=None, latency_ms=2.0, status="cancelled")]
    conn = db(tmp_path, rows)
    by_model = queries.breakdown(conn, TraceFilter(), "model")
    assert [
        (r["key"], r["requests"], r["errors"], r["cancelled"], r["cost_usd"], r["unpriced"], r["no_usage"])
        for r in by_model
    ] == [
        ("a", 5, 0, 0, pytest.approx(0.5), 0, 0),
        ("b", 3, 3, 0, None, 0, 3),  # failures without usage: not unpriced
        (None, 1, 0, 0, None, 1, 0),  # usage, but no price
        ("c", 1, 0, 1, None, 0, 1),  # cancelled: not an error
    ]

    by_user = queries.breakdown(conn, TraceFilter(), "user_id", limit=2)
    assert [
        (r["key"], r["requests"], r["errors"], r["cancelled"], r["latency_p50"], r["total_tokens"]) for r in by_user
    ] == [
        ("u1", 5, 0, 0, 1.0, 5),
        (None, 4, 3, 1, 2.0, 0),
    ]
    by_endpoint = queries.breakdown(conn, TraceFilter(), "endpoint")
    assert [(r["key"], r["requests"]) for r in by_endpoint] == [("chat/completions", 9), ("embeddings", 1)]
    with pytest.raises(ValueError, match="breakdown"):
        queries.breakdown(conn, TraceFilter(), "metadata")


# -- lists ---------------------------------------------------------------------------------------
def _all_pages(conn: sqlite3.Connection, f: TraceFilter, **kw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = queries.list_traces(conn, f, cursor=cursor, **kw)
        out += page
        if cursor is None:
            return out


@pytest.mark.parametrize("sort", ["created_at", "latency_ms", "ttft_ms", "total_tokens", "cost_usd"])
@pytest.mark.parametrize("descending", [True, False])
def test_every_sort_pages_through_every_row_once_nulls_last(tmp_path: Any, sort: str, descending: bool) -> None:
    rng = random.Random(5)
    base = 1_700_000_000.0
    rows = [
        row(
            base + rng.choice([0, 1, 2]),  # many ties on created_at
            latency_ms=rng.choice([1.0, 2.0, None]),
            ttft_ms=rng.choice([1.0, None]),
            total_tokens=rng.choice([5, 6, None]),
            cost_usd=rng.choice([0.1, None]),
        )
        for _ in range(53)
    ]
    conn = db(tmp_path, rows)
    got = _all_pages(conn, TraceFilter(), sort=sort, descending=descending, limit=7)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows)
    values = [r[sort] for r in got]
    present = [v for v in values if v is not None]
    assert values == present + [None] * (len(values) - len(present))  # NULLs last
    keys = [(r[sort], r["id"]) for r in got if r[sort] is not None]
    assert keys == sorted(keys, reverse=descending)
    assert "request_body" not in got[0] and "metadata" in got[0]


def test_cursor_is_stable_while_newer_traces_arrive(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    path = str(tmp_path / "t.db")
    write(path, [row(base + i) for i in range(30)])
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    first, cursor = queries.list_traces(conn, TraceFilter(), limit=10)
    assert [r["created_at"] for r in first] == [base + i for i in range(29, 19, -1)]
    write(path, [row(base + 100 + i) for i in range(25)])  # newer traces arrive meanwhile
    second, cursor = queries.list_traces(conn, TraceFilter(), cursor=cursor, limit=10)
    assert [r["created_at"] for r in second] == [base + i for i in range(19, 9, -1)]
    with pytest.raises(ValueError, match="another listing"):
        queries.list_traces(conn, TraceFilter(), sort="cost", cursor=cursor)
    with pytest.raises(ValueError, match="invalid cursor"):
        queries.list_traces(conn, TraceFilter(), cursor="!!not-a-cursor")
    with pytest.raises(ValueError, match="sort"):
        queries.list_traces(conn, TraceFilter(), sort="request_body")


def test_filters_metadata_text_and_more(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    rows = [
        row(base + 1, metadata='{"env": "prod", "tier": 2, "a.b": "x"}', request_body='{"q": "Find 50% OFF"}'),
        row(base + 2, metadata='{"env": "dev"}', response_body="the answer_is here", user_id="u1"),
        row(base + 3, metadata="not json", session_id="s1", key_id="key_1", status="timeout"),
        row(base + 4, metadata=None, model="other", endpoint="embeddings"),
    ]
    conn = db(tmp_path, rows)

    def ids(**kw: Any) -> list[float]:
        return sorted(r["created_at"] - base for r in _all_pages(conn, TraceFilter(**kw)))

    assert ids(meta=(("env", "prod"),)) == [1]
    assert ids(meta=(("tier", "2"),)) == [1]
    assert ids(meta=(("a.b", "x"),)) == [1]
    # Several metadata conditions: every one must hold.
    assert ids(meta=(("env", "prod"), ("tier", "2"))) == [1]
    assert ids(meta=(("env", "dev"), ("tier", "2"))) == []
    assert ids(text="50% off") == [1]  # case-insensitive; % is literal
    assert ids(text="answer_is") == [2]
    assert ids(text="answerXis") == []  # _ is literal too
    assert ids(user_id="u1") == [2]
    assert ids(session_id="s1") == [3] and ids(key_id="key_1") == [3] and ids(status="timeout") == [3]
    assert ids(model="other") == [4] and ids(endpoint="embeddings") == [4]
    assert ids(since=base + 2, until=base + 4) == [2, 3]
    assert queries.list_traces(conn, TraceFilter(meta=(("env", "prod"),)))[0][0]["metadata"]["tier"] == 2


def test_user_and_model_filters_are_exact_and_their_prefix_forms_ignore_case(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    rows = [
        row(base + 1, user_id="alice", model="gpt-4o"),
        row(base + 2, user_id="Alice@example.com", model="gpt-4o-mini"),
        row(base + 3, user_id="malice", model="GPT-4o"),
        row(base + 4, user_id="al_ce", model="o3-mini"),
        row(base + 5, user_id="al%", model=None),
    ]
    conn = db(tmp_path, rows)

    def ids(query: dict[str, str]) -> list[float]:
        return sorted(r["created_at"] - base for r in _all_pages(conn, TraceFilter.from_query(query)))

    assert ids({"user": "alice"}) == [1] and ids({"user": "ali"}) == []  # exact: no prefix, no case folding
    assert ids({"model": "gpt-4o"}) == [1]
    assert ids({"user~": "ali"}) == [1, 2]  # the start of the id, any case
    assert ids({"user~": "ALICE@"}) == [2]
    assert ids({"user~": "al_"}) == [4] and ids({"user~": "al%"}) == [5]  # _ and % are literal
    assert ids({"model~": "gpt-4o"}) == [1, 2, 3]
    assert ids({"model~": "gpt-4o", "user~": "m"}) == [3]
    # The rollups cannot answer a prefix: aggregates read the rows.
    assert queries.overview(conn, TraceFilter.from_query({"model~": "GPT"}))["requests"] == 3
    assert queries.stats(conn, TraceFilter.from_query({"user~": "al"}))["requests"] == 4


def test_text_search_uses_the_words_index_and_reads_bodies_without_it(tmp_path: Any, monkeypatch: Any) -> None:
    from prysmai._proxy.store.sqlite import engine, search

    base = 1_700_000_000.0
    rows = [
        row(base + 1, request_body='{"content": "Weather in Zürich tomorrow?"}', response_body="Sunny, 21°C"),
        row(base + 2, request_body='{"tool": "search_docs", "query": "traces"}'),
        row(base + 3, request_body="nothing here", response_body='{"content": "ZURICH is cloudy"}'),
    ] + [row(base + 10 + i, request_body=f"filler {i}") for i in range(30)]
    conn = db(tmp_path, rows)
    assert search.exists(conn)

    def ids(text: str) -> list[float]:
        return sorted(
            r["created_at"] - base for r in _all_pages(conn, TraceFilter(text=text)) if r["created_at"] < base + 10
        )

    assert ids("zurich") == [1, 3] and ids("Zürich") == [1, 3]  # accents and case folded
    assert ids("search_docs") == [2] and ids("search docs") == [2]  # a phrase of words
    assert ids("zur") == [1, 3]  # the last word is a prefix (typed so far)
    assert ids("ich") == []  # words, not substrings
    assert ids("sunny 21") == [1]
    assert queries.overview(conn, TraceFilter(text="filler"))["requests"] == 30
    # Many matches: read in the list's order, each row asked of the index.
    few, _ = queries.list_traces(conn, TraceFilter(text="filler"), limit=5)
    monkeypatch.setattr(engine, "_DRIVE_FROM_MATCHES", 10)
    many, _ = queries.list_traces(conn, TraceFilter(text="filler"), limit=5)
    assert [r["created_at"] - base for r in many] == [r["created_at"] - base for r in few] == [39, 38, 37, 36, 35]
    assert queries.overview(conn, TraceFilter(text="filler"))["requests"] == 30
    monkeypatch.undo()
    # Rows deleted leave the index; rows inserted by other means are indexed when the store opens.
    conn.execute("DELETE FROM traces WHERE created_at = ?", (base + 3,))
    assert ids("zurich") == [1]
    conn.execute(
        "INSERT INTO traces (id, created_at, method, endpoint, status, request_body) "
        "VALUES ('x', ?, 'POST', 'chat/completions', 'success', 'Zurich again')",
        (base + 4,),
    )
    conn.close()
    conn = SQLiteEngine(str(tmp_path / "t.db")).open_existing()
    assert conn is not None
    assert ids("zurich") == [1, 4]
    conn.close()

    # Without the index (--search-index off, or SQLite without FTS5): substrings of the bodies.
    path = str(tmp_path / "t.db")
    raw = sqlite3.connect(path, isolation_level=None)
    search.uninstall(raw)
    raw.close()
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None and not search.exists(conn)
    assert ids("search_docs") == [2] and ids("ich") == [1, 4] and ids("zurich") == [4]


def test_from_query() -> None:
    f = TraceFilter.from_query(
        {"since": "1h", "until": "1700000000", "model": "m", "user": "u", "session": "s", "key": "k", "meta": "a=b=c"},
        now=1_700_003_600.0,
    )
    assert (f.since, f.until, f.user_id, f.session_id, f.key_id) == (1_700_000_000.0, 1_700_000_000.0, "u", "s", "k")
    assert f.meta == (("a", "b=c"),)
    # Several meta= in a query string: all of them (a plain mapping holds one).
    from prysmai._proxy.asgi import Query

    query = Query([("meta", "env=prod"), ("meta", "tier=2"), ("user~", "ali"), ("model~", "gpt")])
    f = TraceFilter.from_query(query)
    assert f.meta == (("env", "prod"), ("tier", "2")) and (f.user_prefix, f.model_prefix) == ("ali", "gpt")
    assert TraceFilter.from_query({"q": "", "limit": "5", "sort": "x"}) == TraceFilter()
    for query, message in (
        ({"since": "yesterday"}, "since: expected"),
        ({"until": "5 parsecs"}, "until: expected"),
        ({"status": "ok"}, "status must be one of"),
        ({"meta": "novalue"}, "meta: expected key=value"),
        ({"meta": "=v"}, "meta: expected key=value"),
        ({"since": "100", "until": "50"}, "since must not be later"),
    ):
        with pytest.raises(ValueError, match=message):
            TraceFilter.from_query(query)


def test_get_trace_by_prefix(tmp_path: Any) -> None:
    rows = [row(1.0, id="abcdef0123456789" + "0" * 16), row(2.0, id="abcdef0199999999" + "1" * 16)]
    conn = db(tmp_path, rows)
    assert queries.get_trace(conn, rows[0]["id"])["created_at"] == 1.0  # type: ignore[index]
    assert queries.get_trace(conn, "abcdef012")["created_at"] == 1.0  # type: ignore[index]
    assert queries.get_trace(conn, "ABCDEF019")["created_at"] == 2.0  # type: ignore[index]
    assert queries.get_trace(conn, "ffffffff") is None
    assert queries.get_trace(conn, "not an id") is None
    with pytest.raises(ValueError, match="ambiguous"):
        queries.get_trace(conn, "abcdef01")
    with pytest.raises(ValueError, match="prefix too short"):
        queries.get_trace(conn, "abcdef0")


def test_sessions_users_and_a_session_timeline(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    rows = []
    for s in range(5):
        for i in range(3):
            rows.append(row(base + s * 100 + i, session_id=f"s{s}", user_id=f"u{s % 2}", total_tokens=2, cost_usd=None))
    rows.append(row(base + 1000, session_id=None, user_id=None))
    conn = db(tmp_path, rows)
    page, cursor = queries.sessions(conn, TraceFilter(), limit=2)
    assert [r["session_id"] for r in page] == ["s4", "s3"]
    assert page[0] == {
        "session_id": "s4",
        "requests": 3,
        "errors": 0,
        "cancelled": 0,
        "total_tokens": 6,
        "cost_usd": None,
        "unpriced": 3,
        "no_usage": 0,
        "first_seen": base + 400,
        "last_seen": base + 402,
    }
    rest, end = queries.sessions(conn, TraceFilter(), cursor=cursor, limit=10)
    assert [r["session_id"] for r in rest] == ["s2", "s1", "s0"] and end is None
    us, _ = queries.users(conn, TraceFilter())
    assert [(u["user_id"], u["requests"]) for u in us] == [("u0", 9), ("u1", 6)]
    timeline = queries.session_page(conn, "s3")
    assert [t["created_at"] for t in timeline["traces"]] == [base + 300, base + 301, base + 302]
    assert "request_body" in timeline["traces"][0] and timeline["next_cursor"] is None
    assert timeline["totals"]["requests"] == 3 and timeline["totals"]["total_tokens"] == 6


def test_a_long_session_pages_and_its_totals_are_all_of_its_traces(tmp_path: Any) -> None:
    base = 1_700_000_000.0
    rows = [
        row(base + i, session_id="long", total_tokens=10, cost_usd=0.001, status="error" if i % 100 == 0 else "success")
        for i in range(520)
    ]
    rows += [row(base + 600 + i, session_id="long", status="cancelled") for i in range(3)]  # no usage
    rows += [row(base + 700, session_id="other", total_tokens=1, cost_usd=1.0)]
    conn = db(tmp_path, rows)
    first = queries.session_page(conn, "long", limit=500)
    totals = first["totals"]
    assert (totals["requests"], totals["errors"], totals["cancelled"]) == (523, 6, 3)
    assert (totals["total_tokens"], totals["unpriced"], totals["no_usage"]) == (5200, 0, 3)
    assert totals["cost_usd"] == pytest.approx(0.52)
    assert (totals["first_seen"], totals["last_seen"]) == (base, base + 602)
    assert len(first["traces"]) == 500 and first["next_cursor"] is not None
    seen = [t["id"] for t in first["traces"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = queries.session_page(conn, "long", cursor=cursor, limit=7)
        assert page["totals"] == totals  # every page carries the whole session's totals
        seen += [t["id"] for t in page["traces"]]
        cursor = page["next_cursor"]
    assert seen == [r["id"] for r in rows[:523]]  # oldest first, each once
    with pytest.raises(ValueError, match="another listing"):
        queries.session_page(conn, "long", cursor=queries.list_traces(conn, TraceFilter(), limit=1)[1])


# -- the read runner -----------------------------------------------------------------------------
def test_read_runner_reads_read_only_off_the_loop_and_stops_slow_queries(tmp_path: Any) -> None:
    path = str(tmp_path / "t.db")
    write(path, [row(1_700_000_000.0 + i) for i in range(20)])
    runner = ReadRunner(SQLiteEngine(path), time_limit=0.3)
    try:
        assert runner.run_sync(queries.overview, TraceFilter())["requests"] == 20

        async def both() -> tuple[Any, Any]:
            return await asyncio.gather(
                runner.run(queries.list_traces, TraceFilter(), limit=5),
                runner.run(queries.overview, TraceFilter()),
            )

        (page, _), totals = asyncio.run(both())
        assert len(page) == 5 and totals["requests"] == 20

        def slow(conn: sqlite3.Connection) -> Any:
            sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
            return conn.execute(sql).fetchone()

        with pytest.raises(QueryTimeout, match=r"0\.3 s limit"):
            runner.run_sync(slow)

        def writes(conn: sqlite3.Connection) -> Any:
            return conn.execute("DELETE FROM traces")

        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            runner.run_sync(writes)
        assert runner.run_sync(queries.overview, TraceFilter())["requests"] == 20  # still usable
    finally:
        runner.close()


def test_a_store_opened_for_reading_migrates_a_v1_store(tmp_path: Any) -> None:
    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.execute(
        "INSERT INTO traces (id, created_at, method, endpoint, status, latency_ms) "
        "VALUES ('a', 1, 'POST', 'x', 'success', 3)"
    )
    conn.commit()
    conn.close()
    store = Store.existing(path)
    assert store is not None
    with store:
        assert store.read_sync(queries.overview, TraceFilter())["latency_ms"]["p50"] == 3.0


def test_prysmai_stats_reads_a_v1_store_after_migrating_it(tmp_path: Any, capsys: Any) -> None:
    import json

    from prysmai._cli import main

    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.executemany(
        "INSERT INTO traces (id, created_at, method, endpoint, model, status, latency_ms, cost_usd) "
        "VALUES (?, ?, 'POST', 'chat/completions', 'm', ?, ?, ?)",
        [("a" * 32, 1.0, "success", 4.0, 0.5), ("b" * 32, 2.0, "error", 8.0, None)],
    )
    conn.commit()
    conn.close()
    assert main(["stats", "--db", path, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    # The error reported no usage: its unknown cost is not an unpriced model's.
    assert (stats["requests"], stats["errors"], stats["cost_usd"]) == (2, 1, 0.5)
    assert (stats["unpriced_requests"], stats["no_usage_requests"]) == (0, 1)
    assert (stats["latency_p50_ms"], stats["latency_p99_ms"]) == (4.0, 8.0)
    assert main(["traces", "--db", path, "--json"]) == 0
    assert [t["id"][0] for t in json.loads(capsys.readouterr().out)["data"]] == ["b", "a"]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_rows_of_another_project_inserted_between_batches_are_folded_under_their_own(tmp_path: Any) -> None:
    """Rows inserted by other means past the watermark are folded with the writer's next batch,
    under their own project; so are batches of several projects and rows on overflow pages."""
    base = 1_700_000_000.0
    path = str(tmp_path / "t.db")
    store = TraceWriter(SQLiteEngine(path), lambda item: item)
    store.open()  # (opening a store folds what is pending: the row below must come while it runs)
    for i in range(3):
        store.submit(row(base + i, project="web"))
    assert store.flush()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO traces (id, created_at, method, endpoint, model, status, project) "
        "VALUES ('x', ?, 'POST', 'chat/completions', 'm', 'success', 'batch')",
        (base + 10,),
    )
    conn.commit()
    conn.close()
    for i in range(4):
        store.submit(row(base + 20 + i, project="web", response_body="y" * 20_000))
    assert store.flush()
    store.submit(row(base + 30, project="eval"))  # two projects in one batch
    store.submit(row(base + 31))
    store.close()
    assert store.written == 9
    read = SQLiteEngine(path).open_existing()
    assert read is not None
    by_project = {r["key"]: r["requests"] for r in queries.breakdown(read, TraceFilter(), "project")}
    assert by_project == {"web": 7, "batch": 1, "eval": 1, "default": 1}
    assert_rollups_equal_rows(read)
    read.close()


def test_the_overview_page_and_the_key_rollups_agree_with_the_rows(tmp_path: Any) -> None:
    """The overview page's one-read answers equal each read on its own; users and sessions from
    their per-day rollups (with raw rows at a range's partial days) equal the rows grouped."""
    rng = random.Random(25)
    base = 1_700_000_000.0 - 1_700_000_000.0 % 86400  # a day boundary
    rows = [
        row(
            base + rng.uniform(0, 5 * 86400),
            model=rng.choice(["a", "b", None]),
            endpoint=rng.choice(["chat/completions", "embeddings"]),
            status=rng.choice(["success"] * 6 + ["error", "timeout", "cancelled"]),
            latency_ms=rng.lognormvariate(5, 1),
            ttft_ms=rng.choice([None, rng.lognormvariate(3, 1)]),
            total_tokens=rng.choice([None, rng.randint(1, 500)]),
            cost_usd=rng.choice([None, rng.uniform(0, 0.01)]),
            user_id=rng.choice([None] + [f"u{i}" for i in range(12)]),
            session_id=rng.choice([None] + [f"s{i}" for i in range(40)]),
            project=rng.choice(["web", "batch"]),
            request_body="hello",
        )
        for _ in range(1500)
    ]
    conn = db(tmp_path, rows)

    def same(got: Any, want: Any) -> None:
        if isinstance(got, dict):
            assert set(got) == set(want)
            for k in got:
                same(got[k], want[k])
        elif isinstance(got, list):
            assert len(got) == len(want)
            for g, w in zip(got, want):
                same(g, w)
        elif isinstance(got, float) and isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
        else:
            assert got == want

    def pages(listing: Any, filt: TraceFilter) -> list[dict[str, Any]]:
        out, cursor = [], None
        while True:
            items, cursor = listing(conn, filt, cursor=cursor, limit=7)
            out += items
            if cursor is None:
                return out

    ranges = [
        TraceFilter(),
        # Partial days mostly inside the range: each read as its day's rollup less the rest.
        TraceFilter(since=base + 0.4 * 86400, until=base + 3.7 * 86400),
        TraceFilter(since=base + 1.2 * 86400, project="web"),
        # Partial days mostly outside: their rows.
        TraceFilter(since=base + 0.8 * 86400, until=base + 2.1 * 86400),
        # Within one day, most of it, then little of it.
        TraceFilter(since=base + 2.1 * 86400, until=base + 2.95 * 86400),
        TraceFilter(since=base + 3.3 * 86400, until=base + 3.5 * 86400, project="batch"),
    ]
    for f in ranges:
        width = queries.pick_bucket(f.since, f.until)
        page = queries.overview_page(conn, f, width, ("project", "model", "endpoint", "user_id", "session_id"), 10)
        # Its TTFT comes from the breakdowns' read (the series' buckets read latency alone).
        assert page["overview"]["ttft_ms"]["p50"] is not None
        same(page["overview"], queries.overview(conn, f))
        without = queries.overview_page(conn, f, width, ("user_id",), 10)
        same(without["overview"], page["overview"])
        same(without["timeseries"], page["timeseries"])
        same(page["timeseries"], queries.timeseries(conn, f, width))
        for by in ("project", "model", "endpoint", "user_id", "session_id"):
            same(page["breakdowns"][by], queries.breakdown(conn, f, by, 10))
        # The text filter every row matches makes every read group the rows themselves.
        raw = dataclasses.replace(f, text="hello")
        for by in ("user_id", "session_id"):
            same(queries.breakdown(conn, f, by, 10), queries.breakdown(conn, raw, by, 10))
        for listing in (queries.users, queries.sessions):
            got = pages(listing, f)
            same(got, pages(listing, raw))
            assert len(got) > 7  # several pages
        # Errors are error and timeout; cancelled is counted on its own.
        chosen = [
            r
            for r in conn.execute(
                "SELECT status FROM traces WHERE created_at >= ? AND created_at < ?", (f.since or 0, f.until or 2e9)
            )
            if f.project is None
        ]
        if chosen:
            assert page["overview"]["errors"] == sum(s in ("error", "timeout") for (s,) in chosen)
            assert page["overview"]["cancelled"] == sum(s == "cancelled" for (s,) in chosen)

    def top_keys_agree() -> None:
        # Ranges of any length and offset: each partial day read as its rows or as its day's
        # rollup rows less the rest, the answer is the rows grouped.
        for _ in range(40):
            lo, hi = sorted(rng.uniform(-0.5, 5.5) * 86400 + base for _ in range(2))
            f = TraceFilter(since=lo, until=rng.choice([hi, None]), project=rng.choice([None, "web"]))
            raw = dataclasses.replace(f, text="hello")
            for by in ("user_id", "session_id"):
                same(queries.breakdown(conn, f, by, 5), queries.breakdown(conn, raw, by, 5))

    top_keys_agree()
    # Deleted rows leave the rollups' counts (first and last seen may stay wider: not narrowed).
    conn.execute("DELETE FROM traces WHERE rowid % 17 = 0")
    assert_rollups_equal_rows(conn)
    top_keys_agree()
    for f in ranges:
        raw = dataclasses.replace(f, text="hello")
        for listing, column in ((queries.users, "user_id"), (queries.sessions, "session_id")):
            counts = {
                r[column]: {k: v for k, v in r.items() if k not in ("first_seen", "last_seen")}
                for r in pages(listing, f)
            }
            want = {
                r[column]: {k: v for k, v in r.items() if k not in ("first_seen", "last_seen")}
                for r in pages(listing, raw)
            }
            same(counts, want)


def test_the_top_users_and_sessions_of_a_range_read_little_of_its_partial_days(tmp_path: Any) -> None:
    """The overview's top users and sessions over a range whose first day is mostly inside it read
    that day's rollup rows less the rows of the part outside (never the rows of the part inside),
    add up the keys' requests alone to find the top keys, and then the totals of those keys only,
    through the keys' indexes; the answer is the rows grouped."""
    rng = random.Random(7)
    base = 1_700_000_000.0 - 1_700_000_000.0 % 86400  # a day boundary
    rows = [
        row(
            base + rng.uniform(0, 4 * 86400),
            status=rng.choice(["success", "error", "cancelled"]),
            cost_usd=rng.choice([None, rng.uniform(0, 0.01)]),
            total_tokens=rng.choice([None, rng.randint(1, 50)]),
            user_id=rng.choice([None] + [f"u{i}" for i in range(30)]),
            session_id=rng.choice([None] + [f"s{i}" for i in range(80)]),
            request_body="hello",
        )
        for _ in range(2000)
    ]
    conn = db(tmp_path, rows)
    f = TraceFilter(since=base + 0.05 * 86400, until=base + 3.92 * 86400)
    for by in ("user_id", "session_id"):
        with statements_run(conn) as executed:
            got = queries.breakdown(conn, f, by, 5)
        # Every read of the rows grouped by the key covers at most a tenth of a day, or few keys.
        windows = [
            re.search(r"created_at >= ([0-9.]+) AND created_at < ([0-9.]+)", q)
            for q in executed
            if "FROM traces" in q and f"GROUP BY {by}" in q and f"{by} IN (" not in q
        ]
        assert windows and all(w is not None and float(w[2]) - float(w[1]) <= 0.1 * 86400 for w in windows), executed
        ranking = [q for q in executed if "ORDER BY requests DESC" in q]
        assert len(ranking) == 1 and "sum(errors)" not in ranking[0], ranking
        want = queries.breakdown(conn, dataclasses.replace(f, text="hello"), by, 5)
        assert [r["key"] for r in got] == [r["key"] for r in want] and len(got) == 5
        for g, w in zip(got, want):
            assert {k: v for k, v in g.items() if k != "cost_usd"} == {k: v for k, v in w.items() if k != "cost_usd"}
            assert g["cost_usd"] == (w["cost_usd"] if w["cost_usd"] is None else pytest.approx(w["cost_usd"], rel=1e-9))


def test_a_sorted_list_of_few_traces_never_walks_the_whole_table(tmp_path: Any) -> None:
    """The query plans of sorted lists: a filter that keeps few traces reads them through its own
    index (never every row in rowid order until enough match: all of them, when none does); no
    filter walks the sort column's index."""
    base = 1_700_000_000.0
    rows = [
        row(base + i, project="big", user_id=f"u{i % 50}", latency_ms=float(i % 97), ttft_ms=None, total_tokens=i)
        for i in range(3000)
    ]
    rows += [row(base + 5000 + i, project="small", latency_ms=None) for i in range(3)]
    conn = db(tmp_path, rows)  # no ANALYZE: the proxy's stores have no statistics
    executed: list[str] = []
    conn.set_trace_callback(executed.append)

    def plans(f: TraceFilter, sort: str, descending: bool) -> list[str]:
        executed.clear()
        queries.list_traces(conn, f, sort=sort, descending=descending)
        conn.set_trace_callback(None)
        out = []
        for sql in [q for q in executed if q.lstrip().startswith("SELECT") and "FROM traces" in q]:
            out += [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        conn.set_trace_callback(executed.append)
        return out

    for f in (TraceFilter(project="small"), TraceFilter(project="nobody"), TraceFilter(user_id="u7")):
        for sort in ("latency_ms", "ttft_ms", "cost_usd", "total_tokens"):
            for descending in (True, False):
                found = plans(f, sort, descending)
                assert found and not [p for p in found if p.startswith("SCAN traces")], (f, sort, found)
    unfiltered = plans(TraceFilter(), "latency_ms", True)
    assert any("traces_by_latency" in p for p in unfiltered), unfiltered


def test_a_schema_8_store_with_scores_is_migrated_to_the_same_answers(tmp_path: Any) -> None:
    """Schema 9 builds the all-time and score rollups from the rollups and scores already there:
    the overview and the averages answer after the migration what a store folded from the start
    answers (the one written at schema 9, taken back to schema 8 to be migrated again)."""
    from prysmai._proxy.store import scores

    from .test_postgres import close_enough

    path = str(tmp_path / "s8.db")
    rows = random_rows(400, seed=17)
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows])
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    new = scores.NewScore.parse({"name": "helpful", "value": 0.5})
    for r in rows[::3]:
        assert store.edit_sync(scores.add, r["id"], new, project=None, author_key="key_x", source="api") is not None
    now = max(r["created_at"] for r in rows)
    reads = [
        (queries.overview_page, (TraceFilter(), 86400, queries.BREAKDOWNS, 5)),
        (scores.averages, (TraceFilter(), ("model", "user", "project"), 50)),
        (scores.averages, (TraceFilter(since=now - 3 * 86400), ("model", "user", "project"), 50)),
    ]
    before = [store.read_sync(fn, *args) for fn, args in reads]
    store.close()
    conn = sqlite3.connect(path)
    for table in (
        "rollup_hist_project_day",
        "rollup_all",
        "rollup_hist_all",
        "rollup_user_all",
        "rollup_session_all",
        "rollup_score_day",
        "rollup_score_all",
    ):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DROP INDEX scores_by_trace_name")
    conn.execute("CREATE INDEX scores_by_trace ON scores (trace_id)")
    conn.execute("PRAGMA user_version = 8")
    conn.commit()
    conn.close()
    store = Store.existing(path, read_time_limit=None)  # migrates
    assert store is not None
    try:
        after = [store.read_sync(fn, *args) for fn, args in reads]
    finally:
        store.close()
    # (Equal but for the last bits of a sum of costs: its terms are added in another order.)
    assert close_enough(after, before) and before[1]["model"]
    assert_rollups_equal_rows(sqlite3.connect(path))


def test_a_sub_day_series_by_model_reads_the_hourly_rollup_by_model_not_the_rows(tmp_path: Any) -> None:
    """Schema 10: a 2-hour series filtered or split by model, and a model breakdown's partial days,
    over whole hours read ``rollup_hist_model_hour`` and no trace row; the answers are those of
    the rows alone."""
    from prysmai._proxy.store import slices

    rows = random_rows(1500, seed=23)
    conn = db(tmp_path, rows)
    base = 1_700_000_000.0 - 1_700_000_000.0 % HOUR
    since, until = base + 3 * HOUR, base + 41 * HOUR  # whole hours, not whole days
    f = TraceFilter(since=since, until=until, model="a")
    with statements_run(conn) as statements:
        series = queries.timeseries(conn, f, 7200)
        split = slices.group_series(conn, TraceFilter(since=since, until=until), "model", 7200)
        models = queries.breakdown(conn, TraceFilter(since=since, until=until), "model")
    assert any("rollup_hist_model_hour" in s for s in statements)
    assert not [s for s in statements if "FROM traces" in s], statements
    # The same answers from the rows (a text filter every row matches forces them).
    raw = dict(since=since, until=until, text="hello")
    want_series = queries.timeseries(conn, TraceFilter(**raw, model="a"), 7200)
    want_split = slices.group_series(conn, TraceFilter(**raw), "model", 7200)
    want_models = queries.breakdown(conn, TraceFilter(**raw), "model")
    from .test_postgres import close_enough

    assert close_enough(series, want_series) and close_enough(split, want_split) and close_enough(models, want_models)
    assert sum(p["requests"] for p in series) == sum(
        since <= r["created_at"] < until and r["model"] == "a" for r in rows
    )


def test_a_schema_9_store_is_migrated_to_the_hourly_histograms_by_model(tmp_path: Any) -> None:
    """Schema 10 builds ``rollup_hist_model_hour`` from the rows already folded, and rows written
    past the watermark are folded after the migration: the store then answers what one folded
    from the start answers, and every rollup equals a re-fold of the rows; the scored traces'
    rollups are built from the scores and their traces."""
    from prysmai._proxy.store import scores, slices

    from .test_postgres import close_enough
    from .test_score_rollups import _scored_regrouped

    path = str(tmp_path / "s9.db")
    rows = random_rows(600, seed=29)
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows[:500]])
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    for r, name in zip(rows[:500:4], ["helpful", "tone"] * 500):
        new = scores.NewScore.parse({"name": name, "value": 1 if name == "helpful" else "curt"})
        assert store.edit_sync(scores.add, r["id"], new, project=None, author_key="key_x", source="api")
    store.close()
    base = 1_700_000_000.0
    reads = [
        (queries.overview_page, (TraceFilter(since=base + 5.5 * HOUR, until=base + 40.2 * HOUR), 7200, ("model",), 5)),
        (slices.group_series, (TraceFilter(since=base + 2 * HOUR, until=base + 30 * HOUR), "model", 7200)),
        (queries.breakdown, (TraceFilter(since=base + 7.3 * HOUR, model="b"), "endpoint")),
    ]
    # Back to schema 9: no table, triggers that do not know it (dropped here: a schema-9 trigger
    # would not fold into it), and 100 rows inserted past the watermark meanwhile.
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER rollup_fold")
    conn.execute("DROP TRIGGER traces_rollup_delete")
    conn.execute("DROP TABLE rollup_hist_model_hour")
    conn.execute("DROP TRIGGER scored_rollup_delete")
    conn.execute("DROP TABLE rollup_scored_day")
    conn.execute("DROP TABLE rollup_scored_hist_day")
    conn.execute("PRAGMA user_version = 9")
    conn.commit()
    conn.close()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [
                tuple("default" if c == "project" and r.get(c) is None else r.get(c) for c in COLUMNS)
                for r in rows[500:]
            ],
        )
    store = Store.existing(path, read_time_limit=None)  # migrates, then folds the rows past the watermark
    assert store is not None
    try:
        after = [store.read_sync(fn, *args) for fn, args in reads]
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 10
    assert_rollups_equal_rows(conn)
    want_scored, got_scored = _scored_regrouped(conn)
    assert want_scored and got_scored == want_scored
    conn.close()
    fresh = str(tmp_path / "fresh.db")
    with SQLiteEngine(fresh).open_for_writing() as conn:
        insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows])
    store = Store.existing(fresh, read_time_limit=None)
    assert store is not None
    try:
        want = [store.read_sync(fn, *args) for fn, args in reads]
    finally:
        store.close()
    assert close_enough(after, want) and after[0]["overview"]["requests"] > 0


def test_a_first_page_of_recent_keys_groups_only_the_keys_it_may_hold(tmp_path: Any) -> None:
    """The first page of sessions or users, most recently seen first, reads the totals of the keys
    last seen on the newest days only (never every key of the range grouped); its rows are the
    rows grouped by key, newest last trace first, and its next pages follow on."""
    rng = random.Random(3)
    base = 1_700_000_000.0 - 1_700_000_000.0 % 86400
    rows = [
        row(
            base + rng.uniform(0, 12 * 86400),
            status=rng.choice(["success", "error", "cancelled"]),
            cost_usd=rng.choice([None, rng.uniform(0, 0.01)]),
            total_tokens=rng.choice([None, rng.randint(1, 50)]),
            project=rng.choice(["a", "b"]),
            user_id=rng.choice([None, ""] + [f"u{i}" for i in range(60)]),
            session_id=rng.choice([None] + [f"s{i}" for i in range(300)]),
        )
        for _ in range(3000)
    ]
    conn = db(tmp_path, rows)
    for f in (TraceFilter(), TraceFilter(project="a"), TraceFilter(since=base + 2.5 * 86400)):
        for column, fn in (("session_id", queries.sessions), ("user_id", queries.users)):
            kept = [
                r
                for r in rows
                if r[column]
                and (f.project is None or r["project"] == f.project)
                and (f.since is None or r["created_at"] >= f.since)
            ]
            by_key: dict[str, list[dict[str, Any]]] = {}
            for r in kept:
                by_key.setdefault(r[column], []).append(r)
            want = sorted(by_key, key=lambda k: (max(r["created_at"] for r in by_key[k]), k), reverse=True)
            for limit in (1, 7, 25):
                with statements_run(conn) as executed:
                    page, cursor = fn(conn, f, limit=limit)
                # The page's statement names its keys; no statement groups every key of the range.
                grouped = [q for q in executed if "sort_value" in q]
                assert len(grouped) == 1 and f"{column} IN (" in grouped[0], executed
                assert [r[column] for r in page] == want[:limit]
                for r in page:
                    mine = by_key[r[column]]
                    assert r["requests"] == len(mine)
                    assert r["errors"] == sum(t["status"] == "error" for t in mine)
                    assert r["total_tokens"] == sum(t["total_tokens"] or 0 for t in mine)
                    assert r["first_seen"] == min(t["created_at"] for t in mine)
                    assert r["last_seen"] == max(t["created_at"] for t in mine)
                rest, _ = fn(conn, f, cursor=cursor, limit=1000)
                assert [r[column] for r in page + rest] == want
