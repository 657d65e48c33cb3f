"""The PostgreSQL store against a real PostgreSQL server (tests/proxy/postgres.py): the one query
layer answers the same on SQLite and PostgreSQL, batches are idempotent, migrations are locked and
versioned, and a URL's password is never shown."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import sqlite3
import threading
import time
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import QueryTimeout, Store, StoreError, TraceFilter, queries, slices
from prysmai._proxy.store.engine import register_dialect
from prysmai._proxy.store.postgres.engine import PostgresConnection, PostgresEngine, masked
from prysmai._proxy.store.postgres.schema import SCHEMA_VERSION
from prysmai._proxy.store.rollups import KEY_HOUR_ROLLUPS, QUARTER_HIST, QUARTER_TOTALS
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from ..postgres import PASSWORD

NOW = float(int(time.time()) - 3600)  # the newest trace is an hour old: both stores see the same ranges
MODELS = ["gpt-4o-mini", "gpt-4.1", None, "o3"]
USERS = ["ann", "bob", "cy", None]
SESSIONS = ["s-1", "s/2%", None]
PROJECTS = ["default", "web", "batch"]
STATUSES = ["success", "success", "success", "error", "timeout", "cancelled"]


def insert_on_postgres(url: str, rows: list[tuple[Any, ...]]) -> PostgresEngine:
    """The PostgreSQL store at ``url``, ``rows`` inserted in it (migrated first)."""
    engine = PostgresEngine(url)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, rows)
    finally:
        conn.close()
    return engine


def stores_holding(rows: list[tuple[Any, ...]], directory: Any, url: str) -> tuple[Store, Store]:
    """A SQLite store in ``directory`` and the PostgreSQL store at ``url``, both holding ``rows``,
    opened to be read without a time limit: (SQLite's, PostgreSQL's)."""
    path = str(directory / "t.db")
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, rows)
    engine = insert_on_postgres(url, rows)
    lite, pg = Store.existing(path, read_time_limit=None), Store.existing(engine.url, read_time_limit=None)
    assert lite is not None and pg is not None
    return lite, pg


def make_rows(n: int, seed: int = 7) -> list[tuple[Any, ...]]:
    """Traces over the last 9 days, of several models, users, sessions, projects and statuses,
    with and without cost and TTFT, metadata of strings, numbers and booleans."""
    rng = random.Random(seed)
    rows = []
    for _i in range(n):
        stream = rng.random() < 0.4
        meta = rng.choice(['{"env": "prod", "tier": 2}', '{"env": "dev", "beta": true}', '{"beta": false}', None])
        row = {
            "id": f"{rng.getrandbits(128):032x}",
            "created_at": NOW - rng.random() * 9 * 86400,
            "method": "POST",
            "endpoint": rng.choice(["chat/completions", "embeddings", "responses"]),
            "model": rng.choice(MODELS),
            "stream": int(stream),
            "status": rng.choice(STATUSES),
            "http_status": rng.choice([200, 400, 500, None]),
            "latency_ms": rng.choice([None, round(rng.lognormvariate(3, 1), 3)]),
            "ttft_ms": round(rng.lognormvariate(2, 1), 3) if stream else None,
            "prompt_tokens": rng.choice([None, rng.randint(1, 500)]),
            "completion_tokens": rng.choice([None, rng.randint(1, 500)]),
            "total_tokens": rng.choice([None, rng.randint(2, 1000)]),
            "cost_usd": rng.choice([None, 0.0, round(rng.random() / 100, 8)]),
            "request_body": '{"messages": [{"role": "user", "content": "Find the Needle please"}]}'
            if rng.random() < 0.1
            else '{"messages": []}',
            "response_body": "plain text answer" if rng.random() < 0.5 else None,
            "error": None,
            "user_id": rng.choice(USERS),
            "session_id": rng.choice(SESSIONS),
            "metadata": meta,
            "notes": "[]",
            "key_id": rng.choice(["key_aaaaaaaaaaaa", "key_bbbbbbbbbbbb"]),
            "project": rng.choice(PROJECTS),
            "provider": "openai",
        }
        rows.append(tuple(row.get(c) for c in COLUMNS))
    return rows


def close_enough(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-9 relative (sums add in another order on each engine)."""
    if (isinstance(a, float) and isinstance(b, (int, float))) or (isinstance(b, float) and isinstance(a, (int, float))):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close_enough(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close_enough(x, y) for x, y in zip(a, b))
    return bool(a == b)


@pytest.fixture(scope="module")
def both(postgres_server: Any, tmp_path_factory: Any) -> Any:
    """The same 1 500 traces in a SQLite store and a PostgreSQL store."""
    rows = make_rows(1500)
    path = str(tmp_path_factory.mktemp("sqlite") / "t.db")
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, rows)
    engine = PostgresEngine(postgres_server.database())
    conn = engine.open_for_writing()
    engine.insert_rows(conn, rows[:700])
    engine.insert_rows(conn, rows[500:])  # overlapping batches: the overlap is taken once
    conn.close()
    sqlite_store, pg_store = (
        Store.existing(path, read_time_limit=None),
        Store.existing(engine.url, read_time_limit=None),
    )
    assert sqlite_store is not None and pg_store is not None
    yield sqlite_store, pg_store
    sqlite_store.close()
    pg_store.close()


ranges = st.tuples(
    st.sampled_from([None, NOW - 86400, NOW - 3 * 86400 + 1234.5]), st.sampled_from([None, NOW - 3600, NOW - 86400 * 2])
).filter(lambda r: r[0] is None or r[1] is None or r[0] <= r[1])
filters = st.builds(
    lambda r, **kw: TraceFilter(since=r[0], until=r[1], **kw),
    ranges,
    model=st.sampled_from([None, "gpt-4o-mini", "o3"]),
    endpoint=st.sampled_from([None, "chat/completions"]),
    status=st.sampled_from([None, "success", "error", "cancelled"]),
    user_id=st.sampled_from([None, "ann"]),
    session_id=st.sampled_from([None, "s/2%"]),
    key_id=st.sampled_from([None, "key_bbbbbbbbbbbb"]),
    project=st.sampled_from([None, "web", "batch", "nosuch"]),
)


