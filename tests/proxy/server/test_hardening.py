"""Issue 7, proxy side: hostile input and faults never cost a trace nor give a bare 500.

Real uvicorn on port 0 in front of the loopback fake upstream (``conftest.FakeUpstream``), which
misbehaves on demand through ``x-fake-*`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from prysmai._proxy.config.keys import key_id
from prysmai._proxy.store import writer as store_module

from ..conftest import KEY, OTHER_KEY, ClosingUpstream, FakeUpstream, ProxyHandle, RawUpstream

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(proxy: ProxyHandle, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=content,
        headers={**AUTH, "content-type": "application/json", **(headers or {})},
        **{"timeout": 30, **kw},
    )


def health(proxy: ProxyHandle, key: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{proxy.base_url}/health", headers=AUTH if key else {}).json()
    return doc


# -- the writer never dies, never drops silently ---------------------------------------------------
def test_unpaired_surrogate_in_metadata_is_stored_escaped_and_later_traces_still_written(
    proxy: ProxyHandle,
) -> None:
    r = post(proxy, CHAT, {"X-Prysm-Metadata": '{"k":"\\ud800","ok":"caf\\u00e9"}'})
    assert r.status_code == 200
    post(proxy, CHAT).raise_for_status()
    first, second = proxy.traces()
    # Decodes back to exactly what was sent, lone surrogate included.
    assert first["metadata"] == {"k": "\ud800", "ok": "café"}
    assert any("metadata" in n and "escape" in n for n in first["notes"]), first["notes"]
    assert second["status"] == "success"
    counters = health(proxy)["store"]
    assert counters["written"] == 2 and counters["repaired"] == 1
    assert counters["write_errors"] == 0 and counters["lost"] == 0
    # The read API serves it (the escape again, valid JSON) instead of failing.
    got = httpx.get(f"{proxy.base_url}/traces/{first['id']}", headers=AUTH)
    assert got.status_code == 200 and got.json()["metadata"] == {"k": "\ud800", "ok": "café"}


def test_unpaired_surrogates_in_model_and_stream_content_are_stored_escaped(proxy: ProxyHandle) -> None:
    body = b'{"model":"m\\ud83d","messages":[],"stream":true}'
    r = post(proxy, body)
    assert r.status_code == 200
    (trace,) = proxy.traces()
    assert trace["model"] == "m\\ud83d"  # not valid Unicode: shown escaped
    assert json.loads(trace["request_body"])["model"] == "m\ud83d"  # the body as received, exactly
    assert any(n.startswith("model:") for n in trace["notes"])


def test_upstream_json_nested_5000_deep_is_stored_as_text(proxy: ProxyHandle) -> None:
    r = post(proxy, CHAT, {"x-fake-deep": "5000"})
    assert r.status_code == 200 and len(r.content) > 10000
    (trace,) = proxy.traces()
    assert trace["response_body"] == r.text
    assert trace["status"] == "success" and trace["prompt_tokens"] is None
    assert any("nested too deeply" in n for n in trace["notes"])
    assert health(proxy)["store"]["write_errors"] == 0


class _WriterKiller(BaseException):
    """Not an Exception: escapes every per-row guard, as an unforeseen failure of the loop would."""


def test_writer_that_fails_is_restarted_loss_counted_health_degraded_and_logged(
    fake: FakeUpstream, start_proxy: Any, caplog: Any
) -> None:
    proxy = start_proxy(fake.url, trace_writer="thread")  # rows built here, where a test can break them
    writer = proxy.app.store.writer
    finalize = writer._finalize

    def once(item: Any) -> dict[str, Any]:
        if item.model == "kill-the-writer":
            raise _WriterKiller("boom")
        return finalize(item)

    writer._finalize = once
    assert health(proxy, key=False) == {"status": "ok"}
    with caplog.at_level(logging.ERROR, logger="prysmai.proxy"):
        post(proxy, {**CHAT, "model": "kill-the-writer"}).raise_for_status()
        assert proxy.app.store.flush(10)
        post(proxy, CHAT).raise_for_status()
        traces = proxy.traces()
    assert [t["model"] for t in traces] == ["gpt-4o-mini"]  # the writer came back for later traces
    doc = health(proxy)
    assert doc["status"] == "degraded" and "restarted" in doc["reason"] and "1 trace(s) lost" in doc["reason"]
    assert doc["store"]["lost"] == 1 and doc["store"]["writer_restarts"] == 1
    assert health(proxy, key=False) == {"status": "degraded"}  # the reason only with a key
    assert "writer restarted" in caplog.text


def test_writer_loop_failure_outside_any_row_is_survived(proxy: ProxyHandle) -> None:
    store = proxy.app.store.writer
    post(proxy, CHAT).raise_for_status()
    assert store.flush(10)
    store.submit(_Poison())  # an item on which the writer's loop itself fails, outside any row guard
    deadline = time.monotonic() + 5
    while store.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    post(proxy, CHAT).raise_for_status()
    assert len(proxy.traces()) == 2
    assert health(proxy)["status"] == "degraded"


class _Poison:
    """Its id cannot even be read: the writer's loop itself fails on it."""

    @property
    def id(self) -> str:
        raise _WriterKiller("poison")

    def __getattr__(self, name: str) -> Any:
        raise _WriterKiller("poison")


