"""Scores on SQLite and PostgreSQL (a real server, tests/proxy/postgres.py): the same scores,
written through each store's edit runner, read back the same -- with their traces, in the list,
as filters and as the overview's averages -- and the same rules hold on both (one type per name,
a trace of another project is not found, a deleted score is gone, retention takes a trace's
scores with it)."""

from __future__ import annotations

import random
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import Store, TraceFilter, queries, scores
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from .test_postgres import NOW, close_enough, make_rows, stores_holding

NAMES = {"helpful": "number", "correct": "boolean", "tone": "category"}


def _value(rng: random.Random, kind: str) -> Any:
    if kind == "number":
        return rng.choice([0, 1, 0.25, 3.5, -2])
    if kind == "boolean":
        return rng.random() < 0.6
    return rng.choice(["friendly", "curt", "long winded"])


@pytest.fixture(scope="module")
def both(postgres_server: Any, tmp_path_factory: Any) -> Any:
    """The same 600 traces in both engines, and the same scores on a fifth of them."""
    rows = make_rows(600, seed=11)
    stores = stores_holding(rows, tmp_path_factory.mktemp("sqlite"), postgres_server.database())
    rng = random.Random(5)
    for row in rng.sample(rows, 120):
        for name, kind in NAMES.items():
            if rng.random() < 0.6:
                new = scores.NewScore.parse({"name": name, "value": _value(rng, kind), "comment": "c <b>"})
                for store in stores:
                    made = store.edit_sync(scores.add, row[0], new, project=None, author_key="key_x", source="api")
                    assert made is not None
    yield stores
    for store in stores:
        store.close()


def _strip(doc: Any) -> Any:
    """A document without what each write makes anew (score ids, times of scoring)."""
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in ("id", "created_at") or doc.get("object") != "score"}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


score_filters = st.builds(
    TraceFilter,
    since=st.sampled_from([None, NOW - 3 * 86400]),
    project=st.sampled_from([None, "web", "batch"]),
    model=st.sampled_from([None, "o3"]),
    user_id=st.sampled_from([None, "ann"]),
    status=st.sampled_from([None, "success"]),  # (the averages then join each score to its trace)
    score=st.sampled_from(["helpful", "correct", "tone"]),
    score_min=st.sampled_from([None, 0.0, 0.5]),
    score_max=st.sampled_from([None, 1.0, 3.5]),
).filter(lambda f: f.score_min is None or f.score_max is None or f.score_min <= f.score_max)


@given(f=score_filters)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_lists_filters_and_averages_answer_the_same(both: Any, f: TraceFilter) -> None:
    sqlite_store, pg_store = both
    a, _ = sqlite_store.read_sync(scores.list_traces, f, limit=1000)
    b, _ = pg_store.read_sync(scores.list_traces, f, limit=1000)
    assert close_enough(_strip(a), _strip(b)), f
    assert all(any(s["name"] == f.score for s in r["scores"]) for r in a)
    for store in both:
        assert store.read_sync(queries.stats, f)["requests"] == len(a)
    groups = ("model", "user", "project")
    averages = [store.read_sync(scores.averages, dataclasses_replace(f), groups, 50) for store in both]
    assert close_enough(averages[0], averages[1]), f


def dataclasses_replace(f: TraceFilter) -> TraceFilter:
    import dataclasses

    return dataclasses.replace(f, score=None, score_min=None, score_max=None)


