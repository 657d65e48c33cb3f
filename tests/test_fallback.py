"""Fail-open: when the Prysm hop fails, requests go straight to where the client pointed, once;
the circuit breaker keeps them there for a cool-down, then probes the proxy; ``status()`` counts.

The proxy is played by loopback servers that fail on purpose: a port nobody listens on, one that
closes every connection, one that answers a 502 marked as the proxy's own, one that breaks a
stream after its first bytes. "OpenAI" is ``openai_server`` (see conftest.py). Runs on every
openai lane (no proxy extra needed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import OPENAI_MAJOR, PRYSM_KEY, RecordingServer, default_httpx, loopback_http_client

import prysmai
from prysmai._wire import ORIGIN_HEADER

MESSAGES: Any = [{"role": "user", "content": "hi"}]
USER_KEY = "sk-user-openai-key"
MARK = {ORIGIN_HEADER.replace("-", "_"): "proxy"}  # RecordingServer.fail_next takes headers as kwargs
HAS_STREAMING_RESPONSE = hasattr(openai.resources.chat.Completions, "with_streaming_response")


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"  # nothing listens there any more


class _BrokenHandler(socketserver.BaseRequestHandler):
    server: BrokenProxy

    def handle(self) -> None:
        with self.server.lock:
            self.server.accepted += 1
        data = b""
        while b"\r\n\r\n" not in data:
            part = self.request.recv(65536)
            if not part:
                return
            data += part
        head, _, body = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += self.request.recv(65536)
        with self.server.lock:
            self.server.seen.append(headers)
        if self.server.mode == "stream-break":
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}],
            }
            event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                + f"{len(event):x}\r\n".encode()
                + event
                + b"\r\n"
            )
            time.sleep(0.05)
        # "close": hang up without a word, after reading the request
        self.request.shutdown(socket.SHUT_RDWR)


class BrokenProxy(socketserver.ThreadingTCPServer):
    """A loopback "proxy" that reads each request and hangs up (or breaks a stream after its first event)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str = "close") -> None:
        super().__init__(("127.0.0.1", 0), _BrokenHandler)
        self.mode = mode
        self.accepted = 0
        self.seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.fixture
def broken_proxy() -> Iterator[BrokenProxy]:
    server = BrokenProxy()
    try:
        yield server
    finally:
        server.stop()


def instrumented_client(openai_server: RecordingServer, proxy_url: str, **kwargs: Any) -> openai.OpenAI:
    options = {k: kwargs.pop(k) for k in ("fallback", "fallback_cooldown") if k in kwargs}
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_url, **options)
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=USER_KEY, http_client=loopback_http_client(openai_server), **kwargs)


def monitored_client(openai_server: RecordingServer, proxy_url: str, **kwargs: Any) -> openai.OpenAI:
    options = {k: kwargs.pop(k) for k in ("fallback", "fallback_cooldown") if k in kwargs}
    kwargs.setdefault("max_retries", 0)
    source = openai.OpenAI(api_key=USER_KEY, base_url=openai_server.url, http_client=default_httpx.Client(), **kwargs)
    return prysmai.monitor(source, prysm_key=PRYSM_KEY, base_url=proxy_url, **options)


def chat(client: openai.OpenAI) -> str:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content or ""


def assert_direct(openai_server: RecordingServer, path: str = "/v1/chat/completions") -> None:
    """The last request reached "OpenAI" as the app made it: its own key, no Prysm header."""
    last = openai_server.last
    assert last.path == path
    assert last.header("authorization") == f"Bearer {USER_KEY}"
    assert not [name for name in last.headers if name.startswith("x-prysm-")]


# -- when it falls back --------------------------------------------------------------------------
@pytest.mark.parametrize("max_retries", [0, 2])
def test_instrument_falls_back_when_nothing_listens(openai_server: RecordingServer, max_retries: int) -> None:
    client = instrumented_client(openai_server, dead_url(), max_retries=max_retries)
    assert chat(client) == "Hello from openai"
    assert_direct(openai_server)
    assert len(openai_server.requests) == 1
    s = prysmai.status()
    assert (s.mode, s.breaker, s.fallback, s.routed, s.sent_direct, s.failed) == ("instrument", "open", True, 0, 1, 0)


