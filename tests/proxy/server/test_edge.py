"""Issue 22, the HTTP edge: what the proxy relays, refuses and lets a client hold.

Real proxies on loopback (``start_proxy``: uvicorn with the guard on a free port, or a
``prysmai proxy`` subprocess where the process matters) in front of ``conftest.FakeUpstream``.
"""

from __future__ import annotations

import json
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
