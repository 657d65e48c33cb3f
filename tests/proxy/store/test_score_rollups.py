"""The score rollups (schema 9 / PostgreSQL 6) on SQLite and PostgreSQL (a real server): after
scores are added, deleted and taken by retention, each rollup holds what the scores table says,
regrouped from scratch; and the averages read from them are the mean of the scores themselves over
any range (whole days from the rollups, the edges from the scores)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import Store, TraceFilter, scores
from prysmai._proxy.store.engine import dialect_of
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from .test_postgres import NOW, make_rows

NAMES = {"helpful": "number", "correct": "boolean", "tone": "category"}


def _value(rng: random.Random, kind: str) -> Any:
    if kind == "number":
        return rng.choice([0, 1, 0.1, 0.2, 3.5, -2, 7.25])
    if kind == "boolean":
        return rng.random() < 0.6
    return rng.choice(["friendly", "curt"])


def _regrouped(conn: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The score rollups as the scores table says they should be, and as they are."""
    period = dialect_of(conn).period("trace_time", 86400)
    want: list[tuple[Any, ...]] = []
    got: list[tuple[Any, ...]] = []
    for dim, column in (("model", "trace_model"), ("user", "trace_user")):
        want += [
            (dim, int(p), project, name, value, int(n), round(float(total), 9))
            for p, project, name, value, n, total in conn.execute(
                f"SELECT {period} * 86400, score_project, name, coalesce({column}, ''), count(*), sum(num) "
                "FROM scores WHERE num IS NOT NULL GROUP BY 1, 2, 3, 4"
            )
        ]
        want += [
            (dim, None, project, name, value, int(n), round(float(total), 9))
            for project, name, value, n, total in conn.execute(
                f"SELECT score_project, name, coalesce({column}, ''), count(*), sum(num) FROM scores "
                "WHERE num IS NOT NULL GROUP BY 1, 2, 3"
            )
        ]
    got += [
        (dim, int(p), project, name, value, int(n), round(float(total), 9))
        for dim, p, project, name, value, n, total in conn.execute(
            "SELECT dim, period, project, name, dim_value, scores, total FROM rollup_score_day WHERE scores <> 0"
        )
    ]
    got += [
        (dim, None, project, name, value, int(n), round(float(total), 9))
        for dim, project, name, value, n, total in conn.execute(
            "SELECT dim, project, name, dim_value, scores, total FROM rollup_score_all WHERE scores <> 0"
        )
    ]

    def order(r: tuple[Any, ...]) -> Any:
        return (r[0], -1 if r[1] is None else r[1], *r[2:])

    return sorted(want, key=order), sorted(got, key=order)


@pytest.fixture(scope="module")
def both(postgres_server: Any, tmp_path_factory: Any) -> Any:
    """The same 400 traces in both engines; scores added to a third of them and some deleted, the
    same on each; then retention deletes the traces of the oldest days (and their scores)."""
    rows = make_rows(400, seed=23)
    path = str(tmp_path_factory.mktemp("sqlite") / "t.db")
    sqlite_engine = SQLiteEngine(path)
    with sqlite_engine.open_for_writing() as conn:
        insert_rows(conn, rows)
    pg_engine = PostgresEngine(postgres_server.database())
    conn = pg_engine.open_for_writing()
    pg_engine.insert_rows(conn, rows)
    conn.close()
    stores = (Store.existing(path, read_time_limit=None), Store.existing(pg_engine.url, read_time_limit=None))
    assert stores[0] is not None and stores[1] is not None
    rng = random.Random(8)
    made: list[list[str]] = [[], []]
    for row in rng.sample(rows, 140):
        for name, kind in NAMES.items():
            if rng.random() < 0.7:
                new = scores.NewScore.parse({"name": name, "value": _value(rng, kind)})
                for i, store in enumerate(stores):
                    doc = store.edit_sync(scores.add, row[0], new, project=None, author_key="key_x", source="api")
                    assert doc is not None
                    made[i].append(doc["id"])
    for at in sorted(rng.sample(range(len(made[0])), len(made[0]) // 4)):
        for i, store in enumerate(stores):
            assert store.edit_sync(scores.delete, made[i][at], project=None)
    cut = NOW - 7 * 86400
    for engine in (sqlite_engine, pg_engine):
        conn = engine.open_for_writing()
        try:
            assert engine.delete_expired(conn, None, cut, (), 100_000) > 0
        finally:
            conn.close()
    yield stores
    for store in stores:
        store.close()


def test_the_score_rollups_hold_what_the_scores_say_after_adds_deletes_and_retention(both: Any) -> None:
    for store in both:
        want, got = store.read_sync(_regrouped)
        assert want and got == want, store
        # The deleted scores and those retention took are gone from the rollups too.
        left = store.read_sync(lambda c: c.execute("SELECT min(trace_time), count(*) FROM scores").fetchone())
        assert left[0] >= NOW - 7 * 86400 and left[1] > 0


def _mean(conn: Any, f: TraceFilter, column: str) -> dict[tuple[Any, str], tuple[float, int]]:
    clauses = ["num IS NOT NULL"]
    params: list[Any] = []
    for name, value, op in (
        ("trace_time", f.since, ">="),
        ("trace_time", f.until, "<"),
        ("score_project", f.project, "="),
    ):
        if value is not None:
            clauses.append(f"{name} {op} ?")
            params.append(value)
    sql = f"SELECT {column}, name, sum(num), count(*) FROM scores WHERE {' AND '.join(clauses)} GROUP BY 1, 2"
    return {(k, name): (float(total) / int(n), int(n)) for k, name, total, n in conn.execute(sql, params)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    since=st.one_of(st.none(), st.floats(min_value=NOW - 9 * 86400, max_value=NOW)),
    span=st.one_of(st.none(), st.floats(min_value=0, max_value=5 * 86400)),
    project=st.sampled_from([None, "web", "batch"]),
)
def test_averages_from_the_rollups_are_the_mean_of_the_scores(
    both: Any, since: float | None, span: float | None, project: str | None
) -> None:
    until = None if since is None or span is None else since + span
    f = TraceFilter(since=since, until=until, project=project)
    for store in both:
        found = store.read_sync(scores.averages, f, ("model", "user", "project"), 1000)
        for group, column in (("model", "trace_model"), ("user", "trace_user"), ("project", "score_project")):
            want = store.read_sync(_mean, f, column)
            got = {(r[group], r["name"]): (r["average"], r["scores"]) for r in found[group]}
            assert set(got) == set(want), (group, f)
            for key, (average, n) in want.items():
                assert got[key][1] == n and got[key][0] == pytest.approx(average, rel=1e-9), (group, key, f)