@pytest.mark.skipif(OPENAI_MAJOR < 3, reason="openai 1.x/2.x use httpx already (the test above)")
def test_instrument_falls_back_with_a_legacy_httpx_client_on_openai_3(openai_server: RecordingServer) -> None:
    import httpx

    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=dead_url())
    client = openai.OpenAI(
        api_key=USER_KEY, http_client=loopback_http_client(openai_server, httpx_module=httpx), max_retries=1
    )
    assert chat(client) == "Hello from openai"
    assert_direct(openai_server)


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_down_proxy_costs_one_connection_per_cooldown(
    openai_server: RecordingServer, broken_proxy: BrokenProxy, max_retries: int
) -> None:
    client = instrumented_client(openai_server, broken_proxy.url, max_retries=max_retries)
    for _ in range(5):
        assert chat(client) == "Hello from openai"
    assert broken_proxy.accepted == 1  # not one per request, not one per openai retry
    assert len(openai_server.requests) == 5
    if max_retries and OPENAI_MAJOR >= 1 and openai_server.requests[0].header("x-stainless-retry-count") is not None:
        # the fallback took the place of openai's first retry: no extra attempt, no back-off
        assert openai_server.requests[0].header("x-stainless-retry-count") == "1"
    # the proxy never saw the user's key; "OpenAI" never saw the Prysm key
    assert all(h.get("authorization") == f"Bearer {PRYSM_KEY}" for h in broken_proxy.seen)
    assert all(PRYSM_KEY not in json.dumps(r.headers) for r in openai_server.requests)
    assert prysmai.status().sent_direct == 5


