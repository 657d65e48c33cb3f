"""Project scope in the query layer: several projects' traces in one store, written by the real
writer. A query scoped to a project must answer exactly what the same query answers over a store
holding only that project's traces, on the rollup path and the raw path alike; a trace of another
project is never found; ``month_spend`` adds up each project's cost."""

from __future__ import annotations

import dataclasses
import math
import random
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import queries
from prysmai._proxy.store.queries import TraceFilter
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, rollups
from prysmai._proxy.store.sqlite.engine import _INSERT
from prysmai._proxy.store.writer import TraceWriter

HOUR = 3600.0
BASE = 1_700_000_000.0 - 1_700_000_000.0 % 86400  # midnight UTC
PROJECTS = ("web", "batch", "tiny")


def make_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        project = rng.choices(PROJECTS, (60, 37, 3))[0]
        rows.append(
            {
                "id": f"{rng.getrandbits(128):032x}",
                "created_at": BASE + rng.uniform(0, 54 * HOUR),
                "method": "POST",
                "endpoint": rng.choice(["chat/completions", "embeddings"]),
                "model": rng.choice(["a", "b", None]),
                "stream": i % 2,
                "status": rng.choice(["success"] * 6 + ["error", "timeout"]),
                "http_status": 200,
                "latency_ms": rng.choice([None, rng.lognormvariate(5, 1.2), rng.lognormvariate(5, 1.2)]),
                "ttft_ms": rng.lognormvariate(3, 1) if i % 2 else None,
                "prompt_tokens": rng.randint(1, 500),
                "completion_tokens": rng.randint(0, 500),
                "total_tokens": rng.choice([None, rng.randint(1, 900)]),
                "cost_usd": rng.choice([None, 0.0, rng.uniform(0, 0.01)]),
                "request_body": '{"messages": ["hello"]}',
                "response_body": "hello " + "x" * rng.choice([0, 10, 9000]),  # some rows overflow a page
                "user_id": rng.choice(["u1", "u2", "u3", None]),
                "session_id": rng.choice([f"s{k}" for k in range(12)] + [None]),
                "key_id": f"key_{project}",
                "metadata": rng.choice(['{"env": "prod"}', '{"env": "dev"}', None]),
                "project": project,
                "provider": rng.choice(["openai", "ollama", None]),
            }
        )
    return rows


def write(path: str, rows: list[dict[str, Any]]) -> None:
    store = TraceWriter(SQLiteEngine(path), lambda item: item, queue_size=len(rows) + 10)
    store.open()
    for r in rows:
        assert store.submit(r)
    store.close()
    assert store.written == len(rows) and store.failed == 0


@pytest.fixture(scope="module")
def stores(tmp_path_factory: Any) -> Iterator[dict[str | None, sqlite3.Connection]]:
    """``None``: every project's traces in one store; each project: a store of its traces only."""
    rows = make_rows(1500, seed=21)
    folder = tmp_path_factory.mktemp("projects")
    out: dict[str | None, sqlite3.Connection] = {}
    for name in (None, *PROJECTS):
        path = str(folder / f"{name or 'all'}.db")
        write(path, [r for r in rows if name is None or r["project"] == name])
        conn = SQLiteEngine(path).open_existing()
        assert conn is not None
        out[name] = conn
    yield out
    for conn in out.values():
        conn.close()


@pytest.fixture(params=["small", "large"])
def sizes(request: Any, monkeypatch: Any) -> str:
    """Read every project as a small one (through its own index) or as a large one (through the
    covering indexes): the two plans must give the same answers."""
    if request.param == "large":
        monkeypatch.setattr(queries, "SMALL_PROJECT", 1)
    return str(request.param)


def scoped(f: TraceFilter, project: str) -> TraceFilter:
    return dataclasses.replace(f, project=project)


