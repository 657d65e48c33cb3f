"""Previous / next along a list: :func:`queries.neighbours` gives the traces just before and after
one in the list of a filter and an order -- the list's own order, traces without a value (last in
both directions) included -- on SQLite and PostgreSQL alike; and through the read API."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from prysmai._proxy.store import Store, TraceFilter, queries

from ..conftest import KEY, FakeUpstream
from .test_postgres import make_rows, stores_holding


@pytest.fixture(scope="module")
def stores(postgres_server: Any, tmp_path_factory: Any) -> Any:
    opened = stores_holding(make_rows(400, seed=5), tmp_path_factory.mktemp("sqlite"), postgres_server.database())
    yield opened
    for s in opened:
        s.close()


def whole_list(store: Store, f: TraceFilter, sort: str, descending: bool) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        rows, cursor = store.read_sync(
            queries.list_traces, f, sort=sort, descending=descending, cursor=cursor, limit=97
        )
        ids += [r["id"] for r in rows]
        if cursor is None:
            return ids


@pytest.mark.parametrize("sort", ["time", "latency", "ttft", "cost"])
@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("f", [TraceFilter(), TraceFilter(model="o3"), TraceFilter(project="web", status="error")])
def test_neighbours_follow_the_list_on_both_engines(stores: Any, sort: str, descending: bool, f: TraceFilter) -> None:
    rng = random.Random(f"{sort}{descending}{f}")
    for store in stores:
        ids = whole_list(store, f, sort, descending)
        assert len(ids) > 5
        # The ends, a sample, and where traces without a value begin (latency, TTFT and cost have some).
        picks = {0, 1, len(ids) - 2, len(ids) - 1, *rng.sample(range(len(ids)), 12)}
        for i in sorted(picks):
            got = store.read_sync(queries.neighbours, f, ids[i], sort=sort, descending=descending)
            expected = (ids[i - 1] if i > 0 else None, ids[i + 1] if i + 1 < len(ids) else None)
            assert got == expected, (store, sort, descending, f, i)
        # The first and last traces without a value, when there are some.
        column = queries.SORTS[sort]
        rows = {r["id"]: r for r in store.read_sync(queries.list_traces, f, limit=1000)[0]}
        nulls = [i for i, trace_id in enumerate(ids) if rows[trace_id][column] is None]
        for i in nulls[:1] + nulls[-1:]:
            got = store.read_sync(queries.neighbours, f, ids[i], sort=sort, descending=descending)
            assert got == (ids[i - 1] if i > 0 else None, ids[i + 1] if i + 1 < len(ids) else None)
    assert store.read_sync(queries.neighbours, f, "f" * 32, sort=sort, descending=descending) is None


def test_the_read_api_answers_neighbours_of_a_projects_traces_only(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url)
    auth = {"Authorization": f"Bearer {KEY}"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert httpx.post(f"{proxy.base_url}/chat/completions", json=chat, headers=auth).status_code == 200
    ids = [t["id"] for t in proxy.traces()][::-1]  # newest first
    doc = httpx.get(f"{proxy.base_url}/neighbours", params={"trace": ids[1], "since": "all"}, headers=auth).json()
    assert doc == {"object": "neighbours", "trace": ids[1], "previous": ids[0], "next": ids[2]}
    asc = httpx.get(
        f"{proxy.base_url}/neighbours", params={"trace": ids[0], "order": "asc", "since": "all"}, headers=auth
    ).json()
    assert (asc["previous"], asc["next"]) == (ids[1], None)
    missing = httpx.get(f"{proxy.base_url}/neighbours", params={"since": "all"}, headers=auth)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "trace"
    unknown = httpx.get(f"{proxy.base_url}/neighbours", params={"trace": "0" * 32}, headers=auth)
    assert unknown.status_code == 404


@pytest.mark.parametrize("sort", sorted(queries.GROUP_SORTS))
@pytest.mark.parametrize("descending", [True, False])
def test_sessions_and_users_sort_search_and_page_alike_on_both_engines(
    stores: Any, sort: str, descending: bool
) -> None:
    from .test_postgres import close_enough

    for fn in (queries.sessions, queries.users):
        for search in (None, "a", "S/2", "%"):
            pages = []
            for store in stores:
                rows: list[dict[str, Any]] = []
                cursor = None
                while True:
                    page, cursor = store.read_sync(
                        fn, TraceFilter(), sort=sort, descending=descending, search=search, cursor=cursor, limit=2
                    )
                    rows += page
                    if cursor is None:
                        break
                pages.append(rows)
            assert close_enough(pages[0], pages[1]), (fn.__name__, sort, descending, search)
            key = "session_id" if fn is queries.sessions else "user_id"
            assert all(search is None or search.lower() in r[key].lower() for r in pages[0])
            assert len({r[key] for r in pages[0]}) == len(pages[0])
