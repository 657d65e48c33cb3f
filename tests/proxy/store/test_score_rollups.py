"""The score rollups (schema 9 / PostgreSQL 6) on SQLite and PostgreSQL (a real server): after
scores are added, deleted and taken by retention, each rollup holds what the scores table says,
regrouped from scratch; and the averages read from them are the mean of the scores themselves over
any range (whole days from the rollups, the edges from the scores). The scored traces' rollups
(schema 10 / PostgreSQL 8) likewise hold what the traces with a score of each name say, and
``stats?score=NAME`` read from them answers what the rows answer."""

from __future__ import annotations

import math
import random
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import Store, TraceFilter, queries, scores
from prysmai._proxy.store.engine import dialect_of
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from .sqltrace import statements_run
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


# -- the scored traces' rollups (schema 10 / PostgreSQL 8) --------------------------------------------
def _scored_regrouped(conn: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The scored traces' rollups as the traces and their scores say they should be (every trace
    with a score of a name, once under that name), and as they are: totals, and histogram counts."""
    dialect = dialect_of(conn)
    day = f"{dialect.period('t.created_at', 86400)} * 86400"
    pairs = "(SELECT DISTINCT trace_id, name FROM scores) AS s JOIN traces t ON t.id = s.trace_id"
    want = [
        (name, int(p), project, model, int(n), int(e), int(tokens), round(float(cost), 9))
        for name, p, project, model, n, e, tokens, cost in conn.execute(
            f"SELECT s.name, {day}, t.project, coalesce(t.model, ''), count(*), "
            "sum(CASE WHEN t.status IN ('error', 'timeout') THEN 1 ELSE 0 END), coalesce(sum(t.total_tokens), 0), "
            f"coalesce(sum(t.cost_usd), 0) FROM {pairs} GROUP BY 1, 2, 3, 4"
        )
    ]
    got = [
        (name, int(p), project, model, int(n), int(e), int(tokens), round(float(cost), 9))
        for name, p, project, model, n, e, tokens, cost in conn.execute(
            "SELECT name, period, project, model, requests, errors, total_tokens, cost_usd FROM rollup_scored_day "
            "WHERE requests <> 0"
        )
    ]
    for metric, column in (("latency", "latency_ms"), ("ttft", "ttft_ms")):
        want += [
            (name, int(p), project, model, metric, int(b), int(n))
            for name, p, project, model, b, n in conn.execute(
                f"SELECT s.name, {day}, t.project, coalesce(t.model, ''), {dialect.bucket('t.' + column)}, count(*) "
                f"FROM {pairs} WHERE t.{column} IS NOT NULL GROUP BY 1, 2, 3, 4, 5"
            )
        ]
    got += [
        (name, int(p), project, model, metric, int(b), int(n))
        for name, p, project, model, metric, b, n in conn.execute(
            "SELECT name, period, project, model, metric, bucket, n FROM rollup_scored_hist_day WHERE n <> 0"
        )
    ]
    return sorted(want, key=repr), sorted(got, key=repr)


def test_the_scored_traces_rollups_hold_what_the_rows_say_after_adds_deletes_and_retention(both: Any) -> None:
    for store in both:
        want, got = store.read_sync(_scored_regrouped)
        assert want and got == want, store
        # Nothing left below zero, nor any row for a day retention took whole.
        low = store.read_sync(
            lambda c: c.execute(
                "SELECT (SELECT count(*) FROM rollup_scored_day WHERE requests < 0 OR period < ?), "
                "(SELECT count(*) FROM rollup_scored_hist_day WHERE n < 0 OR period < ?)",
                [NOW - 8 * 86400, NOW - 8 * 86400],
            ).fetchone()
        )
        assert tuple(low) == (0, 0)


#: Two estimates of one percentile from the same bucket differ by at most its width (a take-back
#: leaves a rollup's bucket bounds as they were; the rows give the remaining traces' own).
_BUCKET_WIDTH = math.exp(1 / 16)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    since=st.one_of(st.none(), st.floats(min_value=NOW - 9 * 86400, max_value=NOW)),
    span=st.one_of(st.none(), st.floats(min_value=0, max_value=5 * 86400)),
    project=st.sampled_from([None, "web", "batch"]),
    name=st.sampled_from(sorted(NAMES)),
    model=st.sampled_from([None, "gpt-4o-mini", "o3"]),
)
def test_stats_of_a_score_from_the_rollups_are_those_of_the_rows(
    both: Any, since: float | None, span: float | None, project: str | None, name: str, model: str | None
) -> None:
    """``stats?score=NAME`` reads the scored traces' rollups for whole days: the same totals as the
    rows give (the pre-rollup path, forced), and percentiles within one bucket of theirs; and the
    same on both engines."""
    until = None if since is None or span is None else since + span
    f = TraceFilter(since=since, until=until, project=project, score=name, model=model)
    found = []
    for store in both:
        got = store.read_sync(queries.stats, f)
        with mock.patch.object(queries, "_scored_rollup_ok", return_value=False):
            want = store.read_sync(queries.stats, f)
        for doc in (got, want):
            for m in doc["by_model"].values():
                m.pop("cost_usd")
            doc.pop("cost_usd")
        for part in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms"):
            for g, w in [(got, want), *((got["by_model"][k], want["by_model"][k]) for k in want["by_model"])]:
                a, b = g.pop(part), w.pop(part)
                assert (a is None) == (b is None) and (a is None or max(a / b, b / a) <= _BUCKET_WIDTH), (part, f)
        assert got == want, f
        found.append(got)
    assert found[0] == found[1]


def test_a_score_added_then_deleted_takes_its_trace_in_and_out_once(both: Any) -> None:
    """A trace's first score of a name folds it; a second adds nothing; deleting one of two keeps
    it; deleting the last takes it back out."""
    sqlite_store, _ = both
    read = sqlite_store.read_sync

    def scored(c: Any) -> int:
        return int(
            c.execute("SELECT coalesce(sum(requests), 0) FROM rollup_scored_day WHERE name = 'fresh'").fetchone()[0]
        )

    trace = read(lambda c: c.execute("SELECT id FROM traces ORDER BY created_at DESC LIMIT 1").fetchone()[0])
    new = scores.NewScore.parse({"name": "fresh", "value": 2})
    first = sqlite_store.edit_sync(scores.add, trace, new, project=None, author_key="key_x", source="api")
    assert read(scored) == 1
    second = sqlite_store.edit_sync(scores.add, trace, new, project=None, author_key="key_x", source="api")
    assert read(scored) == 1
    assert sqlite_store.edit_sync(scores.delete, first["id"], project=None)
    assert read(scored) == 1
    assert sqlite_store.edit_sync(scores.delete, second["id"], project=None)
    assert read(scored) == 0


def test_stats_of_a_score_over_whole_days_read_the_scored_rollups_not_the_traces(both: Any) -> None:
    """Over whole days, ``stats?score=NAME`` reads the scored traces' rollups and no trace row (the
    rows of every scored trace were what made it slow), and counts each scored trace once."""
    sqlite_store, _ = both
    until = NOW - NOW % 86400
    f = TraceFilter(until=until, score="helpful")

    def traced(conn: Any) -> tuple[dict[str, Any], list[str], int]:
        with statements_run(conn) as statements:
            got = queries.stats(conn, f)
        want = conn.execute(
            "SELECT count(*) FROM traces WHERE created_at < ? "
            "AND id IN (SELECT trace_id FROM scores WHERE name = 'helpful')",
            [until],
        ).fetchone()[0]
        return got, statements, int(want)

    got, statements, want = sqlite_store.read_sync(traced)
    assert any("rollup_scored_day" in s for s in statements) and any("rollup_scored_hist_day" in s for s in statements)
    assert not [s for s in statements if "traces" in s.replace("rollup_", "")], statements
    assert got["requests"] == want > 0


@pytest.mark.parametrize(
    "since, span", [(NOW - 0.6 * 86400, None), (NOW - 1.7 * 86400, 0.9 * 86400)], ids=["last-14h", "inside-yesterday"]
)
@pytest.mark.parametrize("project", [None, "web"])
def test_a_short_range_of_a_score_reads_the_scores_of_that_range_only(
    both: Any, since: float, span: float | None, project: str | None
) -> None:
    """A range of a day or two (the partial days at a longer range's edges) finds its scored traces
    among the scores of that range (the scores' time-first index), not every score of the name:
    its stats are the rows' (each scored trace once), the same on both engines."""
    until = None if span is None else since + span
    f = TraceFilter(since=since, until=until, project=project, score="helpful")

    def traced(conn: Any) -> tuple[dict[str, Any], list[str], list[Any]]:
        with statements_run(conn) as statements:
            got = queries.stats(conn, f)
        want = conn.execute(
            "SELECT count(*), sum(status IN ('error', 'timeout')), sum(total_tokens) FROM traces "
            "WHERE created_at >= ? AND created_at < ? AND (? IS NULL OR project = ?) "
            "AND id IN (SELECT trace_id FROM scores WHERE name = 'helpful')",
            [since, NOW + 86400 if until is None else until, project, project],
        ).fetchone()
        return got, statements, list(want)

    sqlite_store, pg_store = both
    got, statements, (requests, errors, tokens) = sqlite_store.read_sync(traced)
    scored = [s for s in statements if "FROM scores" in s]
    assert scored and all("trace_time >=" in s for s in scored), statements
    assert requests > 0 and (got["requests"], got["errors"], got["total_tokens"]) == (requests, errors, tokens or 0)
    other = pg_store.read_sync(queries.stats, f)
    assert {k: v for k, v in other.items() if k != "by_model"} == pytest.approx(
        {k: v for k, v in got.items() if k != "by_model"}
    )
