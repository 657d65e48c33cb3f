"""Issue 22, the HTTP edge: what the proxy relays, refuses and lets a client hold.

Real proxies on loopback (``start_proxy``: uvicorn with the guard on a free port, or a
``prysmai proxy`` subprocess where the process matters) in front of ``conftest.FakeUpstream``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ..conftest import KEY, FakeUpstream, ProxyHandle

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
