"""Slicing (prysmai._proxy.store.slices and the new filters of TraceFilter): every captured field
filters, value suggestions, series split by a group -- checked against brute force over the rows
written, and answering the same on SQLite and PostgreSQL (a real server, tests/proxy/postgres.py)."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.asgi import Query
from prysmai._proxy.store import ParamError, Store, TraceFilter, queries, slices
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from .sqltrace import statements_run
from .test_postgres import NOW, close_enough, make_rows

PROVIDERS = ["openai", "azure", "local<b>", None]
HOUR = 3600


def slice_rows(n: int) -> list[tuple[Any, ...]]:
    """test_postgres's traces, with several providers and metadata of several teams."""
    rng = random.Random(11)
    out = []
    for row in make_rows(n, seed=5):
        r = dict(zip(COLUMNS, row))
        r["provider"] = rng.choice(PROVIDERS)
        if rng.random() < 0.5:
            meta = json.loads(r["metadata"] or "{}")
            meta["team"] = rng.choice(["red", "blue", 'gr"een<i>', "ochre", "pink", "teal", "gold"])
            r["metadata"] = json.dumps(meta)
        out.append(tuple(r.get(c) for c in COLUMNS))
    return out


ROWS = slice_rows(900)
DICTS = [dict(zip(COLUMNS, r)) for r in ROWS]


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: Any) -> Any:
    path = str(tmp_path_factory.mktemp("slices") / "t.db")
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, ROWS)
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    yield store
    store.close()


@pytest.fixture(scope="module")
def both(sqlite_store: Any, postgres_server: Any) -> Any:
    engine = PostgresEngine(postgres_server.database())
    conn = engine.open_for_writing()
    engine.insert_rows(conn, ROWS)
    conn.close()
    pg_store = Store.existing(engine.url, read_time_limit=None)
    assert pg_store is not None
    yield sqlite_store, pg_store
    pg_store.close()


def matches(r: dict[str, Any], f: TraceFilter) -> bool:
    """``f`` (time, project and the new filters) applied by hand."""
    if f.since is not None and r["created_at"] < f.since:
        return False
    if f.until is not None and r["created_at"] >= f.until:
        return False
    for name, column in (("project", "project"), ("provider", "provider"), ("http_status", "http_status")):
        if getattr(f, name) is not None and r[column] != getattr(f, name):
            return False
    if f.stream is not None and bool(r["stream"]) != f.stream:
        return False
    for name, column in queries.RANGES.items():
        low, high = getattr(f, name + "_min"), getattr(f, name + "_max")
        if (low is not None or high is not None) and r[column] is None:
            return False
        if low is not None and r[column] < low:
            return False
        if high is not None and r[column] > high:
            return False
    return True


ranges = st.tuples(st.sampled_from([None, NOW - 86400, NOW - 3 * 86400 + 1234.5]), st.sampled_from([None, NOW - 3600]))
new_filters = st.builds(
    lambda r, **kw: TraceFilter(since=r[0], until=r[1], **kw),
    ranges,
    project=st.sampled_from([None, "web"]),
    provider=st.sampled_from([None, "azure", "local<b>"]),
    stream=st.sampled_from([None, True, False]),
    http_status=st.sampled_from([None, 200, 500]),
    cost_min=st.sampled_from([None, 0.0, 0.004]),
    cost_max=st.sampled_from([None, 0.006]),
    latency_min=st.sampled_from([None, 20.0]),
    latency_max=st.sampled_from([None, 40.5]),
    ttft_min=st.sampled_from([None, 5.0]),
    tokens_min=st.sampled_from([None, 100]),
    tokens_max=st.sampled_from([None, 600]),
)


@given(f=new_filters)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_new_filter_keeps_exactly_the_matching_traces(sqlite_store: Any, f: TraceFilter) -> None:
    expected = sorted((r["created_at"], r["id"]) for r in DICTS if matches(r, f))
    # Both plans of a range in time order: through the range's index, and walking the time index.
    for seek in (queries.RANGE_SEEK, 0):
        with mock.patch.object(queries, "RANGE_SEEK", seek):
            rows, _ = sqlite_store.read_sync(queries.list_traces, f, limit=1000)
            page, cursor = sqlite_store.read_sync(queries.list_traces, f, limit=7)
            while cursor is not None:
                more, cursor = sqlite_store.read_sync(queries.list_traces, f, limit=7, cursor=cursor)
                page += more
        assert sorted((r["created_at"], r["id"]) for r in rows) == expected
        assert [(r["created_at"], r["id"]) for r in page] == expected[::-1]  # newest first, by pages
    stats = sqlite_store.read_sync(queries.stats, f)
    assert stats["requests"] == len(expected)
    assert sqlite_store.read_sync(queries.count_traces, f) == (len(expected), True)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"cost_min": "cheap"}, "cost_min"),
        ({"latency_max": "-1"}, "latency_max"),
        ({"tokens_min": "nan"}, "tokens_min"),
        ({"ttft_min": "5", "ttft_max": "2"}, "ttft_min"),
        ({"stream": "maybe"}, "stream"),
        ({"http_status": "20x"}, "http_status"),
        ({"http_status": "700"}, "http_status"),
    ],
)
def test_a_bad_filter_value_names_its_parameter(query: dict[str, str], param: str) -> None:
    with pytest.raises(ParamError) as caught:
        TraceFilter.from_query(Query(query.items()))
    assert caught.value.param == param