@given(f=filters, sort=st.sampled_from(sorted(queries.SORTS)), order=st.booleans(), limit=st.sampled_from([1, 7, 50]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_lists_and_every_page_answer_the_same(both: Any, f: TraceFilter, sort: str, order: bool, limit: int) -> None:
    """Pages of the same values on both engines. In time order (ties by id) the same rows; in
    another order, rows of the same value may come in another order (SQLite breaks those ties by
    arrival, PostgreSQL by id), so each engine's pages are checked to be its whole list, in order."""
    column = queries.SORTS[sort]
    lists = []
    for store in both:
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(3):  # the first three pages, each from its own cursor
            rows, cursor = store.read_sync(
                queries.list_traces, f, sort=sort, descending=order, cursor=cursor, limit=limit
            )
            pages += rows
            if cursor is None:
                break
        whole, _ = store.read_sync(queries.list_traces, f, sort=sort, descending=order, limit=len(pages) or 1)
        assert [r["id"] for r in pages] == [r["id"] for r in whole][: len(pages)]
        lists.append((pages, cursor))
    (a, next_a), (b, next_b) = lists
    assert (next_a is None) == (next_b is None)
    if column == "created_at":
        assert close_enough(a, b), (f, sort, order)
    else:
        assert close_enough([r[column] for r in a], [r[column] for r in b]), (f, sort, order)
        by_id = {r["id"]: r for r in b}
        assert all(close_enough(r, by_id[r["id"]]) for r in a if r["id"] in by_id)


@given(f=filters)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_aggregates_answer_the_same(both: Any, f: TraceFilter) -> None:
    sqlite_store, pg_store = both
    for fn, args in (
        (queries.stats, (f,)),
        (queries.overview, (f,)),
        (queries.breakdown, (f, "model", 10)),
        (queries.breakdown, (f, "user_id", 10)),
        (queries.timeseries, (f, queries.pick_bucket(f.since, f.until, NOW))),
        (queries.sessions, (f,)),
        (queries.users, (f,)),
        # Sub-day series read the hourly histograms by model (version 9; SQLite's schema 10).
        (queries.timeseries, (f, 7200)),
        (slices.group_series, (f, "model", 7200)),
        # The overview page, whose top users and sessions over a range find the top keys by their
        # requests first, with partial days read as their rollup less the rest when mostly inside.
        (queries.overview_page, (f, queries.pick_bucket(f.since, f.until, NOW), queries.BREAKDOWNS, 10)),
    ):
        if fn in (queries.timeseries, slices.group_series, queries.overview_page) and f.since is None:
            continue  # an open range ends at the wall clock's now, which moves between the two reads
        a, b = sqlite_store.read_sync(fn, *args), pg_store.read_sync(fn, *args)
        assert close_enough(a, b), (fn.__name__, f)


@pytest.mark.parametrize("days", [7, 6.5, 1.7, 0.6])
def test_the_overview_page_of_the_last_days_answers_the_same(both: Any, days: float) -> None:
    """The dashboard's overview of the last days (7 by default), as the page asks for it: open-ended,
    its partial first day and today read from the per-key rollups less the rows outside the range
    or from the rows, whichever is fewer; the same on both engines."""
    sqlite_store, pg_store = both
    since = time.time() - days * 86400
    for f in (TraceFilter(since=since), TraceFilter(since=since, project="web")):
        args = (f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 10)
        a, b = sqlite_store.read_sync(queries.overview_page, *args), pg_store.read_sync(queries.overview_page, *args)
        assert close_enough(a, b), f
        for by in ("user_id", "session_id"):
            # Each key's requests are its rows in the range (both engines' answers are that).
            where = "created_at >= ?" + ("" if f.project is None else " AND project = ?")
            params = [since] + ([] if f.project is None else [f.project])
            counts = dict(
                pg_store.read_sync(
                    lambda conn, by=by, where=where, params=params: conn.execute(
                        f"SELECT {by}, count(*) FROM traces WHERE {where} GROUP BY {by}", params
                    ).fetchall()
                )
            )
            got = b["breakdowns"][by]
            assert got and [r["requests"] for r in got] == sorted(counts.values(), reverse=True)[: len(got)]
            assert all(r["requests"] == counts[r["key"]] for r in got)


@pytest.mark.parametrize(
    ("key", "value", "expected_nonzero"),
    [("env", "prod", True), ("tier", "2", True), ("beta", "1", True), ("beta", "0", True), ("env", "nope", False)],
)
def test_metadata_and_text_filters_answer_the_same(both: Any, key: str, value: str, expected_nonzero: bool) -> None:
    sqlite_store, pg_store = both
    f = TraceFilter(meta=((key, value),))
    a, b = sqlite_store.read_sync(queries.stats, f), pg_store.read_sync(queries.stats, f)
    assert close_enough(a, b) and (a["requests"] > 0) == expected_nonzero
    text = TraceFilter(text="needle")
    a, b = (
        sqlite_store.read_sync(queries.list_traces, text, limit=1000),
        pg_store.read_sync(queries.list_traces, text, limit=1000),
    )
    assert close_enough(a, b) and a[0]


def test_one_trace_and_a_session_answer_the_same(both: Any) -> None:
    sqlite_store, pg_store = both
    some = sqlite_store.read_sync(queries.list_traces, TraceFilter(), limit=20)[0]
    for row in some:
        for project in (None, row["project"], "other"):
            a = sqlite_store.read_sync(queries.get_trace, row["id"], project=project)
            b = pg_store.read_sync(queries.get_trace, row["id"], project=project)
            assert close_enough(a, b)
        assert close_enough(
            sqlite_store.read_sync(queries.get_trace, row["id"][:10]),
            pg_store.read_sync(queries.get_trace, row["id"][:10]),
        )
    for session in ("s-1", "s/2%"):
        a = sqlite_store.read_sync(queries.session_page, session, limit=1000)
        assert a["traces"] and close_enough(a, pg_store.read_sync(queries.session_page, session, limit=1000))
    since = math.floor((NOW - 30 * 86400) / 3600) * 3600
    assert close_enough(
        sqlite_store.read_sync(queries.month_spend, since), pg_store.read_sync(queries.month_spend, since)
    )


def test_a_batch_sent_again_stores_nothing_twice(pg_url: str) -> None:
    engine = PostgresEngine(pg_url)
    rows = make_rows(300, seed=3)
    conn = engine.open_for_writing()
    try:
        for _ in range(3):
            engine.insert_rows(conn, rows)
        engine.insert_rows(conn, rows[100:150])
        count = conn.execute("SELECT count(*) FROM trace_rows").fetchone()[0]
        bodies = conn.execute("SELECT count(*) FROM trace_bodies").fetchone()[0]
        folded = conn.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0]
        hist = conn.execute("SELECT sum(n) FROM rollup_hist_day WHERE metric = 'latency'").fetchone()[0]
    finally:
        conn.close()
    with_latency = sum(1 for r in rows if r[COLUMNS.index("latency_ms")] is not None)
    assert (count, bodies, folded, hist) == (300, 300, 300, with_latency)


def test_text_postgres_cannot_hold_is_repaired_not_lost(pg_url: str) -> None:
    engine = PostgresEngine(pg_url)
    (row,) = make_rows(1, seed=9)
    values = dict(zip(COLUMNS, row))
    values.update(response_body="a\x00b", metadata='{"k": "x\\u0000y"}', error="e\x00")
    conn = engine.open_for_writing()
    try:
        assert engine.insert_rows(conn, [tuple(values[c] for c in COLUMNS)]) == (1, 1, 0)
    finally:
        conn.close()
    store = Store.existing(pg_url)
    assert store is not None
    with store:
        trace = store.read_sync(queries.get_trace, values["id"])
    assert trace is not None and trace["response_body"] == "a\ufffdb" and trace["metadata"] == {"k": "x\ufffdy"}


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresEngine(pg_url).open_for_writing().close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    conn = PostgresEngine(pg_url).connect()
    try:
        assert conn.execute("SELECT count(*), max(version) FROM prysmai_schema").fetchone() == (1, SCHEMA_VERSION)
    finally:
        conn.close()


def test_a_version_5_database_with_traces_and_scores_is_migrated_to_the_same_answers(pg_url: str) -> None:
    """Version 6 builds the all-time and score rollups from the rollups and scores already there:
    the overview and the averages answer after the migration what a database folded from the start
    answers (the one written at version 6, taken back to version 5 to be migrated again)."""
    from prysmai._proxy.store import scores

    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    rows = make_rows(300, seed=5)
    engine.insert_rows(conn, rows)
    conn.close()
    store = Store.existing(pg_url, read_time_limit=None)
    assert store is not None
    new = scores.NewScore.parse({"name": "helpful", "value": 0.75})
    for row in rows[::4]:
        assert store.edit_sync(scores.add, row[0], new, project=None, author_key="key_x", source="api") is not None
    reads = [
        (queries.overview_page, (TraceFilter(), 86400, queries.BREAKDOWNS, 5)),
        (queries.overview_page, (TraceFilter(project="web"), 86400, queries.BREAKDOWNS, 5)),
        (scores.averages, (TraceFilter(), ("model", "user", "project"), 50)),
        (scores.averages, (TraceFilter(since=NOW - 4 * 86400), ("model", "user", "project"), 50)),
        # Version 8's scored traces' rollups, built again from the scores.
        (queries.stats, (TraceFilter(score="helpful"),)),
    ]
    before = [store.read_sync(fn, *args) for fn, args in reads]
    store.close()
    conn = engine.connect()
    with conn.transaction():  # back to version 5: without what version 6 added
        conn.execute(
            "DROP TABLE rollup_hist_project_day, rollup_all, rollup_hist_all, rollup_user_all, rollup_session_all, "
            "rollup_score_day, rollup_score_all"
        )
        conn.execute("DROP INDEX scores_by_trace_name")
        conn.execute("CREATE INDEX scores_by_trace ON scores (trace_id)")
        conn.execute("UPDATE prysmai_schema SET version = 5")
    conn.close()
    store = Store.existing(pg_url, read_time_limit=None)  # migrates
    assert store is not None
    try:
        after = [store.read_sync(fn, *args) for fn, args in reads]
    finally:
        store.close()
    assert close_enough(after, before) and before[2]["model"] and before[4]["requests"] == len(rows[::4])


def test_a_database_of_a_newer_prysmai_is_refused(pg_url: str) -> None:
    engine = PostgresEngine(pg_url)
    engine.open_for_writing().close()
    conn = engine.connect()
    conn.execute("UPDATE prysmai_schema SET version = %s", [SCHEMA_VERSION + 1])
    conn.close()
    with pytest.raises(StoreError, match="newer than this prysmai understands"):
        PostgresEngine(pg_url).open_for_writing()


def test_the_password_is_never_shown(postgres_server: Any, pg_url: str, capsys: Any) -> None:
    from prysmai._cli import main

    assert PASSWORD in pg_url
    assert PASSWORD not in masked(pg_url) and "***" in masked(pg_url)
    wrong = pg_url.replace(PASSWORD, "not-the-" + PASSWORD)
    with pytest.raises(StoreError) as refused:
        PostgresEngine(wrong).open_for_writing()
    assert PASSWORD not in str(refused.value) and "password" in str(refused.value)
    for url in (wrong, pg_url.rsplit("/", 1)[0] + "/no_such_db"):
        assert main(["traces", "--db", url]) == 1
        out, err = capsys.readouterr()
        assert PASSWORD not in out + err and "***" in out + err
    PostgresEngine(pg_url).open_for_writing().close()
    assert main(["stats", "--db", pg_url, "--json"]) == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err


def test_an_empty_database_is_no_store_yet(pg_url: str, capsys: Any) -> None:
    from prysmai._cli import main

    assert Store.existing(pg_url) is None
    assert main(["traces", "--db", pg_url]) == 1
    assert "No trace store" in capsys.readouterr().out


def test_day_partitions_hold_the_rows(pg_url: str) -> None:
    engine = PostgresEngine(pg_url)
    rows = make_rows(200, seed=4)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, rows)
        parts = {r[0] for r in conn.execute("SELECT tableoid::regclass::text FROM trace_rows")}
    finally:
        conn.close()
    days = {math.floor(r[COLUMNS.index("created_at")] / 86400) for r in rows}
    assert parts == {f"trace_rows_d{day}" for day in days} and len(days) >= 9