def test_averages_are_the_mean_of_the_values(both: Any) -> None:
    sqlite_store, _ = both
    raw = sqlite3.connect(sqlite_store.engine.location)
    expected = dict(
        raw.execute(
            "SELECT t.model || '|' || s.name, avg(s.num) FROM scores s JOIN traces t ON t.id = s.trace_id "
            "WHERE s.kind <> 'category' GROUP BY t.model, s.name HAVING t.model IS NOT NULL"
        ).fetchall()
    )
    raw.close()
    got = {
        f"{r['model']}|{r['name']}": r["average"]
        for r in both[0].read_sync(scores.averages, TraceFilter(), ["model"], 50)["model"]
        if r["model"]
    }
    assert expected and close_enough(got, expected)
    raw = sqlite3.connect(sqlite_store.engine.location)
    by_user = dict(
        raw.execute(
            "SELECT t.user_id || '|' || s.name, avg(s.num) FROM scores s JOIN traces t ON t.id = s.trace_id "
            "WHERE s.kind <> 'category' AND t.status = 'success' AND t.user_id IS NOT NULL GROUP BY t.user_id, s.name"
        ).fetchall()
    )
    raw.close()
    rows = both[0].read_sync(scores.averages, TraceFilter(status="success"), ["user"], 50)["user"]
    assert by_user and close_enough({f"{r['user']}|{r['name']}": r["average"] for r in rows if r["user"]}, by_user)


def test_one_type_per_name_project_scope_and_delete_hold_on_both(both: Any) -> None:
    for store in both:
        rows, _ = store.read_sync(queries.list_traces, TraceFilter(project="web"), limit=1)
        trace = rows[0]
        clash = scores.NewScore.parse({"name": "helpful", "value": "yes"})
        with pytest.raises(scores.KindConflict):
            store.edit_sync(scores.add, trace["id"], clash, project=None, author_key="k", source="api")
        new = scores.NewScore.parse({"name": "fresh", "value": 2})
        assert store.edit_sync(scores.add, trace["id"], new, project="batch", author_key="k", source="api") is None
        made = store.edit_sync(scores.add, trace["id"], new, project="web", author_key="k", source="dashboard")
        assert made is not None and made["source"] == "dashboard"
        assert not store.edit_sync(scores.delete, made["id"], project="batch")
        assert store.edit_sync(scores.delete, made["id"], project="web")
        found = store.read_sync(scores.trace_with_scores, trace["id"])
        assert made["id"] not in {s["id"] for s in found["scores"]}


def test_retention_deletes_the_scores_of_the_traces_it_deletes(postgres_server: Any, tmp_path: Any) -> None:
    rows = make_rows(40, seed=3)
    path = str(tmp_path / "r.db")
    sqlite_engine = SQLiteEngine(path)
    with sqlite_engine.open_for_writing() as conn:
        insert_rows(conn, rows)
    pg_engine = PostgresEngine(postgres_server.database())
    pconn = pg_engine.open_for_writing()
    pg_engine.insert_rows(pconn, rows)
    pconn.close()
    for engine in (sqlite_engine, pg_engine):
        store = Store.existing(path if engine is sqlite_engine else pg_engine.url)
        assert store is not None
        try:
            new = scores.NewScore.parse({"name": "helpful", "value": 1})
            for row in rows:
                store.edit_sync(scores.add, row[0], new, project=None, author_key="k", source="api")
            cut = sorted(r[1] for r in rows)[20]
            conn = engine.open_for_writing()
            try:
                deleted = engine.delete_expired(conn, None, cut, (), 1000)
            finally:
                conn.close()
            assert deleted == 20
            left = store.read_sync(lambda c: c.execute("SELECT count(*), min(trace_time) FROM scores").fetchone())
            assert left[0] == 20 and left[1] >= cut
        finally:
            store.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=score_filters)
def test_small_pages_of_a_common_score_are_the_same_traces_on_both(both: Any, f: TraceFilter) -> None:
    """A page of 3 makes most scores here "common" (queries._common_score): the page is found by
    walking the traces newest first and probing their scores. Paged to the end, the traces are
    those of one large page (every scored trace read and sorted), on both engines."""
    whole = [r["id"] for r in both[0].read_sync(queries.list_traces, f, limit=1000)[0]]
    for store in both:
        ids: list[str] = []
        cursor = None
        while True:
            rows, cursor = store.read_sync(queries.list_traces, f, limit=3, cursor=cursor)
            ids += [r["id"] for r in rows]
            if cursor is None:
                break
        assert ids == whole, f


