"""One read surface: every JSON read answers the same document behind ``/api/v1`` (a key) and the
dashboard's ``/ui/api`` (a session cookie), with one set of limits, one envelope and one error
body; the overview is read in one snapshot. A real proxy on loopback in front of the fake upstream."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prysmai._proxy.store import Store, TraceFilter, queries
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from ..conftest import KEY, ProxyHandle

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_FIELDS = {"message", "type", "param", "code"}


@contextlib.contextmanager
def _dashboard(proxy: ProxyHandle) -> Iterator[httpx.Client]:
    """A client logged in to the proxy's dashboard."""
    base = proxy.server.url
    with httpx.Client(base_url=base) as client:
        r = client.post("/ui/login", data={"key": KEY}, headers={"Origin": base}, follow_redirects=False)
        assert r.status_code == 303 and r.cookies
        client.cookies.update(r.cookies)
        yield client


def _fill(proxy: ProxyHandle) -> list[dict[str, Any]]:
    for user, session in (("ann", "s/1%"), ("bob", "s-2"), ("ann", "s/1%")):
        headers = {**AUTH, "X-Prysm-User-Id": user, "X-Prysm-Session-Id": session}
        assert httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=headers).status_code == 200
    return proxy.traces()


def test_every_read_is_the_same_document_behind_the_api_and_the_dashboard(proxy: ProxyHandle) -> None:
    traces = _fill(proxy)
    # A closed range: an open one ends at the moment of each read, and a bucket boundary may pass
    # between the two reads of one document.
    window = {"since": str(int(time.time()) - 3600), "until": str(int(time.time()) + 3600)}
    reads = [
        ("traces", {"since": "all"}),
        ("traces", {"since": "all", "sort": "latency", "limit": "1"}),
        (f"traces/{traces[0]['id']}", {}),
        (f"traces/{traces[0]['id'][:10]}", {}),
        ("stats", window),
        ("overview", window),
        ("sessions", {}),
        ("sessions/s%2F1%25", {}),
        ("users", {"limit": "1"}),
        ("me", {}),
    ]
    with _dashboard(proxy) as dashboard:
        for route, params in reads:
            api = httpx.get(f"{proxy.base_url}/{route}", params=params, headers=AUTH)
            page = dashboard.get(f"/ui/api/{route}", params=params)
            assert api.status_code == page.status_code == 200, (route, api.text, page.text)
            a, p = api.json(), page.json()
            if route == "stats":  # the store's counters move between two reads
                a.pop("store"), p.pop("store")
            assert a == p, route
    listed = httpx.get(f"{proxy.base_url}/traces", params={"since": "all", "limit": "1"}, headers=AUTH).json()
    assert listed["object"] == "list" and len(listed["data"]) == 1 and listed["next_cursor"]
    session = httpx.get(f"{proxy.base_url}/sessions/s%2F1%25", headers=AUTH).json()
    assert session["session_id"] == "s/1%" and len(session["traces"]) == 2
    users = httpx.get(f"{proxy.base_url}/users", headers=AUTH).json()
    assert users["object"] == "list" and {u["user_id"] for u in users["data"]} == {"ann", "bob"}


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-1"])
def test_one_set_of_limits_and_one_error_body(proxy: ProxyHandle, limit: str) -> None:
    _fill(proxy)
    with _dashboard(proxy) as dashboard:
        for route in ("traces", "sessions", "users", "sessions/s-2"):
            api = httpx.get(f"{proxy.base_url}/{route}", params={"limit": limit}, headers=AUTH)
            page = dashboard.get(f"/ui/api/{route}", params={"limit": limit})
            assert api.status_code == page.status_code == 400
            assert api.json() == page.json()
            error = api.json()["error"]
            assert set(error) == ERROR_FIELDS and error["param"] == "limit" and error["code"] == "invalid_parameter"
        assert httpx.get(f"{proxy.base_url}/traces", params={"limit": "1000"}, headers=AUTH).status_code == 200
        assert dashboard.get("/ui/api/traces", params={"limit": "1000"}).status_code == 200


