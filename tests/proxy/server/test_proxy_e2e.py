"""The proxy end to end: real uvicorn on port 0 in front of a loopback fake upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from ..conftest import KEY, OTHER_KEY, UPSTREAM_KEY, FakeUpstream, ProxyHandle

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def client(proxy: ProxyHandle, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0, **kw)


def post(proxy: ProxyHandle, endpoint: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{proxy.base_url}/{endpoint}", json=body, headers={**AUTH, **(headers or {})}, timeout=30)


def test_chat_completion_is_forwarded_and_captured(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there!"
    trace_id = raw.headers["x-prysm-trace-id"]
    assert len(trace_id) == 32 and trace_id != completion.id
    assert float(raw.headers["x-prysm-latency-ms"]) > 0

    seen = fake.last()
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the stored credentials
    assert seen.json() == CHAT  # forwarded unchanged
    assert not [h for h in seen.headers if h.startswith("x-prysm-")]

    (trace,) = proxy.traces()
    assert trace["id"] == trace_id
    assert (trace["endpoint"], trace["method"], trace["model"], trace["stream"]) == (
        "chat/completions",
        "POST",
        "gpt-4o-mini",
        False,
    )
    assert (trace["status"], trace["http_status"]) == ("success", 200)
    assert (trace["prompt_tokens"], trace["completion_tokens"], trace["total_tokens"]) == (10, 3, 13)
    assert trace["cost_usd"] == pytest.approx((10 * 0.15 + 3 * 0.60) / 1e6)
    assert json.loads(trace["request_body"]) == CHAT
    assert json.loads(trace["response_body"])["choices"][0]["message"]["content"] == "Hello there!"
    assert trace["provider_request_id"] == "req_fake123"
    assert trace["ttft_ms"] is None and trace["latency_ms"] > 0
    assert KEY not in json.dumps(trace) and UPSTREAM_KEY not in json.dumps(trace)


def test_upstream_key_header_overrides_stored_credentials(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    post(proxy, "chat/completions", CHAT, {"X-Prysm-Upstream-Key": "sk-per-request"}).raise_for_status()
    assert fake.last().headers["authorization"] == "Bearer sk-per-request"
    (trace,) = proxy.traces()
    assert "sk-per-request" not in json.dumps(trace)


def test_any_accepted_key_works(proxy: ProxyHandle) -> None:
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 200


def test_ttft_counts_from_request_to_first_content_not_role_frame(proxy: ProxyHandle) -> None:
    headers = {"x-fake-first-delay-ms": "200", "x-fake-chunks": "3", "x-fake-gap-ms": "30"}
    stream = client(proxy, default_headers=headers).chat.completions.create(**CHAT, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "tok0 tok1 tok2 "
    (trace,) = proxy.traces()
    assert trace["stream"] is True and trace["status"] == "success"
    assert 190 <= trace["ttft_ms"] < 600, trace["ttft_ms"]
    assert trace["latency_ms"] >= trace["ttft_ms"] + 50  # two more 30 ms gaps after the first token
    body = json.loads(trace["response_body"])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (10, 3)  # usage was asked for
    assert trace["cost_usd"] is not None


def _raw_stream(url: str, body: Any, headers: dict[str, str]) -> bytes:
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        return b"".join(r.iter_raw())


def test_usage_chunk_invisible_unless_asked(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    body = {**CHAT, "stream": True}
    direct = _raw_stream(f"{fake.url}/chat/completions", body, {})  # type: ignore[attr-defined]
    via_proxy = _raw_stream(f"{proxy.base_url}/chat/completions", body, AUTH)
    assert fake.last().json()["stream_options"] == {"include_usage": True}  # the proxy asked upstream
    assert via_proxy == direct  # ... and the client got exactly what the provider would have sent it
    assert b'"usage"' not in via_proxy

    asked = {**body, "stream_options": {"include_usage": True}}
    with_usage = _raw_stream(f"{proxy.base_url}/chat/completions", asked, AUTH)
    assert with_usage == _raw_stream(f"{fake.url}/chat/completions", asked, {})  # type: ignore[attr-defined]
    assert b'"choices":[],"usage":{' in with_usage
    traces = proxy.traces()
    assert [t["total_tokens"] for t in traces] == [13, 13]

    # The SDK agrees: every chunk has a choice when usage was not asked for.
    chunks = list(client(proxy).chat.completions.create(**CHAT, stream=True))
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_stream_options_without_include_usage_is_respected(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": False}}
    out = _raw_stream(f"{proxy.base_url}/chat/completions", body, AUTH)
    assert fake.last().json()["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in out
    assert proxy.traces()[0]["total_tokens"] == 13


async def test_200_concurrent_requests_give_200_traces(proxy: ProxyHandle) -> None:
    async with httpx.AsyncClient(
        base_url=proxy.base_url, headers=AUTH, timeout=60, limits=httpx.Limits(max_connections=64)
    ) as http:

        async def one(i: int) -> str:
            if i % 2:
                async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as r:
                    assert r.status_code == 200
                    data = b"".join([c async for c in r.aiter_raw()])
                    assert data.endswith(b"data: [DONE]\n\n")
                    return r.headers["x-prysm-trace-id"]
            r = await http.post("/chat/completions", json=CHAT)
            assert r.status_code == 200
            return r.headers["x-prysm-trace-id"]

        ids = await asyncio.gather(*(one(i) for i in range(200)))
    traces = proxy.traces()
    assert len(traces) == 200
    assert {t["id"] for t in traces} == set(ids)
    assert sum(t["stream"] for t in traces) == 100
    assert all(t["status"] == "success" for t in traces)
    assert proxy.app.store.counters()["dropped"] == 0


def test_upstream_unreachable_gives_502_and_error_trace(start_proxy: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    proxy = start_proxy(f"http://127.0.0.1:{port}/v1")
    r = post(proxy, "chat/completions", CHAT)
    assert r.status_code == 502
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["code"] == "upstream_unreachable"
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(**CHAT)
    assert info.value.status_code == 502
    traces = proxy.traces()
    assert [(t["status"], t["http_status"]) for t in traces] == [("error", 502)] * 2
    assert "unreachable" in traces[0]["error"] and traces[0]["id"] == r.headers["x-prysm-trace-id"]


def test_upstream_timeout_gives_504_and_timeout_trace(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, upstream_timeout=0.3)  # type: ignore[attr-defined]
    r = post(proxy, "chat/completions", CHAT, {"x-fake-hang": "1"})
    assert r.status_code == 504
    (trace,) = proxy.traces()
    assert trace["status"] == "timeout" and trace["http_status"] == 504


def test_upstream_errors_are_forwarded_as_they_are(proxy: ProxyHandle) -> None:
    r = post(proxy, "chat/completions", CHAT, {"x-fake-status": "429"})
    assert r.status_code == 429 and r.json()["error"]["message"] == "planned 429"
    with pytest.raises(openai.InternalServerError):
        client(proxy, default_headers={"x-fake-status": "500"}).chat.completions.create(**CHAT)
    traces = proxy.traces()
    assert [(t["status"], t["http_status"], t["error"]) for t in traces] == [
        ("error", 429, "planned 429"),
        ("error", 500, "planned 500"),
    ]
    assert traces[0]["cost_usd"] is None


@pytest.mark.parametrize("auth", [None, "Bearer sk-prysm-wrong", f"Bearer {KEY}x", "Basic abc", f"{KEY}"])
def test_missing_or_wrong_key_is_401_and_not_forwarded(proxy: ProxyHandle, fake: FakeUpstream, auth: Any) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"]
    assert "sk-prysm-wrong" not in r.text and KEY not in r.text
    assert fake.seen == []


def test_wrong_key_raises_authentication_error(proxy: ProxyHandle) -> None:
    bad = openai.OpenAI(base_url=proxy.base_url, api_key="sk-prysm-not-configured", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(**CHAT)
    assert "sk-prysm-not-configured" not in str(info.value)


def test_malformed_json_is_400(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    r = httpx.post(f"{proxy.base_url}/chat/completions", content=b'{"model": ', headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{proxy.base_url}/chat/completions", content=b"[1, 2]", headers=AUTH)
    assert r.status_code == 400
    assert fake.seen == []
    traces = proxy.traces()
    assert [(t["status"], t["http_status"]) for t in traces] == [("error", 400)] * 2


def test_oversized_body_is_413(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, max_body_bytes=1000)  # type: ignore[attr-defined]
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    r = post(proxy, "chat/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked() -> Any:
        for _ in range(5):
            yield b" " * 400  # no content-length: the limit applies while reading

    r = httpx.post(f"{proxy.base_url}/chat/completions", content=chunked(), headers=AUTH)
    assert r.status_code == 413
    assert fake.seen == []
    assert [t["http_status"] for t in proxy.traces()] == [413, 413]


def test_metadata_non_ascii_and_large(proxy: ProxyHandle) -> None:
    import prysmai

    monitored = prysmai.monitor(openai.OpenAI(max_retries=0), prysm_key=KEY, base_url=proxy.base_url)
    big = {"blob": "é" * 1000, "n": 1}  # ~6 KB encoded, below the 8 KiB limit
    with prysmai.prysm_context(user_id="Zoë 用户", session_id="séance 1", metadata={"emoji": "🚀", "ünï": "çødé"}):
        monitored.chat.completions.create(**CHAT)
    with prysmai.prysm_context(user_id="u-big", metadata=big):
        monitored.chat.completions.create(**CHAT)
    first, second = proxy.traces()
    assert (first["user_id"], first["session_id"]) == ("Zoë 用户", "séance 1")
    assert first["metadata"] == {"emoji": "🚀", "ünï": "çødé"}
    assert second["metadata"] == big and second["user_id"] == "u-big"
    assert first["notes"] is None


def test_malformed_metadata_still_proceeds_with_a_note(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    r = post(
        proxy,
        "chat/completions",
        CHAT,
        {"X-Prysm-Metadata": "{not json", "X-Prysm-User-Id": "%ZZ%C3", "X-Prysm-Session-Id": "s" * 9000},
    )
    assert r.status_code == 200
    (trace,) = proxy.traces()
    assert trace["status"] == "success" and trace["metadata"] is None and trace["user_id"] is None
    notes = " | ".join(trace["notes"])
    assert "x-prysm-metadata ignored: malformed" in notes
    assert "x-prysm-user-id ignored: malformed" in notes
    assert "x-prysm-session-id ignored: longer than 8192 bytes" in notes
    r = post(proxy, "chat/completions", CHAT, {"X-Prysm-Metadata": "[1, 2]"})
    assert r.status_code == 200 and "must be a JSON object" in " ".join(proxy.traces()[1]["notes"])


def _raw_post(proxy: ProxyHandle, headers: list[bytes], body: bytes) -> bytes:
    """One request written byte by byte on a socket: header values exactly as given, no client
    library in between to encode or refuse them."""
    host, port = proxy.base_url.split("//", 1)[1].split("/", 1)[0].split(":")
    head = [
        b"POST /api/v1/chat/completions HTTP/1.1",
        b"Host: " + host.encode(),
        b"Authorization: Bearer " + KEY.encode(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *headers,
    ]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_tags_from_clients_without_the_sdk(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    """curl and Go send raw UTF-8, Node's http module latin-1 bytes: each tag arrives as sent; the
    size limit and the nesting limit still hold."""
    body = json.dumps(CHAT).encode()
    sent = [
        # curl / Go: UTF-8 bytes as typed
        [
            b'X-Prysm-Metadata: {"city":"Z\xc3\xbcrich","emoji":"\xf0\x9f\x9a\x80"}',
            b"X-Prysm-User-Id: Jos\xc3\xa9",
            b"X-Prysm-Session-Id: s\xc3\xa9ance-1",
        ],
        # Node: one latin-1 byte per character
        [b'X-Prysm-Metadata: {"city":"Z\xfcrich"}', b"X-Prysm-User-Id: Jos\xe9", b"X-Prysm-Session-Id: s\xe9ance-1"],
        # the SDK: ASCII-escaped, as before
        [
            b'X-Prysm-Metadata: {"city":"Z\\u00fcrich"}',
            b"X-Prysm-User-Id: Jos%C3%A9",
            b"X-Prysm-Session-Id: s%C3%A9ance-1",
        ],
        # over the size limit (raw UTF-8 bytes counted), and nested past what JSON decodes
        [
            b"X-Prysm-User-Id: " + "é".encode() * 4097,
            b"X-Prysm-Metadata: " + b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}",
        ],
    ]
    for headers in sent:
        answer = _raw_post(proxy, headers, body)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    curl, node, sdk, limits = proxy.traces()
    assert curl["metadata"] == {"city": "Zürich", "emoji": "🚀"}
    assert (curl["user_id"], curl["session_id"], curl["notes"]) == ("José", "séance-1", None)
    for trace in (node, sdk):
        assert trace["metadata"] == {"city": "Zürich"}
        assert (trace["user_id"], trace["session_id"], trace["notes"]) == ("José", "séance-1", None)
    assert limits["user_id"] is None and limits["metadata"] is None
    notes = " | ".join(limits["notes"])
    assert "x-prysm-user-id ignored: longer than 8192 bytes" in notes
    assert "x-prysm-metadata ignored: nested too deeply" in notes


def test_other_endpoints(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    c = client(proxy)
    assert c.embeddings.create(model="text-embedding-3-small", input="hi").data[0].embedding == [0.1, 0.2, 0.3]
    assert c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x").choices[0].text == "Hi"
    streamed = "".join(
        ch.choices[0].text for ch in c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True)
    )
    assert streamed == "tok0 tok1 tok2 "
    assert c.responses.create(model="gpt-4.1", input="hello").output_text == "Hi you"
    events = list(c.responses.create(model="gpt-4.1", input="hello", stream=True))
    assert events[-1].type == "response.completed"
    assert [m.id for m in c.models.list()] == ["gpt-4o-mini"]
    r = httpx.get(f"{proxy.base_url}/files/file-123?purpose=x", headers=AUTH)  # passed through
    assert r.status_code == 404 and fake.last().path == "/v1/files/file-123"

    t = {(tr["endpoint"], tr["stream"]): tr for tr in proxy.traces()}
    assert t[("embeddings", False)]["total_tokens"] == 5
    assert t[("embeddings", False)]["cost_usd"] == pytest.approx(5 * 0.02 / 1e6)
    assert t[("completions", True)]["ttft_ms"] is not None
    assert json.loads(t[("completions", True)]["response_body"])["choices"][0]["text"] == "tok0 tok1 tok2 "
    rs = t[("responses", True)]
    assert (rs["prompt_tokens"], rs["completion_tokens"], rs["total_tokens"]) == (7, 2, 9)
    assert rs["ttft_ms"] is not None and json.loads(rs["response_body"])["status"] == "completed"
    assert t[("responses", False)]["cost_usd"] == pytest.approx((7 * 2.0 + 2 * 8.0) / 1e6)
    assert t[("models", False)]["method"] == "GET"
    files = t[("files/file-123", False)]
    assert (files["status"], files["http_status"]) == ("error", 404)


def test_unknown_model_costs_null_not_zero(proxy: ProxyHandle) -> None:
    post(proxy, "chat/completions", {**CHAT, "model": "mystery-model-9000"}).raise_for_status()
    (trace,) = proxy.traces()
    assert trace["total_tokens"] == 13 and trace["cost_usd"] is None


def test_health_says_only_ok_without_a_key_and_details_with_one(proxy: ProxyHandle) -> None:
    post(proxy, "chat/completions", CHAT).raise_for_status()
    proxy.app.store.flush()
    r = httpx.get(f"{proxy.base_url}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}  # no upstream, no counters for strangers
    assert httpx.get(f"{proxy.base_url}/health", headers={"Authorization": "Bearer sk-prysm-wrong"}).json() == {
        "status": "ok"
    }
    r = httpx.get(f"{proxy.base_url}/health", headers=AUTH)
    doc = r.json()
    assert doc["status"] == "ok" and doc["reason"] is None and doc["upstream"] == "127.0.0.1"
    assert doc["store"]["written"] == 1 and doc["store"]["dropped"] == 0 and doc["store"]["lost"] == 0
    assert KEY not in r.text and UPSTREAM_KEY not in r.text and proxy.db_path not in r.text


def test_read_api_requires_key_and_serves_json(proxy: ProxyHandle) -> None:
    for path in ("traces", "stats", "traces/abc"):
        assert httpx.get(f"{proxy.base_url}/{path}").status_code == 401
    import prysmai

    monitored = prysmai.monitor(openai.OpenAI(max_retries=0), prysm_key=KEY, base_url=proxy.base_url)
    with prysmai.prysm_context(user_id="alice"):
        monitored.chat.completions.create(**CHAT)
    monitored.chat.completions.create(**{**CHAT, "model": "gpt-4.1"})
    post(proxy, "chat/completions", CHAT, {"x-fake-status": "500"})

    listing = httpx.get(f"{proxy.base_url}/traces", headers=AUTH).json()  # reads its own writes
    assert listing["object"] == "list" and len(listing["data"]) == 3
    assert "request_body" not in listing["data"][0]
    alice = httpx.get(f"{proxy.base_url}/traces", params={"user": "alice"}, headers=AUTH).json()["data"]
    assert [t["user_id"] for t in alice] == ["alice"]
    errors = httpx.get(f"{proxy.base_url}/traces", params={"status": "error", "since": "1h"}, headers=AUTH)
    assert [t["http_status"] for t in errors.json()["data"]] == [500]
    one = httpx.get(f"{proxy.base_url}/traces/{alice[0]['id']}", headers=AUTH).json()
    assert one["user_id"] == "alice" and one["request_body"] == CHAT  # an object (jsonshape)
    assert httpx.get(f"{proxy.base_url}/traces/{alice[0]['id'][:8]}", headers=AUTH).json()["id"] == one["id"]
    assert httpx.get(f"{proxy.base_url}/traces/nope", headers=AUTH).status_code == 404
    assert httpx.get(f"{proxy.base_url}/traces", params={"limit": "x"}, headers=AUTH).status_code == 400

    stats = httpx.get(f"{proxy.base_url}/stats", headers=AUTH).json()
    assert stats["requests"] == 3 and stats["errors"] == 1
    assert set(stats["by_model"]) == {"gpt-4o-mini", "gpt-4.1"}
    assert stats["by_model"]["gpt-4o-mini"]["requests"] == 2
    assert stats["latency_p50_ms"] > 0 and stats["store"]["dropped"] == 0


def test_store_survives_restart(fake: FakeUpstream, start_proxy: Any, tmp_path: Any) -> None:
    first = start_proxy(fake.url)  # type: ignore[attr-defined]
    r1 = post(first, "chat/completions", CHAT)
    first.stop()  # graceful: everything pending is written
    second = start_proxy(fake.url)  # type: ignore[attr-defined]
    assert second.db_path == first.db_path
    r2 = post(second, "chat/completions", {**CHAT, "stream": True})
    assert [t["id"] for t in second.traces()] == [r1.headers["x-prysm-trace-id"], r2.headers["x-prysm-trace-id"]]


def test_unknown_prefix_is_404(proxy: ProxyHandle) -> None:
    r = httpx.get(proxy.base_url.replace("/api/v1", "/v1/models"), headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_latency_header_is_numeric_and_below_wall_time(proxy: ProxyHandle) -> None:
    t0 = time.perf_counter()
    r = post(proxy, "chat/completions", CHAT)
    wall = (time.perf_counter() - t0) * 1000
    assert 0 < float(r.headers["x-prysm-latency-ms"]) <= wall


def test_the_search_index_can_be_turned_off_and_on(fake: FakeUpstream, start_proxy: Any, tmp_path: Any) -> None:
    """--search-index off drops the words index (a text search then reads the bodies, as
    substrings), and the writer process keeps it off; on builds it again over every trace."""
    from prysmai._proxy.store import TraceFilter, queries
    from prysmai._proxy.store.sqlite import SQLiteEngine, search

    db = str(tmp_path / "search.db")

    def send(proxy: ProxyHandle, text: str) -> None:
        body = {**CHAT, "messages": [{"role": "user", "content": text}]}
        assert post(proxy, "chat/completions", body).status_code == 200
        proxy.traces()  # written

    def found(text: str) -> list[str]:
        conn = SQLiteEngine(db).open_existing()
        assert conn is not None
        try:
            rows, _ = queries.list_traces(conn, TraceFilter(text=text))
            return sorted(
                json.loads(queries.get_trace(conn, r["id"])["request_body"])["messages"][0]["content"]  # type: ignore[index]
                for r in rows
            )
        finally:
            conn.close()

    def indexed() -> bool:
        conn = SQLiteEngine(db).open_existing()
        assert conn is not None
        try:
            return search.exists(conn)
        finally:
            conn.close()

    proxy = start_proxy(fake.url, db_path=db)
    send(proxy, "the quokka of Zürich")
    assert indexed() and found("zurich") == ["the quokka of Zürich"] and found("okka") == []  # words
    proxy.stop()

    proxy = start_proxy(fake.url, db_path=db, search_index=False)
    send(proxy, "another quokka")
    assert not indexed()  # the writer process did not build it again either
    assert found("okka") == ["another quokka", "the quokka of Zürich"]  # substrings of the bodies
    proxy.stop()

    proxy = start_proxy(fake.url, db_path=db, search_index=True)
    send(proxy, "a third one")
    assert indexed()
    assert found("quokka") == ["another quokka", "the quokka of Zürich"]  # rows written while off too
    assert found("third") == ["a third one"]
    proxy.stop()
