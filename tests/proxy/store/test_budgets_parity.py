"""The budgets read (:mod:`prysmai._proxy.store.budgets`) on SQLite and PostgreSQL (a real server,
tests/proxy/postgres.py): the same traces give the same document on both, and that document is
what the rows say -- the month's spend (not last month's), the last minute's requests less the
limits' refusals, and the refusals by project, limit and bucket (not a provider's own 429, nor the
proxy's other errors)."""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections import Counter
from typing import Any

import pytest

from prysmai._proxy.config.projects import Limits
from prysmai._proxy.store import Store
from prysmai._proxy.store.budgets import budgets, month_start
from prysmai._proxy.store.outbox import OutboxEngine
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows
from prysmai._proxy.store.sqlite.migrations import MIGRATIONS as SQLITE_MIGRATIONS

from .test_postgres import close_enough, stores_holding

NOW = float(int(time.time()) - 1)
START = month_start(NOW)
PROJECTS = ["shop", "lab", "__proto__", "a.b-c_d"]
CODES = [None, None, None, "project_rate_limit_exceeded", "project_budget_exceeded", "model_not_routed"]
LIMITS = {
    "shop": Limits(requests_per_minute=50, monthly_budget_usd=2.5),
    "lab": Limits(monthly_budget_usd=0.001),
    "idle": Limits(requests_per_minute=5),  # configured, without a trace
}