def test_every_error_of_ours_is_openais_error_document(proxy: ProxyHandle) -> None:
    with _dashboard(proxy) as dashboard:
        answers = [
            httpx.get(f"{proxy.base_url}/traces"),  # no key: the app
            httpx.get(f"{proxy.base_url}/traces", headers={"Authorization": "Bearer sk-prysm-nope-nope-nope-nope"}),
            httpx.post(f"{proxy.base_url}/traces", headers=AUTH),  # a read is GET only
            httpx.get(f"{proxy.base_url}/traces/ffffffffffffffffffffffffffffffff", headers=AUTH),
            httpx.post(f"{proxy.base_url}/chat/completions", content=b"{", headers=AUTH),  # the forwarder
            dashboard.get("/ui/api/traces/ffffffffffffffffffffffffffffffff"),  # the dashboard
            dashboard.get("/ui/api/nothing-here"),
            dashboard.get("/nothing-here"),
            httpx.get(f"{proxy.server.url}/ui/api/traces"),  # not logged in
        ]
        for r in answers:
            assert r.status_code >= 400 and r.headers["content-type"] == "application/json", r
            assert set(r.json()) == {"error"} and set(r.json()["error"]) == ERROR_FIELDS, r.text
    # The connection guard answers before any app: a request line and headers too large.
    with socket.create_connection(("127.0.0.1", proxy.server.port)) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            raw += part
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    assert set(httpx.Response(431, content=body).json()["error"]) == ERROR_FIELDS