@pytest.mark.parametrize("sort", ["cost_usd", "latency_ms", "ttft_ms", "total_tokens"])
def test_a_sorted_page_and_its_cursor_pages_read_each_days_sort_index(pg_url: str, sort: str) -> None:
    """The query a sorted list page runs (and its cursor pages) can be answered in order from each
    day partition's sort index, merged, without sorting: told not to sort, the planner reads them
    (the store here is too small for it to choose them on its own)."""
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, make_rows(300, seed=5))
    finally:
        conn.close()
    store = Store.existing(pg_url, read_time_limit=None)
    assert store is not None

    def plans(conn: Any) -> list[str]:
        conn.execute("SET LOCAL enable_sort = off")
        conn.execute("SET LOCAL enable_seqscan = off")
        sql = f"SELECT id FROM traces WHERE {sort} IS NOT NULL{{}} ORDER BY {sort} DESC, id DESC LIMIT 51"
        first = conn.execute("EXPLAIN " + sql.format(""))
        cursor = conn.execute("EXPLAIN " + sql.format(f" AND ({sort}, id) < (?, ?)"), [1e9, "f" * 32])
        return ["\n".join(r[0] for r in plan.fetchall()) for plan in (first, cursor)]

    with store:
        for plan in store.read_sync(plans):
            assert "Merge Append" in plan and f"{sort}_id_idx" in plan and "Sort  " not in plan, plan


def test_lists_and_aggregates_read_no_body(pg_url: str) -> None:
    """A query of ``traces`` that names no body column reads ``trace_rows`` alone: PostgreSQL 15
    cannot drop a left join to a partitioned table, so the view must not join the bodies."""
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, make_rows(100, seed=3))
        for sql in (
            "SELECT id FROM traces WHERE created_at >= 0 ORDER BY created_at DESC, id DESC LIMIT 51",
            "SELECT model, count(*), sum(cost_usd) FROM traces WHERE created_at >= 0 GROUP BY model",
            f"SELECT {', '.join(queries.SUMMARY_COLUMNS)} FROM traces WHERE id IN ('a', 'b')",
        ):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())
            assert "trace_rows" in plan and "trace_bodies" not in plan, plan
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT request_body FROM traces WHERE id = 'a'"))
        assert "trace_bodies" in plan
    finally:
        conn.close()