key_filters = st.builds(
    TraceFilter,
    since=st.sampled_from([None, NOW - 3 * 86400, NOW - 5.5 * 86400]),
    until=st.sampled_from([None, NOW - 1.25 * 86400]),
    project=st.sampled_from([None, "web", "batch"]),
    model=st.sampled_from([None, "o3"]),  # a user and a model: the rollups cannot answer
    status=st.sampled_from([None, "success"]),  # another column: each score joined to its trace
)


def _expected_by_key(path: str, column: str, f: TraceFilter) -> dict[str, dict[str, tuple[int, float]]]:
    """Per key and name, the count and mean of the number and boolean scores of ``f``'s traces,
    by brute force over the SQLite file (a join of every score to its trace)."""
    where, params = ["s.kind <> 'category'", f"t.{column} IS NOT NULL"], []
    for name, op in (("since", ">="), ("until", "<")):
        if getattr(f, name) is not None:
            where.append(f"t.created_at {op} ?")
            params.append(getattr(f, name))
    for name, value in (("project", f.project), ("model", f.model), ("status", f.status)):
        if value is not None:
            where.append(f"t.{name} = ?")
            params.append(value)
    raw = sqlite3.connect(path)
    try:
        found = raw.execute(
            f"SELECT t.{column}, s.name, count(*), avg(s.num) FROM scores s JOIN traces t ON t.id = s.trace_id "
            f"WHERE {' AND '.join(where)} GROUP BY t.{column}, s.name",
            params,
        ).fetchall()
    finally:
        raw.close()
    out: dict[str, dict[str, tuple[int, float]]] = {}
    for key, name, n, mean in found:
        out.setdefault(key, {})[name] = (n, mean)
    return out


@given(f=key_filters)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sessions_and_users_carry_the_mean_of_their_scores_on_both(both: Any, f: TraceFilter) -> None:
    """Each row of the sessions and users lists has its scores (per name: how many, their mean),
    the same on both engines and equal to a brute-force join of the scores to their traces."""
    sqlite_store, _ = both
    for fn, column in ((scores.sessions, "session_id"), (scores.users, "user_id")):
        pages = [store.read_sync(fn, f, limit=1000)[0] for store in both]
        assert close_enough(pages[0], pages[1]), (f, column)
        expected = _expected_by_key(sqlite_store.engine.location, column, f)
        got = {
            r[column]: {s["name"]: (s["scores"], s["average"]) for s in r["scores"]} for r in pages[0] if r["scores"]
        }
        assert close_enough(got, expected), (f, column)
        for r in pages[0]:  # most scores first
            counts = [s["scores"] for s in r["scores"]]
            assert counts == sorted(counts, reverse=True)


@given(f=key_filters)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_short_first_page_of_keys_is_the_start_of_the_whole_list_on_both(both: Any, f: TraceFilter) -> None:
    """A first page shorter than the list (its keys found among the newest traces, their totals
    read alone) is the start of the whole list (every key grouped), with its scores, on both."""
    for fn, column in ((scores.sessions, "session_id"), (scores.users, "user_id")):
        for store in both:
            whole = store.read_sync(fn, f, limit=1000)[0]
            for limit in (1, 2):
                page, _ = store.read_sync(fn, f, limit=limit)
                # (a sum of costs added in another order may differ in its last digits)
                assert close_enough(page, whole[:limit]), (f, column, limit)
                assert [r[column] for r in page] == [r[column] for r in whole[:limit]]


def test_a_session_page_has_its_scores_and_each_trace_its_own(both: Any) -> None:
    sqlite_store, _ = both
    expected = _expected_by_key(sqlite_store.engine.location, "session_id", TraceFilter())
    assert expected
    for session_id, names in expected.items():
        pages = [store.read_sync(scores.session_page, session_id, limit=1000) for store in both]
        assert close_enough(_strip(pages[0]), _strip(pages[1]))
        totals = pages[0]["totals"]["scores"]
        assert close_enough({s["name"]: (s["scores"], s["average"]) for s in totals}, names)
        per_trace = [s for t in pages[0]["traces"] for s in t["scores"] if s["type"] != "category"]
        assert len(per_trace) == sum(n for n, _ in names.values())