# -- one error path -----------------------------------------------------------------------------
def test_request_body_nested_100000_deep_is_a_json_400_with_one_trace(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    body = b'{"model":"m","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = post(proxy, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "nested too deeply" in r.json()["error"]["message"]
    assert r.headers["x-prysm-origin"] == "proxy"
    (trace,) = proxy.traces()
    assert (trace["status"], trace["http_status"]) == ("error", 400)
    assert trace["request_body"] == body.decode()
    assert not fake.seen


def test_metadata_nested_4000_deep_is_ignored_with_a_note(proxy: ProxyHandle) -> None:
    value = '{"k":' + "[" * 4000 + "]" * 4000 + "}"
    assert len(value) < 8192
    r = post(proxy, CHAT, {"X-Prysm-Metadata": value})
    assert r.status_code == 200
    (trace,) = proxy.traces()
    assert trace["metadata"] is None and any("nested too deeply" in n for n in trace["notes"])


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions", "embeddings", "responses"])
def test_empty_body_on_json_endpoint_is_400_invalid_json(proxy: ProxyHandle, fake: FakeUpstream, endpoint: str) -> None:
    r = httpx.post(f"{proxy.base_url}/{endpoint}", content=b"", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    (trace,) = proxy.traces()
    assert trace["http_status"] == 400 and trace["endpoint"] == endpoint
    assert not fake.seen


def test_a_bug_of_ours_is_a_json_500_with_one_trace(proxy: ProxyHandle, caplog: Any, monkeypatch: Any) -> None:
    from prysmai._proxy.server import forward

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(forward, "_prysm_header", broken)
    r = post(proxy, CHAT, {"X-Prysm-User-Id": "u"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.headers["x-prysm-origin"] == "proxy"
    err = r.json()["error"]
    assert err["code"] == "internal_error" and "RuntimeError" in err["message"]
    (trace,) = proxy.traces()
    assert (trace["status"], trace["http_status"]) == ("error", 500)
    assert trace["id"] == r.headers["x-prysm-trace-id"]
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0).chat.completions.create(
            **CHAT, extra_headers={"X-Prysm-User-Id": "u"}
        )


def test_proxy_made_responses_carry_the_origin_marker(proxy: ProxyHandle) -> None:
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT).headers["x-prysm-origin"] == "proxy"
    assert post(proxy, b"nope").headers["x-prysm-origin"] == "proxy"
    relayed = post(proxy, CHAT, {"x-fake-status": "503"})
    assert relayed.status_code == 503 and "x-prysm-origin" not in relayed.headers
    assert "x-prysm-origin" not in post(proxy, CHAT).headers


# -- key id per trace --------------------------------------------------------------------------------
def test_each_trace_records_which_key_made_it(proxy: ProxyHandle) -> None:
    post(proxy, CHAT).raise_for_status()
    post(proxy, CHAT, {"Authorization": f"Bearer {OTHER_KEY}"}).raise_for_status()
    a, b = proxy.traces()
    assert a["key_id"] == key_id(KEY) and b["key_id"] == key_id(OTHER_KEY) and a["key_id"] != b["key_id"]
    assert a["key_id"].startswith("key_") and len(a["key_id"]) == 16
    listed = httpx.get(f"{proxy.base_url}/traces", headers=AUTH).json()["data"]
    assert {t["key_id"] for t in listed} == {key_id(KEY), key_id(OTHER_KEY)}


# -- read API range -----------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["9223372036854775808", "0", "-1", "1001", "1e3"])
def test_traces_limit_out_of_range_is_400_naming_the_range(proxy: ProxyHandle, limit: str) -> None:
    r = httpx.get(f"{proxy.base_url}/traces", params={"limit": limit}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "from 1 to 1000" in r.json()["error"]["message"]


# -- upstream faults ------------------------------------------------------------------------------------
def test_client_leaving_a_slow_call_cancels_the_upstream_request_at_once(
    proxy: ProxyHandle, fake: FakeUpstream
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        post(proxy, CHAT, {"x-fake-delay-ms": "3000"}, timeout=httpx.Timeout(30, read=0.3))
    deadline = time.monotonic() + 1.5  # well before the upstream's 3 s answer
    while not fake.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (fake.abandoned, fake.finished) == (1, 0)
    (trace,) = proxy.traces()
    assert trace["status"] == "cancelled" and trace["http_status"] is None
    assert trace["latency_ms"] < 1500 and "disconnected" in trace["error"]


def test_a_slow_call_the_client_waits_for_is_served(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    r = post(proxy, CHAT, {"x-fake-delay-ms": "150"})
    assert r.status_code == 200 and fake.finished == 1
    (trace,) = proxy.traces()
    assert trace["status"] == "success" and trace["latency_ms"] >= 150


def test_upstream_breaking_a_stream_breaks_the_clients_stream_too(proxy: ProxyHandle) -> None:
    client = openai.OpenAI(
        base_url=proxy.base_url, api_key=KEY, max_retries=0, default_headers={"x-fake-break-after": "2"}
    )
    got: list[str] = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # never a clean, partial answer
        for chunk in client.chat.completions.create(**CHAT, stream=True):  # type: ignore[call-overload]
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "tok0 tok1 "
    (trace,) = proxy.traces()
    assert trace["status"] == "error" and "broke off" in trace["error"]
    assert json.loads(trace["response_body"])["choices"][0]["message"]["content"] == "tok0 tok1 "


class _HalfAnswer(RawUpstream):
    """Sends the head of a JSON answer and 10 of its 100 bytes, then stalls (``close=False``) or
    closes the connection."""

    def __init__(self, close: bool) -> None:
        super().__init__()
        self.close = close

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"id":"x",')
        await writer.drain()
        if not self.close:
            await asyncio.sleep(5)
        writer.close()


@pytest.mark.parametrize(
    ("close", "status", "trace_status", "message"),
    [
        (False, 504, "timeout", "the upstream timed out while answering"),
        (True, 502, "error", "the upstream broke off its answer (ClientPayloadError)"),
    ],
    ids=["stalls", "closes"],
)
def test_an_upstream_failing_mid_answer_is_a_json_error_with_one_trace(
    start_proxy: Any, close: bool, status: int, trace_status: str, message: str
) -> None:
    with _HalfAnswer(close) as upstream:
        proxy = start_proxy(upstream.url, upstream_timeout=0.5)
        r = post(proxy, CHAT)
        assert r.status_code == status and r.json()["error"]["message"] == message
        (trace,) = proxy.traces()
        assert (trace["status"], trace["http_status"], trace["error"]) == (trace_status, status, message)


async def test_upstream_closing_pooled_connections_gives_no_spurious_502(start_proxy: Any) -> None:
    with ClosingUpstream() as upstream:
        proxy = start_proxy(upstream.url)
        statuses = []
        async with httpx.AsyncClient(base_url=proxy.base_url, headers=AUTH, timeout=30) as client:
            for _ in range(150):
                statuses.append((await client.post("chat/completions", json=CHAT)).status_code)
        assert statuses.count(200) == 150, [s for s in statuses if s != 200]
        assert upstream.requests == 150  # each sent once: none lost, none duplicated
        assert len(proxy.traces()) == 150


# -- slow and hostile connections -----------------------------------------------------------------------
def _raw(proxy: ProxyHandle) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


def test_headers_that_trickle_or_never_come_time_out(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, header_timeout=1.0)
    silent, trickler = _raw(proxy), _raw(proxy)
    start = time.monotonic()
    trickler.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    for _ in range(4):  # one header byte at a time, never the end of the headers
        time.sleep(0.4)
        with contextlib.suppress(OSError):
            trickler.sendall(b"X")
    answers = [_read_all(trickler), _read_all(silent)]
    assert time.monotonic() - start < 5
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b"x-prysm-origin: proxy" in answer and b'"code": "request_timeout"' in answer
    assert not fake.seen
    post(proxy, CHAT).raise_for_status()  # the proxy itself is fine


def test_headers_over_the_limit_get_431_and_are_not_forwarded(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, max_header_bytes=8192)
    r = post(proxy, CHAT, {"X-Big": "a" * 20_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "request_header_fields_too_large"
    assert "8192" in r.json()["error"]["message"] and r.headers["x-prysm-origin"] == "proxy"
    assert not fake.seen
    # A large body is not a large header.
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 1_000_000}]}
    assert post(proxy, big, {"X-Small": "b" * 4000}).status_code == 200


def test_connections_over_the_cap_get_503(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, max_client_connections=4, header_timeout=30.0)
    held = [_raw(proxy) for _ in range(4)]
    time.sleep(0.2)
    extra = _raw(proxy)
    answer = _read_all(extra)
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
    assert b'"code": "overloaded"' in answer and b"x-prysm-origin: proxy" in answer
    for sock in held:
        sock.close()
    time.sleep(0.2)
    post(proxy, CHAT).raise_for_status()


async def test_a_request_the_upstream_read_is_never_sent_twice(start_proxy: Any) -> None:
    with ClosingUpstream(eat_second=True) as upstream:  # reads every 2nd request, never answers it
        proxy = start_proxy(upstream.url)
        async with httpx.AsyncClient(base_url=proxy.base_url, headers=AUTH, timeout=30) as client:
            statuses = [(await client.post("chat/completions", json=CHAT)).status_code for _ in range(20)]
        assert statuses.count(200) == 10 and statuses.count(502) == 10, statuses
        assert upstream.requests == 20  # the eaten ones were not sent again
        traces = proxy.traces()
        assert len(traces) == 20 and sum(t["http_status"] == 502 for t in traces) == 10


def test_a_writer_thread_that_is_gone_is_restarted_and_its_queue_written(proxy: ProxyHandle) -> None:
    store = proxy.app.store.writer
    thread = store._thread
    assert thread is not None
    store._queue.put(store_module._STOP)  # the thread ends as if it had died
    thread.join(5)
    assert not thread.is_alive()
    post(proxy, CHAT).raise_for_status()
    assert health(proxy)["status"] == "degraded"  # noticed, restarted, said
    assert store._thread is not thread and store._thread is not None and store._thread.is_alive()
    (trace,) = proxy.traces()
    assert trace["status"] == "success"


async def test_disconnect_watches_arm_only_requests_still_waiting_after_the_delay() -> None:
    import asyncio

    from prysmai._proxy.server.disconnect import DisconnectWatches

    watches = DisconnectWatches(delay=0.05)
    calls: list[float] = []

    async def receive() -> dict[str, Any]:
        calls.append(time.monotonic())
        return {"type": "http.disconnect"}

    quick = watches.start(receive)  # answered at once: never armed, receive never read
    quick.stop()

    async def slow() -> None:
        watch = watches.start(receive)
        try:
            await asyncio.sleep(5)
        finally:
            watch.stop()
            assert watch.gone

    start = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(slow())
    assert 0.05 <= time.monotonic() - start < 1.0  # armed after the delay (within one sweep), not 5 s
    assert len(calls) == 1 and not quick.gone and not watches.pending


async def test_disconnect_watches_keep_one_timer_while_requests_keep_coming() -> None:
    """Short requests one after another (each over before a sweep) find the sweep's timer running
    rather than each creating one; once requests stop, the timer stops too."""
    import asyncio

    from prysmai._proxy.server.disconnect import DisconnectWatches

    async def receive() -> dict[str, Any]:  # pragma: no cover - never armed
        return {"type": "http.disconnect"}

    watches = DisconnectWatches(delay=0.2)  # a sweep every 0.1 s
    watches.start(receive).stop()
    found_running = []
    for _ in range(30):  # 0.3 s of short requests: three sweeps with nothing pending
        await asyncio.sleep(0.01)
        found_running.append(watches._timer is not None)
        watches.start(receive).stop()
    assert all(found_running)
    for _ in range(100):  # two idle sweeps: stopped (within 5 s on a slow machine)
        if watches._timer is None:
            break
        await asyncio.sleep(0.05)
    assert watches._timer is None and not watches.pending
