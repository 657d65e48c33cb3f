"""Issue 22, the HTTP edge: what the proxy relays, refuses and lets a client hold.

Real proxies on loopback (``start_proxy``: uvicorn with the guard on a free port, or a
``prysmai proxy`` subprocess where the process matters) in front of ``conftest.FakeUpstream``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest

from ..conftest import KEY, UPSTREAM_KEY, FakeUpstream, ProxyHandle

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(proxy: ProxyHandle, body: Any = CHAT, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=json.dumps(body).encode(),
        headers={**AUTH, "content-type": "application/json", **(headers or {})},
        **{"timeout": 30, **kw},
    )


# -- what is relayed -------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 503])
def test_upstream_prysm_headers_and_cookies_are_never_relayed(proxy: ProxyHandle, status: int) -> None:
    planted = [
        ["X-Prysm-Origin", "proxy"],
        ["X-Prysm-Trace-Id", "f" * 32],
        ["X-Prysm-Latency-Ms", "0.01"],
        ["Set-Cookie", "prysm_session=planted; Path=/"],
        ["X-Other", "kept"],
    ]
    r = post(proxy, headers={"x-fake-status": str(status), "x-fake-answer-headers": json.dumps(planted)})
    assert r.status_code == status
    assert "x-prysm-origin" not in r.headers  # the SDK's fail-open reads it: only the proxy may say it
    assert "set-cookie" not in r.headers
    assert r.headers["x-other"] == "kept"
    (trace,) = proxy.traces()
    assert r.headers["x-prysm-trace-id"] == trace["id"]  # the proxy's own, once
    assert r.headers.get_list("x-prysm-trace-id") == [trace["id"]]
    assert float(r.headers["x-prysm-latency-ms"]) != 0.01


# -- dot segments -----------------------------------------------------------------------------------
def _raw_request(proxy: ProxyHandle, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Any:
    """``path`` sent exactly as given (httpx and browsers would resolve its dot segments first)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", proxy.server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/../other-deployment/chat/completions",
        "/api/v1/%2e%2e/other-deployment/chat/completions",
        "/api/v1/%2E./x/chat/completions",
        "/api/v1/.%2e/x/chat/completions",
        "/api/v1/chat/%2e%2e%2f%2e%2e/x",
        "/api/v1/chat/%252e%252e/x",
        "/api/v1/./chat/completions",
        "/api/v1/chat/%2e/completions",
        "/api/v1/chat\\..\\x",
        "/api/v1/..;x/chat/completions",
        "/api/v1/chat/completions/..",
        "/api/v1/health/../traces",
        "/api/../api/v1/chat/completions",
    ],
)
def test_a_path_with_dot_segments_is_refused_before_routing(proxy: ProxyHandle, fake: FakeUpstream, path: str) -> None:
    body = json.dumps(CHAT).encode()
    status, headers, answer = _raw_request(proxy, "POST", path, {**AUTH, "Content-Type": "application/json"}, body)
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error["code"] == "invalid_path" and "'..'" in error["message"]
    assert headers["x-prysm-origin"] == "proxy"
    assert not fake.seen  # never forwarded, with the project's credential or otherwise
    assert proxy.traces() == []  # refused before authentication, as the guard's refusals: no trace


def test_dots_inside_a_segment_are_forwarded(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    for path in ("/api/v1/files/file-a.b.jsonl/content", "/api/v1/x/.../y", "/api/v1/x/.hidden"):
        status, _, _ = _raw_request(proxy, "GET", path, AUTH)
        assert status == 404  # the fake upstream's answer: it was forwarded
    assert [s.path for s in fake.seen] == ["/v1/files/file-a.b.jsonl/content", "/v1/x/.../y", "/v1/x/.hidden"]


# -- no connection held without a key ---------------------------------------------------------------
def _connect(proxy: ProxyHandle) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.server.port), timeout=15)


def _until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the proxy sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


LOGIN_HEAD = b"POST /ui/login HTTP/1.1\r\nHost: x\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 1000\r\n\r\n"