def test_a_read_statement_run_again_is_planned_for_its_values(pg_url: str) -> None:
    """psycopg prepares a statement it has run five times on a connection, and PostgreSQL then
    plans it once for every value (a generic plan, costed for the average key: at 1 M traces, a
    busy user's latency sample read all of that user's rows and sorted them). The overview's
    statements, run again and again on one read connection, are each planned for their values."""
    # One busy user and many with a trace each: the average user is not the busy one.
    user = COLUMNS.index("user_id")
    rows = [(*r[:user], "busy" if i % 2 else f"u-{i}", *r[user + 1 :]) for i, r in enumerate(make_rows(3000, seed=4))]
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, rows)
        conn.execute("ANALYZE")
    finally:
        conn.close()
    store = Store.existing(pg_url, read_time_limit=None)
    assert store is not None

    plans = "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"

    def breakdowns_then_plans(other: Any) -> list[Any]:
        for _ in range(12):
            queries.breakdown(other, TraceFilter(), "user_id", 50)
        return other.execute(plans).fetchall()  # type: ignore[no-any-return]

    def page_then_plans(conn: Any) -> list[Any]:
        # (psycopg deallocates what it prepared at a ROLLBACK, which ends every read: look within it.)
        # Twelve pages: psycopg prepares a statement at its sixth run, and PostgreSQL may choose
        # a generic plan from the sixth run of a prepared statement on.
        for _ in range(12):
            queries.overview_page(conn, TraceFilter(), 86400, queries.BREAKDOWNS, 50)
        # The page reads the users' and sessions' breakdowns on a second connection, alongside.
        return [*conn.execute(plans).fetchall(), *conn.alongside(breakdowns_then_plans)()]

    with store:
        prepared = store.read_sync(page_then_plans)
    # (A statement without parameters has one plan whatever the mode: nothing to plan for.)
    reads = [p for p in prepared if p[0].startswith("SELECT") and "$1" in p[0]]
    assert any("ORDER BY created_at DESC LIMIT" in p[0] for p in reads), prepared  # the keys' samples: prepared
    for statement, generic, custom in reads:
        assert generic == 0 and custom > 0, statement


def test_a_read_alongside_sees_the_snapshot_of_its_read_and_keeps_its_time_limit(pg_url: str) -> None:
    """A page's part read on a second connection (``alongside``) sees what the page's own
    connection sees: a trace committed meanwhile is in neither; the read's time limit holds there
    too, as a :class:`QueryTimeout`."""
    rows = make_rows(40, seed=11)
    engine = insert_on_postgres(pg_url, rows[:30])
    count = "SELECT count(*) FROM traces"

    def then_insert(conn: Any) -> tuple[int, int]:
        before = int(conn.execute(count).fetchone()[0])
        insert_on_postgres(pg_url, rows[30:])  # committed, after this read's snapshot was taken
        beside = conn.alongside(lambda other: int(other.execute(count).fetchone()[0]))()
        return before, beside

    store = Store.existing(engine.url, read_time_limit=None)
    assert store is not None
    with store:
        assert store.read_sync(then_insert) == (30, 30)
        assert store.read_sync(lambda conn: conn.alongside(lambda o: int(o.execute(count).fetchone()[0]))()) == 40
        with pytest.raises(QueryTimeout, match=r"0\.2 s limit"):
            store.read_sync(lambda conn: conn.alongside(lambda o: o.execute("SELECT pg_sleep(3)"))(), time_limit=0.2)
        # The connections go on: the next read beside is whole.
        assert store.read_sync(lambda conn: conn.alongside(lambda o: int(o.execute(count).fetchone()[0]))()) == 40

        def page_beside(conn: Any) -> tuple[int, bool]:
            page = queries.overview_page(conn, TraceFilter(), 86400, queries.BREAKDOWNS, 10)
            return page["overview"]["requests"], conn._beside is not None

        # The overview page reads part of itself beside (its answers: the parity tests).
        assert store.read_sync(page_beside) == (40, True)


class _Explaining(PostgresConnection):
    """A read connection that also EXPLAINs (ANALYZE) each read of the keys' latency samples."""

    __slots__ = ()
    plans: ClassVar[list[str]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if "SELECT latency_ms FROM" in sql and "ORDER BY created_at DESC LIMIT" in sql:
            plan = super().execute("EXPLAIN (ANALYZE) " + sql, parameters).fetchall()
            self.plans.append("\n".join(r[0] for r in plan))
        return super().execute(sql, parameters)


register_dialect(_Explaining, PostgresEngine.dialect)


@pytest.mark.parametrize("project", [None, "web"])
@pytest.mark.parametrize("by", ["user_id", "session_id"])
def test_a_keys_latency_sample_is_read_from_its_index_alone(pg_url: str, by: str, project: str | None) -> None:
    """The overview's latency sample of each top user or session (its newest traces, of one
    project or all) is read from the key's index alone: no trace row is visited (once the day
    partitions are vacuumed, as autovacuum does), as SQLite's covering index reads it; one
    statement reads every key's sample."""
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, make_rows(600, seed=6))
        conn.execute("VACUUM (ANALYZE) trace_rows")
    finally:
        conn.close()
    _Explaining.plans = []
    reader = _Explaining(engine.connect(read_only=True))
    try:
        with engine.time_limited(reader, None):
            # The store is too small for the planner to prefer an index to a scan on its own.
            reader.execute("SET LOCAL enable_seqscan = off")
            reader.execute("SET LOCAL enable_bitmapscan = off")
            found = queries.breakdown(reader, TraceFilter(project=project), by, 5)
    finally:
        reader.close()
    assert found and len(_Explaining.plans) == 1  # one read for every key
    # The plan of each key's sample (the subquery ``sample<i>`` of the i-th key).
    arms = re.split(r"\n\s*->  Subquery Scan on sample(\d+)", _Explaining.plans[0])
    samples = {int(i): plan for i, plan in zip(arms[1::2], arms[2::2])}
    assert sorted(samples) == list(range(len(found)))
    keyed = [samples[i] for i, row in enumerate(found) if row["key"] is not None]  # (no index holds NULL keys)
    assert keyed
    for plan in keyed:
        # A day holding one or two rows may be planned on another index: the key's own never reads rows.
        assert "Index Only Scan" in plan and "Seq Scan" not in plan, plan
        assert not re.search(rf"Index Scan (Backward )?using \S*{by}\S*", plan), plan
        assert all(int(n) == 0 for n in re.findall(r"Heap Fetches: (\d+)", plan)), plan


