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
    timeseries = queries.timeseries
    wrote = threading.Event()

    def timeseries_after_a_write(*args: Any, **kwargs: Any) -> Any:
        insert_rows(conn, rows(10, 5))  # another writer commits between two of the page's queries
        wrote.set()
        return timeseries(*args, **kwargs)

    monkeypatch.setattr(queries, "timeseries", timeseries_after_a_write)
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
