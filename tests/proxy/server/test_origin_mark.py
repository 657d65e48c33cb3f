"""The proxy marks the responses it makes itself with ``X-Prysm-Origin: proxy`` and never a
provider's answer it relays: the SDK's fail-open depends on telling the two apart."""

from __future__ import annotations

from typing import Any

import httpx

from ..conftest import KEY, FakeUpstream, ProxyHandle, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_own_responses_are_marked_relayed_ones_are_not(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=proxy.base_url) as http:
        own = [
            http.post("/chat/completions", json=CHAT),  # 401: no key
            http.post("/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-prysm-wrong-key-0000"}),
            http.get("/health"),
        ]
        relayed = [
            http.post("/chat/completions", json=CHAT, headers=auth),
            http.post("/chat/completions", json=CHAT, headers={**auth, "x-fake-status": "502"}),
            http.post("/chat/completions", json=CHAT, headers={**auth, "x-fake-status": "429"}),
        ]
    assert [r.status_code for r in own] == [401, 401, 200]
    assert all(r.headers.get("x-prysm-origin") == "proxy" for r in own)
    assert [r.status_code for r in relayed] == [200, 502, 429]
    assert all("x-prysm-origin" not in r.headers for r in relayed)


def test_an_unreachable_upstream_is_a_marked_502(start_proxy: Any) -> None:
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}/v1")
    with httpx.Client(base_url=proxy.base_url) as http:
        r = http.post("/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 502 and r.headers["x-prysm-origin"] == "proxy"