def test_a_502_marked_as_the_proxys_own_falls_back_then_the_breaker_probes_and_closes(
    openai_server: RecordingServer, proxy_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prysmai")
    client = instrumented_client(openai_server, proxy_server.url, fallback_cooldown=0.3)
    proxy_server.fail_next(502, times=2, **MARK)
    assert chat(client) == "Hello from openai"  # proxy: 502 (marked) -> direct
    assert chat(client) == "Hello from openai"  # breaker open: direct, the proxy is not asked
    assert (len(proxy_server.requests), len(openai_server.requests)) == (1, 2)
    assert prysmai.status().breaker == "open"
    time.sleep(0.35)
    assert chat(client) == "Hello from openai"  # the probe meets the second planned 502: open again
    assert (len(proxy_server.requests), len(openai_server.requests)) == (2, 3)
    assert chat(client) == "Hello from openai"
    assert len(proxy_server.requests) == 2
    time.sleep(0.35)
    assert chat(client) == "Hello from proxy"  # the probe gets through: closed
    assert chat(client) == "Hello from proxy"
    s = prysmai.status()
    assert (s.breaker, s.routed, s.sent_direct, s.failed) == ("closed", 2, 4, 0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "prysmai" and r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one when it opened, one when it closed: not per request
    assert proxy_server.url in warnings[0] and "HTTP 502 from the proxy" in warnings[0]
    assert "answers again" in warnings[1]
    assert PRYSM_KEY not in " ".join(warnings)


def test_a_connection_closed_before_the_answer_falls_back(
    openai_server: RecordingServer, broken_proxy: BrokenProxy
) -> None:
    client = instrumented_client(openai_server, broken_proxy.url)
    assert chat(client) == "Hello from openai"
    assert broken_proxy.accepted == 1


def test_streams_raw_and_streaming_responses_fall_back_before_their_first_byte(
    openai_server: RecordingServer,
) -> None:
    client = instrumented_client(openai_server, dead_url())
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from openai"
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from openai"
    if HAS_STREAMING_RESPONSE:
        with client.chat.completions.with_streaming_response.create(model="m", messages=MESSAGES) as response:
            assert json.loads(response.read())["choices"][0]["message"]["content"] == "Hello from openai"
    assert len(openai_server.requests) == (3 if HAS_STREAMING_RESPONSE else 2)
    assert_direct(openai_server)


def test_monitor_with_fallback_goes_to_the_source_clients_url_with_its_key(
    openai_server: RecordingServer, broken_proxy: BrokenProxy
) -> None:
    client = monitored_client(openai_server, broken_proxy.url, fallback=True, max_retries=1)
    with prysmai.prysm_context(user_id="u-1", metadata={"k": "v"}):
        assert chat(client) == "Hello from openai"
        assert chat(client) == "Hello from openai"
    assert_direct(openai_server)
    assert broken_proxy.accepted == 1
    assert broken_proxy.seen[0]["authorization"] == f"Bearer {PRYSM_KEY}"
    assert USER_KEY not in json.dumps(broken_proxy.seen)
    # copies keep the policy
    assert chat(client.with_options(timeout=5)) == "Hello from openai"
    assert broken_proxy.accepted == 1
    s = prysmai.status()
    assert (s.mode, s.fallback, s.sent_direct) == ("monitor", True, 3)


def test_concurrent_threads_all_succeed_and_add_up(
    openai_server: RecordingServer, proxy_server: RecordingServer
) -> None:
    client = instrumented_client(openai_server, proxy_server.url, fallback_cooldown=0.05)
    proxy_server.fail_next(503, times=3, **MARK)
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(10):
            try:
                assert chat(client) in ("Hello from openai", "Hello from proxy")
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.01)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    s = prysmai.status()
    assert s.routed + s.sent_direct == 80 and s.failed == 0
    assert s.routed == len(proxy_server.requests) - 3  # every answered request of the proxy is counted
    assert s.sent_direct == len(openai_server.requests)


# -- when it does not ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "marked", "error"),
    [
        (401, True, openai.AuthenticationError),  # the proxy rejects the Prysm key: loud
        (429, True, openai.RateLimitError),  # the proxy's own 429
        (429, False, openai.RateLimitError),  # relayed from the provider
        (500, False, openai.InternalServerError),  # relayed from the provider
        (502, False, openai.APIStatusError),  # a provider's (or a reverse proxy's) 502, not marked
    ],
)
def test_answers_of_the_proxy_are_not_fallen_back_on(
    openai_server: RecordingServer,
    proxy_server: RecordingServer,
    caplog: pytest.LogCaptureFixture,
    status: int,
    marked: bool,
    error: type[Exception],
) -> None:
    client = instrumented_client(openai_server, proxy_server.url)
    proxy_server.fail_next(status, times=2, **(MARK if marked else {}))
    for _ in range(2):
        with pytest.raises(error):
            chat(client)
    assert openai_server.requests == []
    s = prysmai.status()
    assert s.breaker == "closed" and s.sent_direct == 0
    if status == 401:
        assert s.failed == 2
        rejected = [r for r in caplog.records if "rejected the Prysm key" in r.getMessage()]
        assert len(rejected) == 1 and proxy_server.url in rejected[0].getMessage()
    else:
        assert s.routed == 2


def test_a_stream_broken_after_its_first_bytes_is_not_replayed(openai_server: RecordingServer) -> None:
    proxy = BrokenProxy("stream-break")
    try:
        client = instrumented_client(openai_server, proxy.url)
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        received = []
        with pytest.raises(Exception):  # noqa: B017 - openai's and the http library's errors differ by release
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
        assert received == ["partial"]
    finally:
        proxy.stop()
    assert openai_server.requests == []
    assert prysmai.status().sent_direct == 0


def test_read_timeouts_are_not_fallen_back_on(openai_server: RecordingServer, proxy_server: RecordingServer) -> None:
    client = instrumented_client(openai_server, proxy_server.url, timeout=0.2)
    proxy_server.delay = 1.0
    try:
        with pytest.raises(openai.APITimeoutError):
            chat(client)
    finally:
        proxy_server.delay = 0.0
    assert openai_server.requests == []
    assert prysmai.status().failed == 1