def test_the_new_filters_are_read_from_a_query() -> None:
    f = TraceFilter.from_query(
        Query(
            [
                ("provider", "azure"),
                ("stream", "false"),
                ("http_status", "429"),
                ("cost_max", "0.5"),
                ("tokens_min", "3"),
            ]
        )
    )
    assert (f.provider, f.stream, f.http_status, f.cost_max, f.tokens_min) == ("azure", False, 429, 0.5, 3.0)
    assert not f.rollup_ok


def _hour_floor(t: float | None) -> float | None:
    return None if t is None else math.floor(t / HOUR) * HOUR


@pytest.mark.parametrize("since", [None, NOW - 2 * 86400], ids=["all", "2d"])
@pytest.mark.parametrize("project", [None, "web"])
def test_suggestions_are_the_values_seen_in_the_range(sqlite_store: Any, since: float | None, project: Any) -> None:
    f = TraceFilter(since=since, project=project)

    def seen(column: str, floor: float | None) -> list[tuple[str, int]]:
        kept = [r for r in DICTS if (floor is None or r["created_at"] >= floor) and project in (None, r["project"])]
        counts = Counter(r[column] for r in kept if r[column])
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def got(field: str, **kw: Any) -> list[tuple[str, int]]:
        doc = sqlite_store.read_sync(slices.suggestions, f, field, limit=100, **kw)
        assert doc["complete"]
        return [(v["value"], v["count"]) for v in doc["values"]]

    # The rollups: the hours (days for users) the range touches.
    assert got("model") == seen("model", _hour_floor(since))
    assert got("user") == seen("user_id", None if since is None else math.floor(since / 86400) * 86400)
    # The latest traces of the range itself.
    assert got("provider") == seen("provider", since)
    assert got("model", prefix="GPT-4") == [kv for kv in seen("model", _hour_floor(since)) if kv[0].startswith("gpt-4")]
    kept = [r for r in DICTS if (since is None or r["created_at"] >= since) and project in (None, r["project"])]
    metas = [json.loads(r["metadata"]) for r in kept if r["metadata"]]
    keys = Counter(k for m in metas for k in m)
    assert got("meta_key") == sorted(keys.items(), key=lambda kv: (-kv[1], kv[0]))
    teams = Counter(m["team"] for m in metas if "team" in m)
    assert got("meta_value", meta_key="team") == sorted(teams.items(), key=lambda kv: (-kv[1], kv[0]))
    # A boolean member reads as a filter compares it: 1 or 0.
    assert {v for v, _ in got("meta_value", meta_key="beta")} == {"0", "1"}