def test_a_login_whose_body_never_comes_is_408_within_the_body_timeout(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, body_timeout=1.0, header_timeout=30.0)
    silent, trickler = _connect(proxy), _connect(proxy)
    silent.sendall(LOGIN_HEAD)
    trickler.sendall(LOGIN_HEAD)
    start = time.monotonic()
    for _ in range(5):  # a byte every 0.4 s: never a pause of 1 s, but never the whole body either
        time.sleep(0.4)
        with contextlib.suppress(OSError):
            trickler.sendall(b"k")
    for sock in (silent, trickler):
        answer, _ = _until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b'"code": "request_timeout"' in answer and b"x-prysm-origin: proxy" in answer
    assert time.monotonic() - start < 5  # the body timeout and a sweep, not the header timeout
    assert b"whole body" in answer  # the trickler: the total an unauthenticated body has


def test_an_answer_without_a_key_closes_a_connection_whose_body_is_unsent(proxy: ProxyHandle) -> None:
    sock = _connect(proxy)
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    answer, took = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 ") and took < 2  # answered and closed, not held for the body


def test_a_body_still_coming_after_an_early_401_does_not_reset_the_answer_away(proxy: ProxyHandle) -> None:
    """A client still sending its body when the proxy answers 401 (the answer needs only the
    head) reads the whole answer: the proxy discards the rest of the body for a moment instead of
    closing with it unread, which makes the kernel send a reset that destroys the 401 before the
    client reads it."""
    head = (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-prysm-wrong\r\n"
        b"Content-Type: application/json\r\nContent-Length: 8000000\r\n\r\n"
    )
    for _ in range(5):
        sock = _connect(proxy)

        def send_all(sock: socket.socket = sock) -> None:
            with contextlib.suppress(OSError):  # the proxy may stop reading: what is left is not sent
                sock.sendall(head)
                for _ in range(100):
                    sock.sendall(b"x" * 80_000)

        sender = threading.Thread(target=send_all)
        sender.start()
        data = b""
        while True:
            chunk = sock.recv(65536)  # a reset here (ConnectionResetError) fails the test
            if not chunk:
                break
            data += chunk
        sock.close()
        sender.join(10)
        answer, _, body = data.partition(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401 ") and json.loads(body)["error"]["code"] == "invalid_api_key"


def test_an_answer_before_the_body_without_a_key_says_the_connection_closes(proxy: ProxyHandle) -> None:
    """A 401 (no key) or a dashboard's cross-site 403 sent before the request's body came says
    ``connection: close``: the proxy ends that connection, and a keep-alive client that did not
    know would send its next request on it and get no answer."""
    for head in (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        b"POST /ui/login HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
    ):
        sock = _connect(proxy)
        sock.sendall(head)
        answer, _ = _until_closed(sock)
        sock.close()
        status, _, rest = answer.partition(b"\r\n")
        headers = rest.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
        assert status.split()[1] in (b"401", b"403") and b"connection: close" in headers, answer[:300]
    # A request whose body came whole keeps its keep-alive connection, key or not.
    sock = _connect(proxy)
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    sock.settimeout(5)
    first = sock.recv(65536)
    sock.close()
    assert first.startswith(b"HTTP/1.1 401 ") and b"connection: close" not in first.lower()


def test_without_a_key_a_connection_stays_idle_for_the_header_timeout_not_the_keep_alive(
    fake: FakeUpstream, start_proxy: Any
) -> None:
    proxy = start_proxy(fake.url, header_timeout=1.0)
    unknown, known = _connect(proxy), _connect(proxy)
    unknown.sendall(b"GET /api/v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    known.sendall(b"GET /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n")
    answer, took = _until_closed(unknown)
    assert answer.startswith(b"HTTP/1.1 401 ") and b"408" not in answer and took < 4
    known.settimeout(3)
    assert known.recv(65536).startswith(b"HTTP/1.1 200 ")
    with pytest.raises(socket.timeout):  # a key holder keeps its connection (75 s keep-alive)
        known.recv(1)


def test_connections_held_without_a_key_cannot_lock_clients_out(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, max_client_connections=20, body_timeout=1.0, header_timeout=30.0)
    held = [_connect(proxy) for _ in range(20)]
    for i, sock in enumerate(held):
        sock.sendall(LOGIN_HEAD if i % 2 else b"POST /api/v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n")
    time.sleep(3)  # the body timeout and a sweep or two
    assert post(proxy).status_code == 200  # a slot is free again: not 503 overloaded
    for sock in held:
        sock.close()


def test_an_authenticated_body_may_be_slow_but_not_stall(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, body_timeout=1.0)
    body = json.dumps(CHAT).encode()
    head = (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (KEY.encode(), len(body))
    )
    slow = _connect(proxy)
    slow.sendall(head)
    for i in range(0, len(body), len(body) // 6):  # 3 s in all, never a pause of 1 s: served
        time.sleep(0.5)
        slow.sendall(body[i : i + len(body) // 6])
    slow.settimeout(10)
    assert slow.recv(65536).startswith(b"HTTP/1.1 200 ")
    stalled = _connect(proxy)
    stalled.sendall(head + body[:10])
    answer, _ = _until_closed(stalled)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"stalled" in answer
    ok, refused = proxy.traces()
    assert ok["status"] == "success"
    # The stalled request's trace says what happened: the proxy answered 408, not "client disconnected".
    assert (refused["status"], refused["http_status"]) == ("error", 408) and "stalled" in refused["error"]
    assert len(fake.seen) == 1


# -- framing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    ],
)
def test_refused_framing_is_a_400_before_authentication_with_no_trace(
    proxy: ProxyHandle, fake: FakeUpstream, framing: bytes
) -> None:
    sock = _connect(proxy)
    sock.sendall(
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\n"
        + framing
        + b"\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    answer, _ = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"code": "invalid_http_request"' in answer
    assert not fake.seen
    assert proxy.traces() == []  # as every refusal before authentication: no trace, not a false one


def test_a_body_that_breaks_chunked_framing_after_authentication_has_a_truthful_trace(
    proxy: ProxyHandle, fake: FakeUpstream
) -> None:
    sock = _connect(proxy)
    head = b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % KEY.encode()
    sock.sendall(head + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
    time.sleep(0.3)  # the app has begun the request: authenticated, reading its body
    sock.sendall(b"2\r\n{}\r\nzz\r\n")  # not a chunk size
    answer, _ = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    (trace,) = proxy.traces()
    assert (trace["status"], trace["http_status"]) == ("error", 400) and "Invalid HTTP request" in trace["error"]
    assert not fake.seen


# -- failed authentication ---------------------------------------------------------------------------
def test_failed_authentication_is_throttled_per_address_on_the_api_and_the_login(
    proxy: ProxyHandle, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    base = proxy.server.url
    login = {"Origin": base}
    with caplog.at_level(logging.WARNING, logger="prysmai.proxy"), httpx.Client(timeout=10) as client:
        codes = []
        for i in range(10):  # wrong keys on the API and wrong log-ins count together
            bad = {"Authorization": f"Bearer sk-prysm-guess-{i:024d}"}
            codes.append(client.get(f"{proxy.base_url}/models", headers=bad).status_code)
            r = client.post(f"{base}/ui/login", data={"key": f"sk-prysm-guess-{i:024d}"}, headers=login)
            codes.append(r.status_code)
        assert codes == [401, 303] * 10
        # The 21st attempt, and any after it -- even with the right key, on the API or at the log-in.
        for r in (
            client.get(f"{proxy.base_url}/models", headers={"Authorization": "Bearer sk-prysm-x"}),
            client.get(f"{proxy.base_url}/models", headers=AUTH),
            client.get(f"{proxy.base_url}/health", headers=AUTH),
            client.post(f"{base}/ui/login", data={"key": KEY}, headers=login),
        ):
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"]["code"] == "too_many_failed_authentications"
            assert "set-cookie" not in r.headers
        assert client.get(f"{proxy.base_url}/health").json() == {"status": "ok"}  # no key: not an attempt
    assert [s.path for s in fake.seen] == []  # nothing forwarded on a refused attempt
    blocked = [r for r in caplog.records if "failed authentications from 127.0.0.1" in r.getMessage()]
    assert len(blocked) == 1  # one line, not one per refused attempt


def test_a_throttled_address_may_try_again_once_its_failures_age(proxy: ProxyHandle) -> None:
    proxy.app.throttle.window = 3.0  # (a minute by default)
    bad = {"Authorization": "Bearer sk-prysm-guess-0000000000000000"}
    with httpx.Client(timeout=10) as client:
        codes = [client.get(f"{proxy.base_url}/models", headers=bad).status_code for _ in range(20)]
        refused = client.get(f"{proxy.base_url}/models", headers=AUTH)
        assert codes == [401] * 20 and refused.status_code == 429
        time.sleep(int(refused.headers["retry-after"]) + 0.2)
        assert client.get(f"{proxy.base_url}/models", headers=AUTH).status_code == 200


# -- credentials echoed by a provider -----------------------------------------------------------------
OWN_KEY = "sk-client-own-upstream-key-0123456789"


def test_credentials_a_provider_echoes_are_masked_in_the_stored_trace(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    echo = {"x-fake-status": "401", "x-fake-echo-key": "1"}
    stored = post(proxy, headers=echo)  # the proxy's stored credential went upstream, and came back
    assert fake.last().headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    # The client (a project's key holder) never sees the proxy's stored credential either.
    assert stored.status_code == 401 and UPSTREAM_KEY not in stored.text and "*" * len(UPSTREAM_KEY) in stored.text
    own = post(proxy, headers={**echo, "X-Prysm-Upstream-Key": OWN_KEY})
    assert own.status_code == 401 and OWN_KEY in own.text  # the client's own key: its answer as sent
    assert "*" * len(UPSTREAM_KEY) in post(proxy, headers={**echo, "x-fake-status": "500"}).text
    traces = proxy.traces()
    assert len(traces) == 3
    for trace in traces:
        text = httpx.get(f"{proxy.base_url}/traces/{trace['id']}", headers=AUTH).text
        assert UPSTREAM_KEY not in text and OWN_KEY not in text, text
        assert "Incorrect API key provided: ****" in text  # masked byte for byte, the rest kept
    dump = "\n".join(sqlite3.connect(proxy.db_path).iterdump())
    assert UPSTREAM_KEY not in dump and OWN_KEY not in dump and "Incorrect API key" in dump


# -- forwarded headers --------------------------------------------------------------------------------
@pytest.mark.parametrize("allowed", [None, "127.0.0.1"])
def test_forwarded_headers_are_believed_only_from_the_proxies_named(
    fake: FakeUpstream, start_proxy: Any, caplog: pytest.LogCaptureFixture, allowed: str | None
) -> None:
    proxy = start_proxy(fake.url, **({"forwarded_allow_ips": allowed} if allowed else {}))
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with caplog.at_level(logging.WARNING, logger="prysmai.proxy"):
        r = httpx.get(f"{proxy.base_url}/models", headers={**forwarded, "Authorization": "Bearer sk-prysm-nope"})
        assert r.status_code == 401
    (line,) = [r.getMessage() for r in caplog.records if "invalid prysm api key" in r.getMessage()]
    base = proxy.server.url
    login = httpx.post(f"{base}/ui/login", data={"key": KEY}, headers={**forwarded, "Origin": "https://x"})
    if allowed is None:  # the default: the client is the connection's peer, the scheme what it used
        assert "from 127.0.0.1 " in line and "203.0.113.9" not in line
        assert login.status_code == 403  # an https Origin does not match a plain-http request
        plain = httpx.post(f"{base}/ui/login", data={"key": KEY}, headers={**forwarded, "Origin": base})
        assert plain.status_code == 303 and "Secure" not in plain.headers["set-cookie"]
    else:  # behind a load balancer that is named: its word is taken
        assert "from 203.0.113.9 " in line
        host = base.split("//", 1)[1]
        login = httpx.post(f"{base}/ui/login", data={"key": KEY}, headers={**forwarded, "Origin": f"https://{host}"})
        assert login.status_code == 303 and "Secure" in login.headers["set-cookie"]