def same(got: Any, want: Any) -> None:
    """Equal, costs up to the order of floating-point additions."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (got, want)
        for k in want:
            same(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            same(g, w)
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    else:
        assert got == want


FILTERS = [
    TraceFilter(),
    TraceFilter(since=BASE + 1.5 * HOUR + 17, until=BASE + 50.2 * HOUR),  # whole days, hours and edges
    TraceFilter(since=BASE + 3 * HOUR, until=BASE + 30 * HOUR, model="a"),
    TraceFilter(since=BASE + 0.5 * HOUR, endpoint="embeddings"),
    TraceFilter(status="error"),
    TraceFilter(user_id="u2"),
    TraceFilter(session_id="s3", since=BASE + 7 * HOUR),
    TraceFilter(key_id="key_web"),
    TraceFilter(meta=(("env", "dev"),)),
    TraceFilter(text="hello", until=BASE + 40 * HOUR),
]


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize("f", FILTERS, ids=repr)
def test_aggregates_scoped_equal_the_projects_own_store(
    stores: dict[str | None, sqlite3.Connection], project: str, f: TraceFilter, sizes: str
) -> None:
    mixed, own = stores[None], stores[project]
    s = scoped(f, project)
    same(queries.overview(mixed, s), queries.overview(own, f))
    same(queries.stats(mixed, s), queries.stats(own, f))
    for by in queries.BREAKDOWNS:
        same(queries.breakdown(mixed, s, by), queries.breakdown(own, f, by))
    bounded = dataclasses.replace(f, since=f.since or BASE, until=f.until or BASE + 56 * HOUR)
    for width in (1800, 3600, 7200, 86400):
        same(queries.timeseries(mixed, scoped(bounded, project), width), queries.timeseries(own, bounded, width))


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize("f", FILTERS[:5], ids=repr)
def test_rollup_path_equals_raw_path_when_scoped(
    stores: dict[str | None, sqlite3.Connection], project: str, f: TraceFilter, sizes: str
) -> None:
    """Every body holds "hello": a text filter matching them all forces the raw path."""
    mixed = stores[None]
    hybrid, raw = scoped(f, project), scoped(dataclasses.replace(f, text="hello"), project)
    assert hybrid.rollup_ok and not raw.rollup_ok
    same(queries.overview(mixed, hybrid), queries.overview(mixed, raw))
    for by in ("project", "model", "endpoint"):
        same(queries.breakdown(mixed, hybrid, by), queries.breakdown(mixed, raw, by))
    if f.since is not None and f.until is not None:
        for width in (3600, 86400):
            same(queries.timeseries(mixed, hybrid, width), queries.timeseries(mixed, raw, width))


def _pages(conn: sqlite3.Connection, fn: Any, f: TraceFilter, **kw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = fn(conn, f, cursor=cursor, limit=7, **kw)
        out += page
        if cursor is None:
            return out


@pytest.mark.parametrize("project", PROJECTS)
def test_lists_scoped_equal_the_projects_own_store(
    stores: dict[str | None, sqlite3.Connection], project: str, sizes: str
) -> None:
    mixed, own = stores[None], stores[project]
    for f in (TraceFilter(), TraceFilter(since=BASE + 10 * HOUR, model="b"), TraceFilter(user_id="u1")):
        s = scoped(f, project)
        for sort in ("created_at", "latency_ms", "ttft_ms", "total_tokens", "cost_usd"):
            for descending in (True, False):
                got = _pages(mixed, queries.list_traces, s, sort=sort, descending=descending)
                assert got == _pages(own, queries.list_traces, f, sort=sort, descending=descending)
                assert {r["project"] for r in got} <= {project}
        same(_pages(mixed, queries.sessions, s), _pages(own, queries.sessions, f))
        same(_pages(mixed, queries.users, s), _pages(own, queries.users, f))
    everything = _pages(own, queries.list_traces, TraceFilter())
    assert everything and {r["project"] for r in everything} == {project}
    assert {"project", "provider"} <= set(everything[0]) and "request_body" not in everything[0]
    for session in ("s0", "s5", "s11"):
        assert queries.session_page(mixed, session, project=project) == queries.session_page(own, session)


def test_a_trace_of_another_project_is_not_found(stores: dict[str | None, sqlite3.Connection], sizes: str) -> None:
    mixed = stores[None]
    ids = {p: [r[0] for r in stores[p].execute("SELECT id FROM traces")] for p in PROJECTS}
    for project in PROJECTS:
        for trace_id in ids[project][:50]:
            trace = queries.get_trace(mixed, trace_id, project=project)
            assert trace is not None and trace["project"] == project and "response_body" in trace
            assert trace == queries.get_trace(mixed, trace_id)
            for other in PROJECTS:
                if other != project:
                    assert queries.get_trace(mixed, trace_id, project=other) is None
                    assert queries.get_trace(mixed, trace_id[:12], project=other) is None
    nobody = queries.session_page(mixed, "s1", project="nobody")
    assert nobody["traces"] == [] and nobody["totals"]["requests"] == 0 and nobody["next_cursor"] is None


def test_a_prefix_is_resolved_within_the_project(tmp_path: Path) -> None:
    rows = [
        {"id": "abcdef01" + "0" * 24, "project": "web"},
        {"id": "abcdef01" + "1" * 24, "project": "batch"},
        {"id": "abcdef01" + "2" * 24, "project": "batch"},
    ]
    path = str(tmp_path / "t.db")
    write(
        path,
        [{"created_at": BASE, "method": "POST", "endpoint": "x", "stream": 0, "status": "success", **r} for r in rows],
    )
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    found = queries.get_trace(conn, "abcdef01", project="web")  # unique within web, though not overall
    assert found is not None and found["id"] == rows[0]["id"]
    with pytest.raises(ValueError, match="ambiguous"):
        queries.get_trace(conn, "abcdef01", project="batch")
    with pytest.raises(ValueError, match="ambiguous"):
        queries.get_trace(conn, "abcdef01")
    assert queries.get_trace(conn, "abcdef01", project="tiny") is None
    conn.close()


def test_breakdown_by_project_and_the_filter_from_a_query(stores: dict[str | None, sqlite3.Connection]) -> None:
    mixed = stores[None]
    counts = {p: stores[p].execute("SELECT count(*) FROM traces").fetchone()[0] for p in PROJECTS}
    got = queries.breakdown(mixed, TraceFilter(), "project")
    assert [(r["key"], r["requests"]) for r in got] == sorted(counts.items(), key=lambda kv: -kv[1])
    assert queries.breakdown(mixed, TraceFilter(project="tiny"), "project")[0]["key"] == "tiny"
    assert TraceFilter.from_query({"project": "web", "model": "a"}) == TraceFilter(project="web", model="a")
    assert TraceFilter.from_query({"project": ""}).project is None
    nobody = queries.overview(mixed, TraceFilter(project="nobody"))
    assert nobody["requests"] == 0 and nobody["cost_usd"] is None
    assert queries.list_traces(mixed, TraceFilter(project="nobody")) == ([], None)


def test_month_spend_adds_up_each_projects_cost(stores: dict[str | None, sqlite3.Connection]) -> None:
    mixed = stores[None]
    for since in (BASE, BASE + 5 * HOUR, BASE + 53 * HOUR, BASE + 100 * HOUR):
        want = {
            p: stores[p].execute("SELECT coalesce(sum(cost_usd), 0.0) FROM traces WHERE created_at >= ?", (since,))
            for p in PROJECTS
        }
        expected = {p: c.fetchone()[0] for p, c in want.items()}
        counts = {
            p: stores[p].execute("SELECT count(*) FROM traces WHERE created_at >= ?", (since,)).fetchone()[0]
            for p in PROJECTS
        }
        got = queries.month_spend(mixed, since)
        assert set(got) == {p for p in PROJECTS if counts[p]}
        for p, usd in got.items():
            assert isinstance(usd, float) and usd == pytest.approx(expected[p], rel=1e-9)
    with pytest.raises(ValueError, match="whole hour"):
        queries.month_spend(mixed, BASE + 1)
    with pytest.raises(ValueError, match="whole hour"):
        queries.month_spend(mixed, math.nan)


# -- property: whatever the rows and the filter, scoped rollups agree with the raw rows ----------
ROW = st.fixed_dictionaries(
    {
        "project": st.sampled_from(["p", "q", "r s", "ünï"]),
        "created_at": st.floats(BASE, BASE + 80 * HOUR),
        "model": st.sampled_from(["a", "b", None]),
        "endpoint": st.sampled_from(["chat/completions", "embeddings"]),
        "status": st.sampled_from(["success", "error"]),
        "latency_ms": st.one_of(st.none(), st.floats(0, 1e6)),
        "ttft_ms": st.one_of(st.none(), st.floats(0, 1e4)),
        "total_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
        "cost_usd": st.one_of(st.none(), st.sampled_from([0.0, 0.5, 0.25, 1.0])),
    }
)
TIMES = st.one_of(st.none(), st.floats(BASE - HOUR, BASE + 81 * HOUR))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(ROW, max_size=60),
    project=st.sampled_from(["p", "q", "r s", "ünï", "none"]),
    since=TIMES,
    span=st.one_of(st.none(), st.floats(0, 90 * HOUR)),
    model=st.sampled_from(["a", None]),
    deleted=st.integers(0, 5),
    small=st.booleans(),
)
def test_scoped_rollups_agree_with_raw_rows(
    rows: list[dict[str, Any]],
    project: str,
    since: float | None,
    span: float | None,
    model: str | None,
    deleted: int,
    small: bool,
) -> None:
    until = None if since is None or span is None else since + span
    threshold = queries.SMALL_PROJECT
    queries.SMALL_PROJECT = threshold if small else 1  # the raw path through either plan
    with tempfile.TemporaryDirectory() as folder:
        conn = SQLiteEngine(str(Path(folder) / "t.db")).open_for_writing()
        try:
            conn.execute("BEGIN")
            full = [
                {"id": f"{i:032x}", "method": "POST", "stream": 0, "request_body": "x", **r} for i, r in enumerate(rows)
            ]
            conn.executemany(_INSERT, [tuple(r.get(c) for c in COLUMNS) for r in full])
            rollups.fold(conn)  # as the writer does after each batch
            conn.execute("COMMIT")
            conn.execute("DELETE FROM traces WHERE rowid % 7 = ?", (deleted,))  # the delete trigger unfolds
            f = TraceFilter(since=since, until=until, model=model, project=project)
            hybrid, raw = queries.overview(conn, f), queries.overview(conn, dataclasses.replace(f, text="x"))
            same(hybrid, raw)
            kept = conn.execute("SELECT project, created_at, model FROM traces").fetchall()
            chosen = [
                k
                for k in kept
                if k[0] == project
                and (since is None or k[1] >= since)
                and (until is None or k[1] < until)
                and (model is None or k[2] == model)
            ]
            assert hybrid["requests"] == len(chosen)
            by_project = queries.breakdown(conn, TraceFilter(since=since, until=until, model=model), "project")
            assert (
                sum(r["requests"] for r in by_project)
                == queries.overview(conn, TraceFilter(since=since, until=until, model=model))["requests"]
            )
            assert {r["key"]: r["requests"] for r in by_project}.get(project, 0) == len(chosen)
        finally:
            conn.close()
            queries.SMALL_PROJECT = threshold


# -- the CLI: prysmai traces / traces show / stats --project ----------------------------------------
def test_cli_reads_one_project(tmp_path: Path, capsys: Any) -> None:
    import json
    import re

    from prysmai._cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    def trace(i: int, **kw: Any) -> dict[str, Any]:
        return {
            "id": f"{i:02d}" + "a" * 30,
            "created_at": BASE + i,
            "method": "POST",
            "endpoint": "chat/completions",
            "model": "gpt-4o-mini",
            "stream": 0,
            "status": "success",
            "http_status": 200,
            "latency_ms": 10.0 + i,
            "total_tokens": 10,
            "cost_usd": 0.5,
            **kw,
        }

    path = str(tmp_path / "t.db")
    evil = "evil\u001b]0;PWNED\u0007\u202e"
    write(
        path,
        [
            trace(1, project="web", provider="openai"),
            trace(2, project="web", provider="openai", model="gpt-4o"),
            trace(3, project="batch", provider=evil, cost_usd=0.0),
            trace(4, project="batch", provider="ollama", status="error", cost_usd=None),
            trace(5),  # no project: the default one
        ],
    )
    code, out, _ = run("traces", "--db", path, "--project", "web", "--json")
    rows = json.loads(out)["data"]
    assert code == 0 and [(r["id"][:2], r["project"], r["provider"]) for r in rows] == [
        ("02", "web", "openai"),
        ("01", "web", "openai"),
    ]
    code, out, _ = run("traces", "--db", path, "--project", "web")
    assert code == 0 and "PROJECT" not in out and len(out.splitlines()) == 4  # one project: no column
    code, out, _ = run("traces", "--db", path)
    header, _, *lines = out.splitlines()
    assert header.rstrip().endswith("PROJECT")
    assert [line.split()[-1] for line in lines] == ["default", "batch", "batch", "web", "web"]
    code, out, _ = run("stats", "--db", path, "--project", "batch", "--json")
    stats = json.loads(out)
    assert (stats["requests"], stats["errors"], stats["cost_usd"], stats["unpriced_requests"]) == (2, 1, 0.0, 1)
    code, out, _ = run("stats", "--db", path, "--project", "default")
    assert code == 0 and re.search(r"Requests\s+1\b", out)
    code, out, err = run("stats", "--db", path, "--project", "nobody")
    assert code == 2 and out == "" and "unknown project 'nobody': this store has traces of batch, default, web" in err
    code, _, err = run("traces", "show", "01" + "a" * 30, "--db", path, "--project", "batch")
    assert code == 1 and "no trace" in err and "in project 'batch'" in err
    code, out, _ = run("traces", "--db", path, "--project", "batch", "show", "03aaaaaa")
    assert code == 0 and re.search(r"^Project +batch$", out, re.M)
    assert "evil\\x1b]0;PWNED\\x07\\u202e" in out and "\u001b" not in out and "\u202e" not in out
    code, out, _ = run("traces", "show", "03aaaaaa", "--db", path, "--project", "batch", "--json")
    assert json.loads(out)["provider"] == evil  # JSON stays exact
    for argv in (
        ("traces", "--project", ""),
        ("stats", "--project", ""),
        ("traces", "show", "03aaaaaa", "--project", ""),
    ):
        code, out, err = run(*argv, "--db", path)
        assert code == 2 and out == "" and "--project" in err
