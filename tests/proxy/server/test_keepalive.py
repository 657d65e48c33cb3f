"""Client keep-alive under the connection guard (:mod:`prysmai._proxy.server.guard`): an idle connection
is closed after the server's keep-alive timeout, and a request that arrives on a kept-alive
connection is never cut off by that timeout, however long its answer takes."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

from ..conftest import KEY, FakeUpstream, ProxyHandle

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def _with_keep_alive(proxy: ProxyHandle, seconds: float) -> None:
    # uvicorn's protocol reads it from the config for each new connection.
    proxy.server._server.config.timeout_keep_alive = seconds  # type: ignore[assignment]


def _chat(conn: http.client.HTTPConnection, **headers: str) -> http.client.HTTPResponse:
    conn.request(
        "POST",
        "/api/v1/chat/completions",
        body=CHAT,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers},
    )
    response = conn.getresponse()
    response.read()
    return response


def test_a_slow_answer_on_a_kept_alive_connection_outlives_the_keep_alive_timeout(
    fake: FakeUpstream, start_proxy: Any
) -> None:
    proxy = start_proxy(fake.url)
    _with_keep_alive(proxy, 1.0)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.server.port, timeout=30)
    try:
        assert _chat(conn).status == 200
        sock = conn.sock
        # Sent at once on the same connection; answered 2.5 s later, well past the keep-alive
        # timeout counted from the first answer.
        assert _chat(conn, **{"x-fake-delay-ms": "2500"}).status == 200
        assert conn.sock is sock  # the same connection, never closed in between
    finally:
        conn.close()
    assert fake.finished == 1


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    fake: FakeUpstream, start_proxy: Any
) -> None:
    proxy = start_proxy(fake.url)
    _with_keep_alive(proxy, 1.0)
    sock = socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10)
    try:
        sock.sendall(
            (
                f"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\n\r\n{CHAT}"
            ).encode()
        )
        start = time.monotonic()
        received = b""
        while True:
            chunk = sock.recv(65536)  # the answer, then the end of the connection
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received[:80]
        assert time.monotonic() - start > 0.9  # kept alive for the timeout, then closed
    finally:
        sock.close()


def test_pipelined_requests_are_all_answered_in_order(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url)
    request = (
        f"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\n\r\n{CHAT}"
    ).encode()
    last = request.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
        sock.sendall(request + request + last)  # three requests in one write, before any answer
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200 ") == 3, received[:300]
    assert len(proxy.traces()) == 3