def make_rows(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """Traces of this month (some in the last minute), and some of the month before."""
    rng = random.Random(seed)
    rows = []
    span = min(NOW - START, 5 * 86400)
    for i in range(n):
        kind = rng.random()
        if kind < 0.15:
            created = START - 1 - rng.random() * 3 * 86400  # last month
        elif kind < 0.3:
            created = NOW - rng.random() * 50  # the last minute
        else:
            created = NOW - 60 - rng.random() * max(span - 60, 0.0)
        code = rng.choice(CODES)
        relayed_429 = code is None and rng.random() < 0.1  # a provider's own 429
        if code in ("project_rate_limit_exceeded", "project_budget_exceeded") or relayed_429:
            http_status = 429
        else:
            http_status = 400 if code else 200
        rows.append(
            {
                "id": f"{i:08x}{rng.getrandbits(96):024x}",
                "created_at": max(created, START - 4 * 86400),
                "method": "POST",
                "endpoint": "chat/completions",
                "model": "m",
                "stream": 0,
                "status": "success" if code is None and not relayed_429 else "error",
                "http_status": http_status,
                "latency_ms": 1.0,
                "cost_usd": None if code else rng.choice([None, 0.0, round(rng.random() / 10, 6)]),
                "total_tokens": None if code else 10,
                "error_code": code,
                "project": rng.choice(PROJECTS),
                "notes": "[]",
            }
        )
    return rows


@pytest.fixture(scope="module")
def both(postgres_server: Any, tmp_path_factory: Any) -> Any:
    rows = make_rows(900)
    tuples = [tuple(r.get(c) for c in COLUMNS) for r in rows]
    stores = stores_holding(tuples, tmp_path_factory.mktemp("sqlite"), postgres_server.database())
    yield rows, stores
    for store in stores:
        store.close()


CASES = [
    {},
    {"project": "shop"},
    {"project": "__proto__"},
    {"since": START, "bucket": 3600},
    {"since": NOW - 3600, "bucket": 60},
    {"since": None, "bucket": 86400},
    {"since": START, "until": NOW - 30, "bucket": 600},
]


# Named, not by their values: the times in them differ between xdist's workers, which must collect
# the same test ids.
CASE_IDS = ["all", "shop", "proto", "month-hourly", "hour-by-minute", "all-time-daily", "month-until"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_both_engines_give_what_the_rows_say(both: Any, case: dict[str, Any]) -> None:
    rows, stores = both
    args = {"since": START, "bucket": 86400, **case}
    project = args.get("project")
    limits = {k: v for k, v in LIMITS.items() if project in (None, k)}
    docs = [s.read_sync(budgets, limits, now=NOW, **args) for s in stores]
    assert close_enough(docs[0], docs[1]), (docs[0], docs[1])
    doc = docs[0]

    mine = [r for r in rows if project in (None, r["project"])]
    this_month = [r for r in mine if r["created_at"] >= START]
    expected_names = {r["project"] for r in this_month} | set(limits)
    since, until, width = args["since"], args.get("until"), args["bucket"]
    in_range = [
        r
        for r in mine
        if r["error_code"] in ("project_rate_limit_exceeded", "project_budget_exceeded")
        and (since is None or r["created_at"] >= since)
        and (until is None or r["created_at"] < until)
    ]
    expected_names |= {r["project"] for r in in_range}
    if project is not None:
        expected_names = {project}
    got = {p["project"]: p for p in doc["projects"]}
    assert sorted(got) == sorted(expected_names)
    for name, p in got.items():
        spent = sum(r["cost_usd"] or 0.0 for r in this_month if r["project"] == name)
        assert math.isclose(p["spend"]["month_usd"], spent, rel_tol=1e-9, abs_tol=1e-12)
        minute = [
            r
            for r in mine
            if r["project"] == name
            and NOW - 60 < r["created_at"] <= NOW
            and r["error_code"] not in ("project_rate_limit_exceeded", "project_budget_exceeded")
        ]
        assert p["rate"]["last_minute"] == len(minute)
        counts = Counter(
            (math.floor(r["created_at"] / width) * width, r["error_code"]) for r in in_range if r["project"] == name
        )
        series = {b["t"]: b for b in p["refusals"]["series"]}
        for (t, code), n in counts.items():
            assert series[t]["rate" if code == "project_rate_limit_exceeded" else "budget"] == n
        assert sum(b["rate"] + b["budget"] for b in series.values()) == sum(counts.values())
        limit = limits.get(name)
        assert p["configured"] == (limit is not None)
        if limit is not None and limit.monthly_budget_usd is not None:
            budget = limit.monthly_budget_usd
            assert p["spend"]["exhausted"] == (spent >= budget)
            assert math.isclose(p["spend"]["remaining_usd"], max(0.0, budget - spent), abs_tol=1e-12)


def _old_row(i: int, created: float) -> dict[str, Any]:
    return {
        "id": f"{i:032x}",
        "created_at": created,
        "method": "POST",
        "endpoint": "chat/completions",
        "status": "success",
        "stream": 0,
        "project": "shop",
        "cost_usd": 0.5,
    }


def test_a_schema_7_sqlite_store_gains_the_refusals_and_keeps_its_rows(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    for step in range(7):  # exactly as schema 7 left it
        conn.execute("BEGIN")
        SQLITE_MIGRATIONS[step](conn)
        conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    old = [c for c in COLUMNS if c != "error_code"]
    row = _old_row(1, NOW - 5)
    conn.execute(
        f"INSERT INTO traces ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})", [row.get(c) for c in old]
    )
    conn.close()
    with SQLiteEngine(path).open_for_writing() as conn:  # migrates
        refused = {
            **_old_row(2, NOW - 1),
            "cost_usd": None,
            "status": "error",
            "http_status": 429,
            "error_code": "project_budget_exceeded",
        }
        insert_rows(conn, [tuple(refused.get(c) for c in COLUMNS)])
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(traces)")}
    assert "traces_limited" in indexes
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    with store:
        doc = store.read_sync(budgets, {"shop": LIMITS["shop"]}, now=NOW, since=START)
    (shop,) = doc["projects"]
    assert shop["spend"]["month_usd"] == (0.5 if row["created_at"] >= START else 0.0)
    assert (shop["refusals"]["budget"], shop["rate"]["last_minute"]) == (1, 1)


def test_an_old_outbox_gains_the_new_column(tmp_path: Any) -> None:
    path = str(tmp_path / "outbox.db")
    old = [c for c in COLUMNS if c != "error_code"]
    with sqlite3.connect(path) as conn:  # as an earlier prysmai left it, with a row waiting
        conn.execute(f"CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, {', '.join(old)})")
        row = _old_row(1, NOW)
        conn.execute(
            f"INSERT INTO outbox ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})", [row.get(c) for c in old]
        )
    engine = OutboxEngine(path)
    conn = engine.open_for_writing()
    new = {**_old_row(2, NOW), "error_code": "project_rate_limit_exceeded"}
    assert engine.insert_rows(conn, [tuple(new.get(c) for c in COLUMNS)]) == (1, 0, 0)
    waiting = engine.oldest(conn, 10)
    conn.close()
    assert [(r[1], r[1 + COLUMNS.index("error_code")]) for r in waiting] == [
        (f"{1:032x}", None),
        (f"{2:032x}", "project_rate_limit_exceeded"),
    ]


def test_a_version_4_postgres_database_gains_the_refusals(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database as version 4 left it
        for step in range(4):
            conn.execute(PG_MIGRATIONS[step])
        conn.execute("CREATE TABLE prysmai_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO prysmai_schema (version) VALUES (4)")
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()  # migrates to the current version
    refused = {
        **_old_row(3, NOW - 1),
        "cost_usd": None,
        "status": "error",
        "http_status": 429,
        "error_code": "project_rate_limit_exceeded",
    }
    engine.insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in (_old_row(1, NOW - 2), refused)])
    conn.close()
    store = Store.existing(pg_url, read_time_limit=None)
    assert store is not None
    with store:
        doc = store.read_sync(budgets, {"shop": LIMITS["shop"]}, now=NOW, since=START)
    (shop,) = doc["projects"]
    assert (shop["refusals"]["rate"], shop["refusals"]["budget"], shop["rate"]["last_minute"]) == (1, 0, 1)


def test_an_exchange_journaled_before_error_code_existed_is_stored_without_one() -> None:
    """A journal left by an earlier prysmai holds each exchange's fields without the last one:
    the next start rebuilds and stores them all the same."""
    from prysmai._proxy.config.pricing import PriceTable
    from prysmai._proxy.store.capture import Exchange, finalize
    from prysmai._proxy.store.writerproc import FIELDS, exchange_of, fields_of

    assert FIELDS[-1] == "error_code"  # appended: the older fields keep their places
    ex = Exchange("a" * 32, NOW, 0.0, "POST", "chat/completions")
    ex.t_end, ex.http_status, ex.error_code = 0.001, 429, "project_rate_limit_exceeded"
    values = fields_of(ex)
    assert finalize(exchange_of(values, None, None), PriceTable.load(None))["error_code"] == ex.error_code
    old = exchange_of(values[:-1], None, None)
    assert finalize(old, PriceTable.load(None))["error_code"] is None