def _read_on_postgres(pg_url: str, rows: list[tuple[Any, ...]], connection: type[PostgresConnection], read: Any) -> Any:
    """``read(conn)`` of a PostgreSQL store holding ``rows``, on a read connection of the class
    ``connection`` (one that notes what it runs), without a time limit."""
    engine = insert_on_postgres(pg_url, rows)
    reader = connection(engine.connect(read_only=True))
    try:
        with engine.time_limited(reader, None):
            return read(reader)
    finally:
        reader.close()


def _read_on_sqlite(tmp_path: Any, rows: list[tuple[Any, ...]], read: Any) -> Any:
    """``read(conn)`` of a SQLite store holding ``rows``: what PostgreSQL's answer must equal."""
    with SQLiteEngine(str(tmp_path / "t.db")).open_for_writing() as lite:
        insert_rows(lite, rows)
        return read(lite)


class _Typing(PostgresConnection):
    """A read connection that also notes the type of each histogram count it reads."""

    __slots__ = ()
    counts: ClassVar[list[int]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        cursor = super().execute(sql, parameters)
        if "FROM rollup_hist" in sql and ", metric, bucket, " in sql:
            columns = [d.name for d in cursor.description]
            self.counts.append(cursor.description[columns.index("bucket") + 1].type_code)
        return cursor


register_dialect(_Typing, PostgresEngine.dialect)


@pytest.mark.parametrize("days", [None, 7])
def test_the_overviews_histogram_counts_are_read_as_bigint(pg_url: str, days: int | None, tmp_path: Any) -> None:
    """The overview's histogram reads of the rollups (the 7-day page's series reads thousands of
    rows) add their counts up as a ``bigint``, which psycopg loads in C, not as the ``numeric``
    that ``sum`` of a bigint gives, which a Python loader reads; the page answers as SQLite's."""
    from psycopg.postgres import types

    rows = make_rows(400, seed=9)
    since = None if days is None else time.time() - days * 86400
    f = TraceFilter(since=since)

    def read(conn: Any) -> Any:
        return queries.overview_page(conn, f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 10)

    _Typing.counts = []
    page = _read_on_postgres(pg_url, rows, _Typing, read)
    assert _Typing.counts
    assert set(_Typing.counts) == {types["int8"].oid}
    expected = _read_on_sqlite(tmp_path, rows, read)
    assert close_enough(page["overview"], expected["overview"])
    assert close_enough(page["timeseries"], expected["timeseries"])
    assert close_enough(page["breakdowns"]["model"], expected["breakdowns"]["model"])


class _Counting(PostgresConnection):
    """A read connection that notes each statement it runs."""

    __slots__ = ()
    statements: ClassVar[list[str]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        self.statements.append(sql)
        return super().execute(sql, parameters)


register_dialect(_Counting, PostgresEngine.dialect)


@pytest.mark.parametrize("by", ["user_id", "session_id"])
def test_a_ranges_top_keys_list_the_projects_once_from_the_rollups(pg_url: str, by: str, tmp_path: Any) -> None:
    """The totals of a range's top users or sessions seek their per-day rollup rows by (day,
    project, key) in each part of the range (its whole days, today, maybe its first day): the
    store's projects are listed once for all the parts, from the all-time totals (a walk of the
    traces' project index is a statement per project, each a seek in every day partition), and
    the breakdown answers as SQLite's."""
    rows = make_rows(400, seed=10)
    f = TraceFilter(since=time.time() - 7 * 86400)

    def read(conn: Any) -> Any:
        return queries.breakdown(conn, f, by, 5)

    _Counting.statements = []
    found = _read_on_postgres(pg_url, rows, _Counting, read)
    assert any("period IN (" in sql for sql in _Counting.statements)  # the keys' rollup rows sought
    assert not any("min(project)" in sql for sql in _Counting.statements)
    assert sum("DISTINCT project FROM rollup_all" in sql for sql in _Counting.statements) == 1
    assert close_enough(found, _read_on_sqlite(tmp_path, rows, read))


def test_the_7_day_page_reads_ttft_once_and_each_breakdowns_samples_at_once(pg_url: str, tmp_path: Any) -> None:
    """The 7-day overview page reads less than one read per part: its 2-hour series reads the
    latency histograms alone (the range's TTFT is the project, model and endpoint breakdowns'
    read), and the latency samples of the top users, and of the top sessions, are one statement
    each; the page answers as SQLite's."""
    rows = make_rows(600, seed=11)
    f = TraceFilter(since=time.time() - 7 * 86400)
    width = queries.pick_bucket(f.since, f.until)

    def read(conn: Any) -> Any:
        return queries.overview_page(conn, f, width, queries.BREAKDOWNS, 10)

    _Counting.statements = []
    page = _read_on_postgres(pg_url, rows, _Counting, read)
    series = [sql for sql in _Counting.statements if f"/ {width})" in sql]  # grouped by the series' bucket
    assert any("rollup_hist_hour" in sql for sql in series)
    for sql in series:
        # No TTFT by bucket: the histogram rollups read for the latency alone, the rows' TTFT not read.
        assert "ttft_ms" not in sql and ("metric" not in sql or "metric IN (" in sql), sql
    samples = [sql for sql in _Counting.statements if "ORDER BY created_at DESC LIMIT" in sql]
    assert len(samples) == 2 and "user_id" in samples[0] and "session_id" in samples[1]
    assert page["overview"]["ttft_ms"]["p50"] is not None
    assert close_enough(page, _read_on_sqlite(tmp_path, rows, read))


#: Ranges whose edges fall inside days and hours: the dashboard's 7 days to now; a closed range;
#: a range of no whole day; a week whose first day is mostly inside it (that day is then its
#: rollup row less the hours, and the partial hour, before the range).
_MID_DAY_RANGES = (
    TraceFilter(since=time.time() - 7 * 86400),
    TraceFilter(since=NOW - 6 * 86400 - 4321.5, until=NOW - 2 * 86400 + 777.25),
    TraceFilter(since=NOW - 20 * 3600 - 100.5, until=NOW - 7 * 3600 + 0.5),
    TraceFilter(since=math.floor(NOW / 86400) * 86400 - 6.8 * 86400, project="web"),
)


def _key_reads(conn: Any) -> Any:
    """What reads the per-key rollups over a range: the overview page (its top users and
    sessions), their breakdowns, and the user and session lists (with first and last times)."""
    return [
        (
            queries.overview_page(conn, f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 5),
            queries.breakdown(conn, f, "user_id", 3),
            queries.users(conn, f),
            queries.sessions(conn, f, sort="requests"),
        )
        for f in _MID_DAY_RANGES
    ]


def test_a_ranges_partial_days_are_read_from_the_hourly_key_rollups(pg_url: str, tmp_path: Any) -> None:
    """On PostgreSQL (version 10), the whole hours of a range's partial days come from the hourly
    per-key rollups, not from the rows (at 10 M traces, half a day is 200 000 rows to group), for
    the overview page's top keys and their totals and for the user and session lists; each
    answers exactly as SQLite, which reads those hours from the rows."""
    rows = make_rows(900, seed=13)
    _Counting.statements = []
    found = _read_on_postgres(pg_url, rows, _Counting, _key_reads)
    for table in KEY_HOUR_ROLLUPS.values():
        assert any(f"FROM {table}" in sql for sql in _Counting.statements), table
    expected = _read_on_sqlite(tmp_path, rows, _key_reads)
    for got, want, f in zip(found, expected, _MID_DAY_RANGES):
        assert close_enough(got, want), f
        assert want[0]["breakdowns"]["user_id"] and want[3][0], f  # something to compare


#: Ranges of a day or so with edges inside a quarter hour: the dashboard's day (15-minute
#: buckets), and ranges whose partial hours hold whole quarters.
_QUARTER_RANGES = (
    TraceFilter(since=NOW - 86400 + 0.25),
    TraceFilter(since=NOW - 3 * 86400 - 1234.5, until=NOW - 2 * 86400 + 2345.75),
    TraceFilter(since=NOW - 30 * 3600 + 77.5, until=NOW - 5 * 3600 - 600.25, project="web"),
)


def test_a_days_series_and_a_ranges_partial_hours_read_the_quarter_hour_rollups(pg_url: str, tmp_path: Any) -> None:
    """On PostgreSQL (version 11), a series of 15-minute buckets reads the rollups by quarter hour
    (the dashboard's day: at 10 M traces its rows were a day's 440 000), and so do the whole
    quarters of a range's partial hours (a 7-day page's series and totals); a filter the rollups
    cannot answer reads the rows. Each answers exactly as SQLite, which keeps no such rollups."""
    rows = make_rows(1500, seed=19)
    reads: list[tuple[str, list[str]]] = []

    def read(conn: Any) -> Any:
        out = []
        for f in _QUARTER_RANGES:
            for what, fn, args in (
                ("page", queries.overview_page, (f, 900, queries.BREAKDOWNS, 5)),
                ("week page", queries.overview_page, (dataclasses.replace(f, since=f.since - 6 * 86400), 7200, (), 5)),
                ("split", slices.group_series, (f, "model", 900)),
                ("a user's", queries.timeseries, (dataclasses.replace(f, user_id="ann"), 900)),
            ):
                _Counting.statements = []
                out.append(fn(conn, *args))
                reads.append((what, list(_Counting.statements)))
        return out

    found = _read_on_postgres(pg_url, rows, _Counting, read)
    for what, statements in reads:
        totals = any("FROM rollup_quarter" in sql for sql in statements)
        hists = any("FROM rollup_hist_quarter" in sql for sql in statements)
        assert totals == (what != "a user's"), what
        # A split by model has no histogram by quarter and model: its quarters' are read from rows.
        assert hists == (what in ("page", "week page")), what
    expected = _read_on_sqlite(tmp_path, rows, read)
    for got, want in zip(found, expected):
        assert close_enough(got, want)
    assert all(page["overview"]["requests"] for page in expected[::4])  # something to compare


def _many_keys(rows: list[tuple[Any, ...]], seed: int) -> list[tuple[Any, ...]]:
    """``rows`` with their users and sessions drawn from many keys (ties among the top ones)."""
    rng = random.Random(seed)
    user, session = COLUMNS.index("user_id"), COLUMNS.index("session_id")
    out = []
    for r in rows:
        row = list(r)
        row[user] = None if rng.random() < 0.1 else f"u{rng.randrange(40):02d}"
        row[session] = None if rng.random() < 0.1 else f"s{rng.randrange(70)}"
        out.append(tuple(row))
    return out


@pytest.mark.parametrize("by", ["user_id", "session_id"])
def test_a_ranges_top_keys_are_found_from_its_days_and_sought(pg_url: str, by: str, tmp_path: Any) -> None:
    """On PostgreSQL, a range's top users or sessions are chosen among candidates read from the
    per-day rollup alone (its whole days a floor of each key's requests, every day it touches a
    ceiling), whose totals are then sought key by key: the partial days' hourly rows are read for
    those keys only, never grouped for every key. The ranking, ties included, is SQLite's."""
    rows = _many_keys(make_rows(900, seed=15), seed=15)

    def read(conn: Any) -> Any:
        return [(queries.breakdown(conn, f, by, 5), queries.breakdown(conn, f, by, 12)) for f in _MID_DAY_RANGES]

    _Counting.statements = []
    found = _read_on_postgres(pg_url, rows, _Counting, read)
    hourly = [sql for sql in _Counting.statements if f"FROM {KEY_HOUR_ROLLUPS[by]}" in sql]
    assert hourly and all(f"{by} IN (" in sql for sql in hourly)
    assert any("WITH bounds AS MATERIALIZED" in sql for sql in _Counting.statements)
    expected = _read_on_sqlite(tmp_path, rows, read)
    for got, want, f in zip(found, expected, _MID_DAY_RANGES):
        assert close_enough(got, want), f
        # Ties among the top keys: the order of tied keys is compared too.
        assert len(want[0]) == 5 and any(a["requests"] == b["requests"] for a, b in zip(want[1], want[1][1:])), f


@pytest.fixture(scope="module")
def many(postgres_server: Any, tmp_path_factory: Any) -> Any:
    """The same 1 500 traces of many users and sessions in a SQLite store and a PostgreSQL store."""
    rows = _many_keys(make_rows(1500, seed=16), seed=16)
    stores = stores_holding(rows, tmp_path_factory.mktemp("many"), postgres_server.database())
    yield stores
    for store in stores:
        store.close()


@given(
    since=st.floats(min_value=0.2, max_value=8.5),
    length=st.one_of(st.none(), st.floats(min_value=0.05, max_value=8.0)),
    by=st.sampled_from(["user_id", "session_id"]),
    limit=st.sampled_from([1, 3, 10, 40]),
    project=st.sampled_from([None, "web"]),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_ranges_top_keys_answer_the_same_whatever_its_edges(
    many: Any, since: float, length: float | None, by: str, limit: int, project: str | None
) -> None:
    """The top users and sessions of any range (PostgreSQL: candidates from the per-day rollup,
    their totals sought through the hourly rollups; SQLite: the range ranked whole) are the same
    keys, in the same order, with the same totals."""
    lite, pg = many
    start = NOW - since * 86400
    f = TraceFilter(since=start, until=None if length is None else start + length * 86400, project=project)
    assert close_enough(pg.read_sync(queries.breakdown, f, by, limit), lite.read_sync(queries.breakdown, f, by, limit))


def test_version_10_builds_the_hourly_key_rollups_from_the_rows(pg_url: str) -> None:
    """A database of version 9 holding traces gets its hourly per-key rollups built from the rows:
    row for row what folding those traces gives."""
    import psycopg

    rows = make_rows(500, seed=14)
    engine = insert_on_postgres(pg_url, rows)
    every = {t: f"SELECT * FROM {t} ORDER BY period, project, {c}" for c, t in KEY_HOUR_ROLLUPS.items()}
    with psycopg.connect(pg_url, autocommit=True) as raw:
        folded = {t: raw.execute(sql).fetchall() for t, sql in every.items()}
        assert all(folded.values())
        assert {t: sum(r[3] for r in found) for t, found in folded.items()} == dict.fromkeys(every, len(rows))
        raw.execute(f"DROP TABLE {', '.join(KEY_HOUR_ROLLUPS.values())}")
        raw.execute("UPDATE prysmai_schema SET version = 9")
        engine.open_for_writing().close()  # migrates
        assert raw.execute("SELECT version FROM prysmai_schema").fetchone() == (SCHEMA_VERSION,)
        assert {t: raw.execute(sql).fetchall() for t, sql in every.items()} == folded


def test_a_version_6_database_is_migrated_and_reads_the_same(pg_url: str, tmp_path: Any) -> None:
    """Version 7 replaces the view's join to the bodies and indexes every day partition: a
    database of version 6 with traces reads, after it, the same rows and bodies as before and
    as SQLite."""
    import psycopg

    from prysmai._proxy.store.postgres.schema import MIGRATIONS, V11, _hist_table, _key_table

    rows = make_rows(400, seed=8)
    engine = PostgresEngine(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database as version 6 left it
        for step in range(6):
            conn.execute(MIGRATIONS[step])
        conn.execute("CREATE TABLE prysmai_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO prysmai_schema (version) VALUES (6)")
        # Today's insert also folds into version 9's hourly histograms by model, version 10's
        # hourly per-key rollups and version 11's rollups by quarter hour: the tables are there
        # for it (version 11's as it makes them), emptied or dropped after, and versions 9 to 11
        # build them again from the rows.
        conn.execute(_hist_table("rollup_hist_model_hour"))
        for column, table in KEY_HOUR_ROLLUPS.items():
            conn.execute(_key_table(column, table))
        conn.execute(V11)
        engine.insert_rows(conn, rows)
        conn.execute("DELETE FROM rollup_hist_model_hour")
        conn.execute(f"DROP TABLE {', '.join([*QUARTER_TOTALS, *QUARTER_HIST])}")
        for table in KEY_HOUR_ROLLUPS.values():
            conn.execute(f"DELETE FROM {table}")
        every = "SELECT * FROM traces ORDER BY id"
        before = conn.execute(every).fetchall()
        engine.open_for_writing().close()  # migrates
        assert conn.execute("SELECT version FROM prysmai_schema").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute(every).fetchall() == before
    path = _sqlite_store(tmp_path, rows)
    stores = [Store.existing(path, read_time_limit=None), Store.existing(pg_url, read_time_limit=None)]
    try:
        lite, pg = stores
        assert lite is not None and pg is not None
        for sort in ("created_at", "cost_usd"):
            a, b = (s.read_sync(queries.list_traces, TraceFilter(), sort=sort, limit=1000) for s in (lite, pg))
            assert close_enough([r[sort] for r in a[0]], [r[sort] for r in b[0]])
        for row in a[0][:40]:
            assert close_enough(
                lite.read_sync(queries.get_trace, row["id"]), pg.read_sync(queries.get_trace, row["id"])
            )
        f = TraceFilter(since=NOW - 3 * 86400 + 1234.5, until=NOW - 3600)
        split = [s.read_sync(slices.group_series, f, "model", 7200) for s in (lite, pg)]
        assert close_enough(split[0], split[1]) and split[0]["groups"]
        hist = "SELECT period, project, model, endpoint, metric, bucket, n, min_ms, max_ms FROM rollup_hist_model_hour"
        with psycopg.connect(pg_url) as conn, sqlite3.connect(path) as sconn:
            assert close_enough(sorted(conn.execute(hist).fetchall()), sorted(sconn.execute(hist).fetchall()))
    finally:
        for store in stores:
            if store is not None:
                store.close()


def test_version_11_builds_the_quarter_hour_rollups_from_the_rows(pg_url: str) -> None:
    """A database of version 10 holding traces gets its rollups by quarter hour built from the
    rows: row for row what folding those traces gives, every trace counted once."""
    import psycopg

    rows = make_rows(700, seed=18)
    engine = insert_on_postgres(pg_url, rows)
    every = {
        "rollup_quarter": "SELECT * FROM rollup_quarter ORDER BY period, project, model, endpoint, status",
        "rollup_hist_quarter": "SELECT * FROM rollup_hist_quarter ORDER BY period, project, metric, bucket",
    }
    assert set(every) == {*QUARTER_TOTALS, *QUARTER_HIST}
    with psycopg.connect(pg_url, autocommit=True) as raw:
        folded = {t: raw.execute(sql).fetchall() for t, sql in every.items()}
        assert sum(r[5] for r in folded["rollup_quarter"]) == len(rows)
        latencies = sum(1 for r in rows if r[COLUMNS.index("latency_ms")] is not None)
        assert sum(r[4] for r in folded["rollup_hist_quarter"] if r[2] == "latency") == latencies
        raw.execute(f"DROP TABLE {', '.join(every)}")
        raw.execute("UPDATE prysmai_schema SET version = 10")
        engine.open_for_writing().close()  # migrates
        assert raw.execute("SELECT version FROM prysmai_schema").fetchone() == (SCHEMA_VERSION,)
        assert {t: raw.execute(sql).fetchall() for t, sql in every.items()} == folded


# -- prysmai store copy ----------------------------------------------------------------------------
def _sqlite_store(tmp_path: Any, rows: list[tuple[Any, ...]]) -> str:
    path = str(tmp_path / "traces.db")
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, rows)
    return path


def test_store_copy_moves_every_trace_and_checks_the_count(pg_url: str, tmp_path: Any, capsys: Any) -> None:
    from prysmai._cli import main

    rows = make_rows(5000, seed=11)
    path = _sqlite_store(tmp_path, rows)
    assert main(["store", "copy", "--from", path, "--to", pg_url]) == 0
    out, err = capsys.readouterr()
    assert "count check: all 5,000 trace(s)" in out and PASSWORD not in out + err
    sqlite_store, pg_store = Store.existing(path), Store.existing(pg_url)
    assert sqlite_store is not None and pg_store is not None
    with sqlite_store, pg_store:
        assert close_enough(
            sqlite_store.read_sync(queries.stats, TraceFilter()), pg_store.read_sync(queries.stats, TraceFilter())
        )
    assert main(["store", "copy", "--from", path, "--to", pg_url, "--restart"]) == 0  # again: nothing twice
    conn = PostgresEngine(pg_url).connect()
    try:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM trace_rows").fetchone() == (5000, 5000)
        assert conn.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0] == 5000
    finally:
        conn.close()


def test_a_stopped_copy_goes_on_where_it_stopped(pg_url: str, tmp_path: Any, monkeypatch: Any) -> None:
    from prysmai._proxy.store import copy as copy_module

    rows = make_rows(4500, seed=12)
    path = _sqlite_store(tmp_path, rows)
    engine = PostgresEngine(pg_url)
    real = engine.insert_rows
    sent: list[int] = []

    def flaky(conn: Any, batch: Any) -> Any:
        if len(sent) == 2:
            raise StoreError("the connection broke")
        sent.append(len(batch))
        return real(conn, batch)

    monkeypatch.setattr(engine, "insert_rows", flaky)
    with pytest.raises(StoreError):
        copy_module.copy_store(path, engine, chunk=1000)
    assert sent == [1000, 1000]
    monkeypatch.setattr(engine, "insert_rows", real)
    seen: list[tuple[int, int]] = []
    copied = copy_module.copy_store(path, engine, chunk=1000, progress=lambda d, t: seen.append((d, t)))
    assert (copied.traces, copied.traces_present) == (4500, 4500)
    assert seen == [(3000, 4500), (4000, 4500), (4500, 4500)]  # from where it stopped, not from the start


def _score_some(path: str, rows: list[tuple[Any, ...]], n: int, seed: int) -> list[dict[str, Any]]:
    """Scores of three types on ``n`` traces of the SQLite store at ``path``, written through its
    edit runner; the scores as the store reads them back."""
    from prysmai._proxy.store import scores

    rng = random.Random(seed)
    store = Store.existing(path)
    assert store is not None
    made = []
    with store:
        for i, row in enumerate(rng.sample(rows, n)):
            value: Any = [rng.choice([0, 1, 2.5]), rng.random() < 0.5, "curt & long"][i % 3]
            name = ["helpful", "correct", "tone"][i % 3]
            new = scores.NewScore.parse({"name": name, "value": value, "comment": f"c{i} =1+1 <i>"})
            score = store.edit_sync(scores.add, row[0], new, project=None, author_key="key_x", source="api")
            assert score is not None
            made.append(score)
    return made


def _scores_read(url: str, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    from prysmai._proxy.store import scores

    store = Store.existing(url, read_time_limit=None)
    assert store is not None
    with store:
        return store.read_sync(scores.of_traces, ids)


def _averages(url: str) -> Any:
    from prysmai._proxy.store import scores

    store = Store.existing(url, read_time_limit=None)
    assert store is not None
    with store:
        return store.read_sync(scores.averages, TraceFilter(), ["model", "user", "project"], 50)


def test_store_copy_moves_the_scores_once_with_their_rollups(pg_url: str, tmp_path: Any, capsys: Any) -> None:
    from prysmai._cli import main

    rows = make_rows(800, seed=13)
    path = _sqlite_store(tmp_path, rows)
    made = _score_some(path, rows, 150, seed=3)
    assert main(["store", "copy", "--from", path, "--to", pg_url]) == 0
    out, _ = capsys.readouterr()
    assert "all 800 trace(s) and 150 score(s)" in out
    ids = sorted({s["trace_id"] for s in made})
    # Every score, as it was (its id, time, author and comment), and the averages read from the
    # score rollups are the source's.
    assert _scores_read(pg_url, ids) == _scores_read(path, ids)
    assert close_enough(_averages(pg_url), _averages(path))
    assert main(["store", "copy", "--from", path, "--to", pg_url, "--restart"]) == 0  # again: nothing twice
    assert _scores_read(pg_url, ids) == _scores_read(path, ids)
    assert close_enough(_averages(pg_url), _averages(path))
    conn = PostgresEngine(pg_url).connect()
    try:
        assert conn.execute("SELECT count(*), count(DISTINCT score_id) FROM scores").fetchone() == (150, 150)
        assert conn.execute("SELECT sum(scores) FROM rollup_score_all WHERE dim = 'model'").fetchone()[0] == 100
    finally:
        conn.close()


def test_a_stopped_copy_of_scores_goes_on_where_it_stopped(pg_url: str, tmp_path: Any, monkeypatch: Any) -> None:
    from prysmai._proxy.store import copy as copy_module
    from prysmai._proxy.store import scores

    rows = make_rows(600, seed=14)
    path = _sqlite_store(tmp_path, rows)
    _score_some(path, rows, 250, seed=4)
    engine = PostgresEngine(pg_url)
    real = scores.add
    added: list[str] = []

    def flaky(conn: Any, trace_id: str, score: Any, **kw: Any) -> Any:
        if len(added) == 120:  # in the middle of the third chunk of 50: its 20 first are rolled back
            raise StoreError("the connection broke")
        added.append(kw["score_id"])
        return real(conn, trace_id, score, **kw)

    monkeypatch.setattr(scores, "add", flaky)
    with pytest.raises(StoreError):
        copy_module.copy_store(path, engine, chunk=50)
    monkeypatch.setattr(scores, "add", real)
    conn = engine.connect()
    try:
        assert conn.execute("SELECT count(*) FROM scores").fetchone()[0] == 100
    finally:
        conn.close()
    seen: list[tuple[int, int]] = []
    copied = copy_module.copy_store(path, engine, chunk=50, score_progress=lambda d, t: seen.append((d, t)))
    assert copied == copy_module.Copied(600, 600, 250, 250) and copied.whole
    assert seen == [(150, 250), (200, 250), (250, 250)]  # from where it stopped, not from the start
    assert close_enough(_averages(pg_url), _averages(path))


def test_store_copy_stops_at_a_score_of_another_type(pg_url: str, tmp_path: Any, capsys: Any) -> None:
    from prysmai._cli import main

    rows = make_rows(50, seed=15)
    path = _sqlite_store(tmp_path, rows)
    made = _score_some(path, rows, 1, seed=5)  # one number score named "helpful"
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, rows)
        project = next(r for r in rows if r[0] == made[0]["trace_id"])[COLUMNS.index("project")]
        conn.execute("INSERT INTO score_names (project, name, kind) VALUES (%s, 'helpful', 'boolean')", [project])
    finally:
        conn.close()
    assert main(["store", "copy", "--from", path, "--to", pg_url]) == 1
    err = capsys.readouterr().err
    assert made[0]["id"] in err and "holds boolean values" in err


def test_store_copy_refuses_what_is_not_a_store(pg_url: str, tmp_path: Any, capsys: Any) -> None:
    from prysmai._cli import main

    assert main(["store", "copy", "--from", str(tmp_path / "none.db"), "--to", pg_url]) == 1
    assert "no trace store" in capsys.readouterr().err
    assert main(["store", "copy", "--from", str(tmp_path / "none.db"), "--to", str(tmp_path / "x.db")]) == 2