def test_the_overview_is_read_in_one_snapshot(tmp_path: Any, monkeypatch: Any) -> None:
    """Traces another writer commits while the overview is being read are in none of its numbers."""
    path = str(tmp_path / "t.db")
    conn = SQLiteEngine(path).open_for_writing()

    def rows(start: int, n: int) -> list[tuple[Any, ...]]:
        base = {"method": "POST", "endpoint": "chat/completions", "model": "m", "stream": 0, "status": "success"}
        made = [{**base, "id": f"{i:032x}", "created_at": 1e6 + i, "latency_ms": 5.0} for i in range(start, start + n)]
        return [tuple(r.get(c) for c in COLUMNS) for r in made]

    insert_rows(conn, rows(0, 10))
    collect = queries._collect
    wrote = threading.Event()
    reads = []

    def second_read_after_a_write(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        if len(reads) == 2:  # the breakdowns read, then the series: another writer commits between
            insert_rows(conn, rows(10, 5))
            wrote.set()
        return collect(*args, **kwargs)

    monkeypatch.setattr(queries, "_collect", second_read_after_a_write)
    store = Store.existing(path)
    assert store is not None
    with store:
        hour = TraceFilter(since=1e6 - 1800, until=1e6 + 1800)
        page = store.read_sync(queries.overview_page, hour, 3600, ("model",), 10)
        assert wrote.is_set()
        counted = (
            page["overview"]["requests"],
            sum(b["requests"] for b in page["timeseries"]),
            sum(b["requests"] for b in page["breakdowns"]["model"]),
        )
        assert counted == (10, 10, 10)
        assert store.read_sync(queries.overview, TraceFilter())["requests"] == 15  # the next read sees them
    conn.close()


def test_filters_say_what_they_do_and_a_session_pages_with_its_totals(proxy: ProxyHandle) -> None:
    """Several meta= conditions all hold; user/model are exact, user~=/model~= a prefix in any
    case; a session of more traces than a page has its totals and pages (API and dashboard alike)."""
    sent = [
        ("Alice", '{"env": "prod", "tier": 1}', "gpt-4o-mini"),
        ("alfred", '{"env": "prod", "tier": 2}', "gpt-4o"),
        ("bob", '{"env": "dev", "tier": 2}', "gpt-4o-mini"),
    ]
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=30) as client:
        for user, meta, model in sent:
            headers = {"X-Prysm-User-Id": user, "X-Prysm-Metadata": meta}
            assert client.post("/chat/completions", json={**CHAT, "model": model}, headers=headers).status_code == 200
        for _ in range(130):
            r = client.post("/chat/completions", json=CHAT, headers={"X-Prysm-Session-Id": "long%20one/%C3%A9"})
            assert r.status_code == 200
        r = client.post(
            "/chat/completions", json=CHAT, headers={"X-Prysm-Session-Id": "long%20one/%C3%A9", "x-fake-status": "500"}
        )
        assert r.status_code == 500
        proxy.traces()

        def users(query: str) -> list[str]:
            r = client.get(f"/traces?since=all&{query}")
            assert r.status_code == 200, r.text
            return sorted(t["user_id"] for t in r.json()["data"])

        assert users("meta=env=prod") == ["Alice", "alfred"]
        assert users("meta=env=prod&meta=tier=2") == ["alfred"]  # both hold
        assert users("meta=tier=2&meta=env=dev") == ["bob"]
        assert users("user=alice") == [] and users("user=Alice") == ["Alice"]  # exact
        assert users("user~=AL") == ["Alice", "alfred"]  # a prefix, any case
        assert users("model~=GPT-4O&user~=al") == ["Alice", "alfred"]
        assert users("model=gpt-4o") == ["alfred"]
        r = client.get("/traces?meta=env")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"

        session = "/sessions/" + "long one/é".replace("/", "%2F").replace(" ", "%20").replace("é", "%C3%A9")
        first = client.get(session).json()
        assert first["object"] == "session" and first["session_id"] == "long one/é"
        totals = first["totals"]
        assert (totals["requests"], totals["errors"], totals["no_usage"]) == (131, 1, 1)
        assert totals["total_tokens"] == 130 * 13
        assert len(first["traces"]) == 100 and first["next_cursor"]  # a page, and the way to the next
        second = client.get(session, params={"cursor": first["next_cursor"]}).json()
        assert len(second["traces"]) == 31 and second["next_cursor"] is None and second["totals"] == totals
        ids = [t["id"] for t in first["traces"] + second["traces"]]
        assert len(set(ids)) == 131
        assert [t["created_at"] for t in first["traces"] + second["traces"]] == sorted(
            t["created_at"] for t in first["traces"] + second["traces"]
        )
        assert client.get(session, params={"limit": "1001"}).status_code == 400
        with _dashboard(proxy) as dashboard:
            assert dashboard.get("/ui/api" + session).json() == first


# -- hostile parameters: a 400 naming the parameter, never a 500 -----------------------------------
def _cursor(payload: Any) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _fill_with_metadata(proxy: ProxyHandle) -> None:
    _fill(proxy)
    headers = {**AUTH, "X-Prysm-Metadata": '{"k": "v", "n": 1}'}
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=headers).status_code == 200
    proxy.traces()


KINDS = [f"traces:{c}:{o}" for c in ("created_at", "latency_ms", "total_tokens") for o in ("asc", "desc")]
KINDS += ["session_ids", "user_ids"]


@pytest.mark.parametrize(
    ("route", "params", "param"),
    [
        ("traces", {"meta": "\x00=\x00"}, "meta"),
        ("stats", {"meta": "k\x00=v"}, "meta"),
        ("traces", {"cursor": _cursor(["traces:created_at:desc", [1], "a", 0])}, "cursor"),
        ("traces", {"cursor": _cursor(["traces:created_at:desc", {"a": 1}, "a", 0])}, "cursor"),
        ("traces", {"cursor": _cursor(["traces:created_at:desc", 2**70, "a", 0])}, "cursor"),
        ("traces", {"cursor": _cursor(["traces:created_at:desc", 1.5, ["a"], 0])}, "cursor"),
        ("sessions", {"cursor": _cursor(["session_ids", {"x": []}, "a", 0])}, "cursor"),
        ("users", {"cursor": _cursor(["user_ids", 1, 2**64, 0])}, "cursor"),
        ("traces", {"cursor": _cursor(["traces:created_at:desc", "[" * 5000, "a", 0])[:2] + "W" * 9000}, "cursor"),
        ("traces", {"cursor": "W1" * 3000 + "XV0"}, "cursor"),  # "[[[...]": nested too deeply to decode
        ("overview", {"since": "0001-01-01"}, "since"),
        ("traces", {"until": "9999-12-31T23:59:59+14:00"}, None),
    ],
)
def test_bad_read_parameters_are_a_400_naming_the_parameter(
    proxy: ProxyHandle, route: str, params: dict[str, str], param: str | None
) -> None:
    _fill_with_metadata(proxy)
    r = httpx.get(f"{proxy.base_url}/{route}", params=params, headers=AUTH, timeout=30)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        error = r.json()["error"]
        assert error["code"] == "invalid_parameter" and error["param"] == param, error