def test_fallback_off_raises_and_counts(openai_server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRYSM_FALLBACK", "0")
    client = instrumented_client(openai_server, dead_url())
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    assert openai_server.requests == []
    s = prysmai.status()
    assert (s.fallback, s.failed, s.sent_direct) == (False, 1, 0)


def test_monitor_without_fallback_still_raises_api_connection_error(openai_server: RecordingServer) -> None:
    client = monitored_client(openai_server, dead_url())
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    assert openai_server.requests == []
    assert prysmai.status().failed == 1


# -- settings --------------------------------------------------------------------------------------
def test_settings_are_checked_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRYSM_FALLBACK", "maybe")
    with pytest.raises(ValueError, match="PRYSM_FALLBACK"):
        prysmai.instrument(prysm_key=PRYSM_KEY)
    monkeypatch.delenv("PRYSM_FALLBACK")
    monkeypatch.setenv("PRYSM_FALLBACK_COOLDOWN", "soon")
    with pytest.raises(ValueError, match="PRYSM_FALLBACK_COOLDOWN"):
        prysmai.instrument(prysm_key=PRYSM_KEY)
    monkeypatch.setenv("PRYSM_FALLBACK_COOLDOWN", "7.5")
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url="http://127.0.0.1:9/api/v1")
    assert prysmai.status().proxies[0]["cooldown"] == 7.5
    with pytest.raises(ValueError, match="non-negative"):
        prysmai.instrument(prysm_key=PRYSM_KEY, fallback_cooldown=-1)
    with pytest.raises(TypeError):
        prysmai.instrument(prysm_key=PRYSM_KEY, fallback="yes")  # type: ignore[arg-type]


def test_monitor_fallback_needs_a_provider_key_on_the_source_client(monkeypatch: pytest.MonkeyPatch) -> None:
    prysm_keyed = openai.OpenAI(api_key="sk-prysm-not-a-provider-key")
    with pytest.raises(ValueError, match="fallback=True") as excinfo:
        prysmai.monitor(prysm_keyed, prysm_key=PRYSM_KEY, base_url="http://127.0.0.1:9/api/v1", fallback=True)
    assert "sk-prysm-not" not in str(excinfo.value)
    # without fallback the same client is fine (its key is never used)
    prysmai.monitor(prysm_keyed, prysm_key=PRYSM_KEY, base_url="http://127.0.0.1:9/api/v1")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        prysmai.PrysmClient(prysm_key=PRYSM_KEY, fallback=True)
    prysmai.PrysmClient(prysm_key=PRYSM_KEY, fallback=True, upstream_api_key="sk-provider")


def test_prysm_client_with_fallback_goes_to_openai_base_url(
    openai_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", USER_KEY)
    client = prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url=dead_url(), fallback=True).openai(max_retries=0)
    assert chat(client) == "Hello from openai"
    assert_direct(openai_server)


# -- async ---------------------------------------------------------------------------------------
async def test_async_falls_back_streams_too_and_adds_up(openai_server: RecordingServer) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=dead_url(), fallback_cooldown=30)
    client = openai.AsyncOpenAI(
        api_key=USER_KEY, http_client=loopback_http_client(openai_server, is_async=True), max_retries=2
    )

    async def one(i: int) -> str:
        if i % 2:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        r = await client.chat.completions.create(model="m", messages=MESSAGES)
        return r.choices[0].message.content or ""

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == ["Hello from openai"] * 20
    assert_direct(openai_server)
    s = prysmai.status()
    assert (s.sent_direct, s.routed, s.failed) == (20, 0, 0)
    await client.close()


async def test_async_monitor_without_fallback_raises(openai_server: RecordingServer) -> None:
    source = openai.AsyncOpenAI(api_key=USER_KEY, base_url=openai_server.url, max_retries=0)
    client = prysmai.monitor(source, prysm_key=PRYSM_KEY, base_url=dead_url())
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert openai_server.requests == []
