"""Every kind of request of a routed client reaches the proxy, authenticated and tagged, and
returns what openai returns: the same for ``monitor()`` and ``instrument()``, sync and async."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from conftest import OPENAI_MAJOR, PRYSM_KEY, RecordingServer, default_httpx, loopback_http_client, prysm_headers

import prysmai

MODES = ["monitor", "instrument"]
HAS_RESPONSES = hasattr(openai.OpenAI, "responses")
HAS_STREAMING_RESPONSE = hasattr(openai.resources.chat.Completions, "with_streaming_response")
# introduced in openai 1.2: `with stream:`
STREAM_IS_CONTEXT_MANAGER = hasattr(openai.Stream, "__enter__")
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _sync_client(mode: str, proxy: RecordingServer, openai_server: RecordingServer, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    if mode == "monitor":
        base = openai.OpenAI(api_key="sk-user-openai-key", http_client=default_httpx.Client(), **kwargs)
        # monitor() sets its own timeout (120 s unless told): pass the client's on.
        return prysmai.monitor(base, prysm_key=PRYSM_KEY, base_url=proxy.url, timeout=kwargs.get("timeout", 120.0))
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy.url)
    return openai.OpenAI(api_key="sk-user-openai-key", http_client=loopback_http_client(openai_server), **kwargs)


def _async_client(
    mode: str, proxy: RecordingServer, openai_server: RecordingServer, **kwargs: Any
) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    if mode == "monitor":
        base = openai.AsyncOpenAI(api_key="sk-user-openai-key", http_client=default_httpx.AsyncClient(), **kwargs)
        return prysmai.monitor(base, prysm_key=PRYSM_KEY, base_url=proxy.url)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy.url)
    return openai.AsyncOpenAI(
        api_key="sk-user-openai-key", http_client=loopback_http_client(openai_server, is_async=True), **kwargs
    )


@pytest.fixture(params=MODES)
def client(
    request: pytest.FixtureRequest, proxy_server: RecordingServer, openai_server: RecordingServer
) -> Iterator[openai.OpenAI]:
    c = _sync_client(request.param, proxy_server, openai_server)
    yield c
    c.close()


@pytest.fixture(params=MODES)
async def aclient(
    request: pytest.FixtureRequest, proxy_server: RecordingServer, openai_server: RecordingServer
) -> AsyncIterator[openai.AsyncOpenAI]:
    c = _async_client(request.param, proxy_server, openai_server)
    yield c
    await c.close()


def assert_routed(proxy: RecordingServer, openai_server: RecordingServer, path: str, user: str = "u-1") -> None:
    assert openai_server.requests == [], "a routed request reached OpenAI directly"
    last = proxy.last
    assert last.path.split("?")[0] == "/api/v1" + path
    assert last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert prysm_headers(last)["x-prysm-user-id"] == user


class TestSync:
    def test_chat_completion(self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/chat/completions")
        assert proxy_server.last.json()["messages"] == MESSAGES

    def test_streaming_keeps_stream_type(
        self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert isinstance(stream, openai.Stream)
        if STREAM_IS_CONTEXT_MANAGER:
            with stream:
                text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        else:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/chat/completions")

    @pytest.mark.skipif(not HAS_RESPONSES, reason="this openai release has no Responses API")
    def test_responses_api(self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            response = client.responses.create(model="gpt-4o-mini", input="hi")
        assert response.output_text == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/responses")

    @pytest.mark.skipif(not HAS_RESPONSES, reason="this openai release has no Responses API")
    def test_responses_api_streaming(
        self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
        assert [e.type for e in events][-1] == "response.completed"
        assert_routed(proxy_server, openai_server, "/responses")

    def test_embeddings_models_files(
        self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            embedding = client.embeddings.create(model="text-embedding-3-small", input="hi")
            assert embedding.data[0].embedding == [0.1, 0.2, 0.3]
            assert_routed(proxy_server, openai_server, "/embeddings")
            assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
            assert_routed(proxy_server, openai_server, "/models")
            assert list(client.files.list()) == []
            assert_routed(proxy_server, openai_server, "/files")

    def test_raw_response_keeps_parse_and_headers(
        self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert raw.headers["content-type"] == "application/json"
        assert raw.parse().choices[0].message.content == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/chat/completions")

    @pytest.mark.skipif(not HAS_STREAMING_RESPONSE, reason="this openai release has no with_streaming_response")
    def test_streaming_response(self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any) -> None:
        with (
            prysmai.prysm_context(user_id="u-1"),
            client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MESSAGES) as response,
        ):
            assert response.parse().choices[0].message.content == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/chat/completions")

    def test_copy_and_with_options_stay_routed_once(
        self, client: openai.OpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1", metadata={"k": "v"}):
            client.with_options(timeout=30).chat.completions.create(model="m", messages=MESSAGES)
            assert_routed(proxy_server, openai_server, "/chat/completions")
            client.copy(max_retries=1).copy().chat.completions.create(model="m", messages=MESSAGES)
            assert_routed(proxy_server, openai_server, "/chat/completions")
        # Tagged exactly once: one value per header, not a comma-joined pair.
        assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "u-1", "x-prysm-metadata": '{"k":"v"}'}

    def test_every_retry_attempt_is_routed_and_tagged(
        self, proxy_server: RecordingServer, openai_server: RecordingServer, request: pytest.FixtureRequest
    ) -> None:
        for mode in MODES:
            prysmai.uninstrument()
            proxy_server.requests.clear()
            client = _sync_client(mode, proxy_server, openai_server, max_retries=2)
            proxy_server.fail_next(500, times=2, retry_after_ms="1")
            with prysmai.prysm_context(user_id="u-1"):
                client.chat.completions.create(model="m", messages=MESSAGES)
            assert len(proxy_server.requests) == 3, mode
            if proxy_server.requests[0].header("x-stainless-retry-count") is not None:  # openai >= 1.x later
                assert [r.header("x-stainless-retry-count") for r in proxy_server.requests] == ["0", "1", "2"]
            for attempt in proxy_server.requests:
                assert attempt.header("authorization") == f"Bearer {PRYSM_KEY}"
                assert prysm_headers(attempt)["x-prysm-user-id"] == "u-1"
            assert openai_server.requests == []

    @pytest.mark.parametrize(
        ("status", "error"),
        [
            (401, openai.AuthenticationError),
            (429, openai.RateLimitError),
            (500, openai.InternalServerError),
            (400, openai.BadRequestError),
        ],
    )
    def test_proxy_errors_stay_openai_errors(
        self, client: openai.OpenAI, proxy_server: RecordingServer, status: int, error: type[Exception]
    ) -> None:
        proxy_server.fail_next(status, message="from the proxy")
        with pytest.raises(error) as excinfo:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert "from the proxy" in str(excinfo.value)
        assert PRYSM_KEY not in str(excinfo.value)

    def test_stream_error_is_openais(self, client: openai.OpenAI, proxy_server: RecordingServer) -> None:
        proxy_server.fail_next(503, message="overloaded")
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=MESSAGES, stream=True)

    def test_timeout_is_openais(self, proxy_server: RecordingServer, openai_server: RecordingServer) -> None:
        for mode in MODES:
            prysmai.uninstrument()
            client = _sync_client(mode, proxy_server, openai_server, timeout=0.2)
            proxy_server.delay = 1.0
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="m", messages=MESSAGES)
            proxy_server.delay = 0.0


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"  # nothing listens there any more


@pytest.mark.parametrize("mode", MODES)
def test_unreachable_proxy_is_api_connection_error(mode: str, openai_server: RecordingServer) -> None:
    dead = _dead_url()
    if mode == "monitor":
        client = prysmai.monitor(openai.OpenAI(max_retries=0), prysm_key=PRYSM_KEY, base_url=dead)
    else:
        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=dead, fallback=False)  # fail-open: tests/test_fallback.py
        client = openai.OpenAI(max_retries=0, http_client=loopback_http_client(openai_server))
    with pytest.raises(openai.APIConnectionError) as excinfo:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert not isinstance(excinfo.value, openai.APITimeoutError)
    assert openai_server.requests == []


class TestAsync:
    async def test_chat_completion(
        self, aclient: openai.AsyncOpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        async with prysmai.prysm_context(user_id="u-1"):
            completion = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/chat/completions")

    async def test_streaming_keeps_stream_type(
        self, aclient: openai.AsyncOpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/chat/completions")

    @pytest.mark.skipif(not HAS_RESPONSES, reason="this openai release has no Responses API")
    async def test_responses_api(
        self, aclient: openai.AsyncOpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            response = await aclient.responses.create(model="gpt-4o-mini", input="hi")
        assert response.output_text == "Hello from proxy"
        assert_routed(proxy_server, openai_server, "/responses")

    async def test_raw_response_and_embeddings(
        self, aclient: openai.AsyncOpenAI, proxy_server: RecordingServer, openai_server: Any
    ) -> None:
        with prysmai.prysm_context(user_id="u-1"):
            raw = await aclient.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
            assert raw.parse().choices[0].message.content == "Hello from proxy"
            embedding = await aclient.embeddings.create(model="text-embedding-3-small", input="hi")
        assert embedding.data[0].embedding == [0.1, 0.2, 0.3]
        assert_routed(proxy_server, openai_server, "/embeddings")

    async def test_proxy_401_is_authentication_error(
        self, aclient: openai.AsyncOpenAI, proxy_server: RecordingServer
    ) -> None:
        proxy_server.fail_next(401, message="invalid prysm key")
        with pytest.raises(openai.AuthenticationError):
            await aclient.chat.completions.create(model="m", messages=MESSAGES)

    async def test_tasks_each_carry_their_own_scope(
        self, aclient: openai.AsyncOpenAI, proxy_server: RecordingServer
    ) -> None:
        import asyncio

        async def call(user: str) -> None:
            with prysmai.prysm_context(user_id=user, metadata={"echo": user}):
                await asyncio.sleep(0)
                await aclient.chat.completions.create(model="m", messages=MESSAGES)

        await asyncio.gather(*(call(f"user-{i}") for i in range(20)))
        assert len(proxy_server.requests) == 20
        for recorded in proxy_server.requests:
            headers = prysm_headers(recorded)
            assert headers["x-prysm-metadata"] == '{{"echo":"{}"}}'.format(headers["x-prysm-user-id"])


@pytest.mark.skipif(OPENAI_MAJOR < 3, reason="httpx2 is openai 3.x's default; 1.x/2.x use httpx, tested above")
@pytest.mark.parametrize("mode", MODES)
def test_user_supplied_legacy_httpx_client(mode: str, proxy_server: RecordingServer, openai_server: Any) -> None:
    """openai 3.x still accepts an ``httpx.Client``: routing does not depend on the http library."""
    import httpx

    if mode == "monitor":
        base = openai.OpenAI(http_client=httpx.Client(), max_retries=0)
        client = prysmai.monitor(base, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    else:
        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
        client = openai.OpenAI(http_client=loopback_http_client(openai_server, httpx_module=httpx), max_retries=0)
    with prysmai.prysm_context(user_id="u-1"):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert_routed(proxy_server, openai_server, "/chat/completions")


@pytest.mark.parametrize("mode", MODES)
def test_httpx_client_seen_through_respx(mode: str) -> None:
    """Where the client really uses ``httpx`` (openai 1.x/2.x, or a legacy client on 3.x), respx sees
    exactly what leaves the process: the proxy URL, the Prysm key and the context headers."""
    import httpx
    import respx

    proxy_url = "https://prysm.example.test/api/v1"
    with respx.mock(assert_all_called=True) as router:
        route = router.post(f"{proxy_url}/chat/completions").mock(
            return_value=httpx.Response(
                200,
                json={
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                    ],
                },
            )
        )
        base = openai.OpenAI(api_key="sk-user", http_client=httpx.Client(), max_retries=0)
        if mode == "monitor":
            client = prysmai.monitor(base, prysm_key=PRYSM_KEY, base_url=proxy_url)
        else:
            prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_url)
            client = base
        with prysmai.prysm_context(user_id="respx-user", session_id="é"):
            assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == "ok"
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {PRYSM_KEY}"
    assert sent.headers["x-prysm-user-id"] == "respx-user"
    assert sent.headers["x-prysm-session-id"] == "%C3%A9"