def test_no_read_parameter_makes_a_500(proxy: ProxyHandle) -> None:
    """Hypothesis against every read of a real proxy: any query string, any cursor shape."""
    import base64
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _fill_with_metadata(proxy)
    # What breaks naive code: NUL and other controls, quotes, backslashes, separators, non-BMP.
    tricky = st.sampled_from(["\x00", '"', "\\", "=", "&", "%", ".", "$", "[", "\u2028", "\U0001f600", "k", "n"])
    text = st.text(tricky | st.characters(exclude_categories=("Cs",)), max_size=20)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.integers(2**62, 2**80) | st.floats() | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=2),
        max_leaves=6,
    )
    lists = {"traces": "traces:created_at:desc", "sessions": "session_ids", "users": "user_ids"}

    def cursors(kind: str) -> st.SearchStrategy[str]:
        return st.one_of(
            text,
            st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
            st.lists(json_values, max_size=5).map(_cursor),
            st.tuples(st.just(kind), json_values, json_values, json_values).map(lambda t: _cursor(list(t))),
            st.integers(1, 5000).map(lambda n: base64.urlsafe_b64encode(b"[" * n).decode()),
        )

    times = st.one_of(text, st.sampled_from(["all", "1h", "0", "9" * 400, "0001-01-01", "9999-12-31T23:59+14:00"]))
    common = {
        "since": times,
        "until": times,
        "meta": st.tuples(text, text).map("=".join),
        "limit": st.one_of(text, st.integers().map(str)),
        "sort": st.one_of(text, st.sampled_from(["time", "latency", "ttft", "tokens", "cost"])),
        **{name: text for name in ("model", "endpoint", "status", "user", "session", "key", "q", "project", "order")},
        "score": st.one_of(text, st.just("thumbs")),
        **{
            name: st.one_of(text, st.floats().map(str), st.sampled_from(["1e309", "-0", "nan", "inf"]))
            for name in ("score_min", "score_max")
        },
    }

    @st.composite
    def requests(draw: Any) -> tuple[str, dict[str, str]]:
        route = draw(st.sampled_from([*lists, "stats", "overview", "budgets", "me", "traces/", "sessions/"]))
        if route.endswith("/"):
            return route + draw(text), {}
        names = draw(st.lists(st.sampled_from(sorted(common)), max_size=4, unique=True))
        params = {name: draw(common[name]) for name in names}
        if route in lists and draw(st.booleans()):
            params.pop("sort", None)
            params["cursor"] = draw(cursors(lists[route]))
        return route, params

    raw_queries = st.binary(max_size=60).map(lambda b: "".join(f"%{c:02X}" if c % 3 else chr(c % 26 + 97) for c in b))
    client = httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=30)

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
    )
    @given(request=requests(), raw=raw_queries)
    def check(request: tuple[str, dict[str, str]], raw: str) -> None:
        route, params = request
        url = "/" + quote(route, safe="/")
        for r in (client.get(url, params=params), client.get(url + "?" + raw)):
            assert r.status_code < 500, (route, params, raw, r.text)
            assert r.headers["content-type"] == "application/json"
            r.json()

    try:
        check()
    finally:
        client.close()