def test_a_suggestion_of_a_field_no_rollup_keeps_reads_a_bounded_number_of_traces(
    sqlite_store: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(slices, "SCAN_BOUND", 100)
    doc = sqlite_store.read_sync(slices.suggestions, TraceFilter(), "provider")
    assert not doc["complete"]
    newest = sorted(DICTS, key=lambda r: -r["created_at"])[:100]
    assert sum(v["count"] for v in doc["values"]) == sum(1 for r in newest if r["provider"])


def test_bad_suggestion_requests_name_their_parameter(sqlite_store: Any) -> None:
    for args, kw, param in (
        (("colour",), {}, "field"),
        (("meta_value",), {}, "meta_key"),
        (("model",), {"limit": 0}, "limit"),
    ):
        with pytest.raises(ParamError) as caught:
            sqlite_store.read_sync(slices.suggestions, TraceFilter(), *args, **kw)
        assert caught.value.param == param


def _key_of(r: dict[str, Any], by: str) -> Any:
    if by.startswith("meta:"):
        member = json.loads(r["metadata"] or "{}").get(by[5:])
        return slices.meta_text(member)
    return r[{"user": "user_id"}.get(by, by)]


@pytest.mark.parametrize("by", ["model", "project", "user", "meta:team", "meta:beta"])
@pytest.mark.parametrize("project", [None, "batch"])
@pytest.mark.parametrize("latency", [True, False])
def test_a_split_series_is_its_groups_counted_by_hand(sqlite_store: Any, by: str, project: Any, latency: bool) -> None:
    since = NOW - 3 * 86400 + 1234.5
    f = TraceFilter(since=since, until=NOW, project=project)
    width = queries.pick_bucket(since, NOW)
    doc = sqlite_store.read_sync(slices.group_series, f, by, width, 3, latency=latency)
    kept = [r for r in DICTS if matches(r, f)]
    per_key = Counter(_key_of(r, by) for r in kept)
    groups = [g for g in doc["groups"] if not g["other"]]
    # Users: traces without one are in "other".
    ranked = sorted(
        ((k, n) for k, n in per_key.items() if by != "user" or k is not None),
        key=lambda kv: (-kv[1], kv[0] is None, str(kv[0])),
    )[:3]
    assert [(g["key"], g["requests"]) for g in groups] == ranked
    for g in groups:
        counts = Counter(math.floor(r["created_at"] / width) * width for r in kept if _key_of(r, by) == g["key"])
        assert {p["t"]: p["requests"] for p in g["timeseries"] if p["requests"]} == dict(counts)
        errors = Counter(
            math.floor(r["created_at"] / width) * width
            for r in kept
            if _key_of(r, by) == g["key"] and r["status"] in ("error", "timeout")
        )
        assert {p["t"]: p["errors"] for p in g["timeseries"] if p["errors"]} == dict(errors)
        # Latency p50 per bucket: the nearest-rank value within the histogram's 3.2 %.
        for p in g["timeseries"]:
            values = sorted(
                r["latency_ms"]
                for r in kept
                if _key_of(r, by) == g["key"]
                and math.floor(r["created_at"] / width) * width == p["t"]
                and r["latency_ms"] is not None
            )
            if not latency or not values:
                assert p["latency_p50"] is None
            else:
                exact = values[max(1, math.ceil(len(values) * 0.5 - 1e-9)) - 1]
                assert abs(p["latency_p50"] / exact - 1) <= math.exp(1 / 32) - 1 + 1e-9, (p, exact)
    # "other" is everything else, bucket by bucket.
    total = Counter(math.floor(r["created_at"] / width) * width for r in kept)
    others = [g for g in doc["groups"] if g["other"]]
    rest = total - sum((Counter({p["t"]: p["requests"] for p in g["timeseries"]}) for g in groups), Counter())
    if rest:
        assert len(others) == 1
        assert {p["t"]: p["requests"] for p in others[0]["timeseries"] if p["requests"]} == dict(rest)
    else:
        assert others == []
    assert doc["complete"]


@pytest.mark.parametrize("since", [None, NOW - 3 * 86400 + 1234.5], ids=["all", "3d-partial-day"])
@pytest.mark.parametrize("project", [None, "batch"])
def test_the_top_users_of_a_split_add_up_their_requests_alone(sqlite_store: Any, since: Any, project: Any) -> None:
    """A split by user finds its top users from their requests alone (over all time the all-time
    rollup's largest rows; no first or last time, no other total of every user): the users with
    most traces, counted by hand."""
    f = TraceFilter(since=since, project=project)
    width = queries.pick_bucket(since, None, NOW)

    def traced(conn: Any) -> tuple[dict[str, Any], list[str]]:
        with statements_run(conn) as statements:
            return slices.group_series(conn, f, "user", width, 2, latency=False), statements

    doc, statements = sqlite_store.read_sync(traced)
    ranking = [s for s in statements if "ORDER BY requests DESC" in s]
    assert len(ranking) == 1, statements
    if since is None:
        assert "FROM rollup_user_all" in ranking[0] and "traces" not in ranking[0], ranking
    else:
        assert ranking[0].startswith("SELECT k FROM (SELECT k, sum(requests) AS requests FROM ("), ranking
    per_user = Counter(r["user_id"] for r in DICTS if matches(r, f) and r["user_id"] is not None)
    want = sorted(per_user.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    assert [(g["key"], g["requests"]) for g in doc["groups"] if not g["other"]] == want


def _series_read(by: str, f: TraceFilter) -> Any:
    width = queries.pick_bucket(f.since, f.until, NOW)
    if by == "time":
        return lambda conn: queries.timeseries(conn, f, width)
    return lambda conn: slices.group_series(conn, f, by, width, 3)


SERIES_RANGES = {
    "all": TraceFilter(),  # days: the daily histogram rollups
    "7d": TraceFilter(since=NOW - 7 * 86400 + 99.5, until=NOW),  # 2-hour buckets: the hourly ones
    "3d-partial-hour": TraceFilter(since=NOW - 3 * 86400 + 1234.5, until=NOW),  # hours, and rows at the edge
    "3d-web": TraceFilter(since=NOW - 3 * 86400 + 1234.5, until=NOW, project="web"),
}


@pytest.mark.parametrize("by", ["model", "project", "user", "time"])
@pytest.mark.parametrize("span", list(SERIES_RANGES))
def test_a_series_reads_the_latency_histograms_alone(sqlite_store: Any, monkeypatch: Any, by: str, span: str) -> None:
    """A time series (split or not) shows latency percentiles and no TTFT: it reads the histogram
    rollups' latency rows and the rows' latency buckets, never TTFT's, and answers exactly what
    a read of every metric's histograms gives."""
    f = SERIES_RANGES[span]
    read = _series_read(by, f)

    def traced(conn: Any) -> tuple[Any, list[str]]:
        with statements_run(conn) as statements:
            return read(conn), statements

    doc, statements = sqlite_store.read_sync(traced)
    hists = [s for s in statements if "FROM rollup_hist_" in s]
    raw_latency = [s for s in statements if "min(latency_ms)" in s]
    assert hists and all("metric IN ('latency')" in s for s in hists), hists
    assert raw_latency or span == "all", statements  # the edges' rows were read too
    assert not [s for s in statements if "ttft" in s], statements
    # The same read over every metric's histograms answers the same.
    monkeypatch.setattr(queries, "SERIES_METRICS", queries.HIST_METRICS)
    monkeypatch.setattr(slices, "SERIES_METRICS", queries.HIST_METRICS)
    assert sqlite_store.read_sync(read) == doc


def test_the_overview_still_reads_the_ttft_histograms(sqlite_store: Any) -> None:
    """The overview shows TTFT percentiles: its reads keep the TTFT histograms."""
    f = TraceFilter(since=NOW - 3 * 86400 + 1234.5, until=NOW)

    def traced(conn: Any) -> tuple[Any, list[str]]:
        with statements_run(conn) as statements:
            return queries.overview(conn, f), statements

    doc, statements = sqlite_store.read_sync(traced)
    hists = [s for s in statements if "FROM rollup_hist_" in s]
    assert hists and not [s for s in hists if "metric IN" in s], hists
    assert doc["ttft_ms"]["p50"] is not None


def test_a_split_by_a_metadata_key_says_what_it_covered(sqlite_store: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(slices, "META_SCAN", 50)
    f = TraceFilter(since=NOW - 86400 * 9)
    doc = sqlite_store.read_sync(slices.group_series, f, "meta:team", queries.pick_bucket(f.since, None), 3)
    newest = sorted(DICTS, key=lambda r: -r["created_at"])[:50]
    assert not doc["complete"]
    assert doc["scanned_since"] == newest[-1]["created_at"]
    assert sum(g["requests"] for g in doc["groups"]) == 50


def test_a_bad_split_names_its_parameter(sqlite_store: Any) -> None:
    for by, top, param in (("colour", 3, "by"), ("meta:", 3, "by"), ('meta:a"b', 3, "by"), ("model", 0, "top")):
        with pytest.raises(ParamError) as caught:
            sqlite_store.read_sync(slices.group_series, TraceFilter(since=NOW - 86400), by, 3600, top)
        assert caught.value.param == param


# -- SQLite and PostgreSQL answer the same --------------------------------------------------------------
@given(f=new_filters)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_new_filters_answer_the_same_on_both_engines(both: Any, f: TraceFilter) -> None:
    sqlite_store, pg_store = both
    a, _ = sqlite_store.read_sync(queries.list_traces, f, limit=1000)
    b, _ = pg_store.read_sync(queries.list_traces, f, limit=1000)
    assert close_enough(a, b), f
    assert close_enough(sqlite_store.read_sync(queries.stats, f), pg_store.read_sync(queries.stats, f)), f


@pytest.mark.parametrize("field", ["model", "provider", "user", "endpoint", "project", "meta_key", "meta_value"])
@pytest.mark.parametrize("project", [None, "web"])
def test_suggestions_answer_the_same_on_both_engines(both: Any, field: str, project: Any) -> None:
    sqlite_store, pg_store = both
    f = TraceFilter(since=NOW - 4 * 86400, project=project)
    kw = {"meta_key": "team"} if field == "meta_value" else {}
    a = sqlite_store.read_sync(slices.suggestions, f, field, **kw)
    b = pg_store.read_sync(slices.suggestions, f, field, **kw)
    assert a == b and a["values"]


@pytest.mark.parametrize("by", ["model", "project", "user", "meta:team"])
def test_split_series_answer_the_same_on_both_engines(both: Any, by: str) -> None:
    sqlite_store, pg_store = both
    f = TraceFilter(since=NOW - 5 * 86400 + 99.5, until=NOW)
    width = queries.pick_bucket(f.since, f.until)
    for latency in (True, False):
        a = sqlite_store.read_sync(slices.group_series, f, by, width, 4, latency=latency)
        b = pg_store.read_sync(slices.group_series, f, by, width, 4, latency=latency)
        assert close_enough(a, b) and len(a["groups"]) >= 2
