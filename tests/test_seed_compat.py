"""Code written against the seed SDK (prysmai-python 0.1.x) runs unchanged.

Written only from the seed's README -- its API reference, examples and environment table -- and
the public behaviour its own tests relied on, never from prysmai's internals: one test per line of
that reference, quoted above each test. Requests go to a loopback server standing in for the Prysm
proxy (``base_url=`` or ``PRYSM_BASE_URL``); the hosted default is checked without sending anything.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from conftest import RecordingServer

SEED_KEY = "sk-prysm-test1234567890abcdef"
HOSTED = "https://prysmai.io/api/v1"
MESSAGES = [{"role": "user", "content": "Explain quantum computing"}]


@pytest.fixture
def proxy_env(proxy_server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> RecordingServer:
    """The README's "Environment Variables": PRYSM_API_KEY and PRYSM_BASE_URL set."""
    monkeypatch.setenv("PRYSM_API_KEY", SEED_KEY)
    monkeypatch.setenv("PRYSM_BASE_URL", proxy_server.url)
    return proxy_server


def last_headers(server: RecordingServer) -> dict[str, str]:
    return server.last.headers


# --- imports ------------------------------------------------------------------------------------


def test_from_prysmai_import_monitor_prysmclient_prysm_context() -> None:
    # "from prysmai import monitor" / "from prysmai import PrysmClient" / "from prysmai import prysm_context"
    from prysmai import PrysmClient, monitor, prysm_context

    assert callable(monitor) and callable(PrysmClient) and callable(prysm_context)


def test_seed_module_paths() -> None:
    # the seed's modules, as its users import them
    import prysmai
    from prysmai.client import PrysmClient, monitor
    from prysmai.context import PrysmContext, prysm_context

    assert monitor is prysmai.monitor and PrysmClient is prysmai.PrysmClient
    assert prysm_context is prysmai.prysm_context and PrysmContext is prysmai.PrysmContext


# --- Quick Start --------------------------------------------------------------------------------


def test_quick_start(proxy_server: RecordingServer) -> None:
    # client = openai.OpenAI(api_key="sk-...")
    # monitored = monitor(client, prysm_key="sk-prysm-...")
    # response = monitored.chat.completions.create(model="gpt-4o-mini", messages=[...])
    # print(response.choices[0].message.content)
    from prysmai import monitor

    client = openai.OpenAI(api_key="sk-user")
    monitored = monitor(client, prysm_key=SEED_KEY, base_url=proxy_server.url)
    response = monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert response.choices[0].message.content == "Hello from proxy"
    assert proxy_server.last.path == "/api/v1/chat/completions"
    assert last_headers(proxy_server)["authorization"] == f"Bearer {SEED_KEY}"


# --- monitor(client, prysm_key, base_url, timeout) ----------------------------------------------


@pytest.mark.parametrize("cls", [openai.OpenAI, openai.AsyncOpenAI])
def test_monitor_client_is_openai_or_async_openai_and_same_type_is_returned(cls: Any) -> None:
    # | `client` | `openai.OpenAI` or `openai.AsyncOpenAI` | *required* | Your existing OpenAI client |
    # **Returns:** A new OpenAI client of the same type (sync or async) routed through Prysm.
    from prysmai import monitor

    original = cls(api_key="sk-user")
    monitored = monitor(original, prysm_key=SEED_KEY)
    assert type(monitored) is cls
    assert monitored is not original
    assert monitored.api_key == SEED_KEY


def test_monitor_prysm_key_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # | `prysm_key` | `str` | `PRYSM_API_KEY` env var | Your Prysm API key (`sk-prysm-...`) |
    from prysmai import monitor

    monkeypatch.setenv("PRYSM_API_KEY", SEED_KEY)
    assert monitor(openai.OpenAI(api_key="sk-user")).api_key == SEED_KEY


def test_monitor_base_url_defaults_to_the_hosted_proxy() -> None:
    # | `base_url` | `str` | `https://prysmai.io/api/v1` | Prysm proxy URL |
    from prysmai import monitor

    assert str(monitor(openai.OpenAI(api_key="sk-user"), prysm_key=SEED_KEY).base_url) == HOSTED + "/"


def test_monitor_timeout_defaults_to_120_seconds() -> None:
    # | `timeout` | `float` | `120.0` | Request timeout in seconds |
    from prysmai import monitor

    assert monitor(openai.OpenAI(api_key="sk-user"), prysm_key=SEED_KEY).timeout == 120.0
    assert monitor(openai.OpenAI(api_key="sk-user"), prysm_key=SEED_KEY, timeout=30.0).timeout == 30.0


def test_monitor_sync_and_async_examples(proxy_env: RecordingServer) -> None:
    # monitored = monitor(openai.OpenAI(api_key="sk-..."), prysm_key="sk-prysm-...")
    # monitored = monitor(openai.AsyncOpenAI(api_key="sk-..."), prysm_key="sk-prysm-...")
    from prysmai import monitor

    assert isinstance(monitor(openai.OpenAI(api_key="sk-user"), prysm_key=SEED_KEY), openai.OpenAI)
    assert isinstance(monitor(openai.AsyncOpenAI(api_key="sk-user"), prysm_key=SEED_KEY), openai.AsyncOpenAI)


# --- PrysmClient(prysm_key, base_url, timeout) --------------------------------------------------


def test_prysm_client_openai_and_async_openai(proxy_server: RecordingServer) -> None:
    # prysm = PrysmClient(prysm_key="sk-prysm-...")
    # client = prysm.openai()
    # async_client = prysm.async_openai()
    from prysmai import PrysmClient

    prysm = PrysmClient(prysm_key=SEED_KEY, base_url=proxy_server.url)
    client = prysm.openai()
    async_client = prysm.async_openai()
    assert type(client) is openai.OpenAI and type(async_client) is openai.AsyncOpenAI
    assert client.api_key == SEED_KEY and async_client.api_key == SEED_KEY
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert last_headers(proxy_server)["authorization"] == f"Bearer {SEED_KEY}"


def test_prysm_client_defaults_and_attributes() -> None:
    # | `prysm_key` | `str` | `PRYSM_API_KEY` env var |  | `base_url` | `str` | `https://prysmai.io/api/v1` |
    # | `timeout` | `float` | `120.0` |
    from prysmai import PrysmClient

    pc = PrysmClient(prysm_key=SEED_KEY)
    assert pc.prysm_key == SEED_KEY
    assert pc.base_url == HOSTED
    assert pc.timeout == 120.0
    assert SEED_KEY not in repr(pc)
    assert str(pc.openai().base_url) == HOSTED + "/"


def test_prysm_client_custom_settings() -> None:
    # PrysmClient(prysm_key="sk-prysm-...", base_url="http://localhost:3000/api/v1")
    from prysmai import PrysmClient

    pc = PrysmClient(prysm_key=SEED_KEY, base_url="http://localhost:3000/api/v1", timeout=30.0)
    assert (pc.base_url, pc.timeout) == ("http://localhost:3000/api/v1", 30.0)
    assert str(pc.openai().base_url) == "http://localhost:3000/api/v1/"


def test_prysm_client_attributes_are_read_only() -> None:
    from prysmai import PrysmClient

    pc = PrysmClient(prysm_key=SEED_KEY)
    with pytest.raises(AttributeError):
        pc.prysm_key = "sk-prysm-other"  # type: ignore[misc]


# --- prysm_context ------------------------------------------------------------------------------


def test_prysm_context_example(proxy_env: RecordingServer) -> None:
    # prysm_context.set(user_id="user_123", session_id="sess_abc")
    # with prysm_context(user_id="user_456", metadata={"env": "production"}):
    #     response = monitored.chat.completions.create(...)   # This request is tagged with user_456
    # Outside the block, context reverts to user_123
    from prysmai import monitor, prysm_context

    monitored = monitor(openai.OpenAI(api_key="sk-user"))
    prysm_context.set(user_id="user_123", session_id="sess_abc")
    with prysm_context(user_id="user_456", metadata={"env": "production"}):
        monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    inside = last_headers(proxy_env)
    assert inside["x-prysm-user-id"] == "user_456"
    assert inside["x-prysm-session-id"] == "sess_abc"
    assert json.loads(inside["x-prysm-metadata"]) == {"env": "production"}
    monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert last_headers(proxy_env)["x-prysm-user-id"] == "user_123"
    assert prysm_context.get().user_id == "user_123"


def test_prysm_context_set_applies_to_all_subsequent_requests(proxy_env: RecordingServer) -> None:
    # | `prysm_context.set(user_id, session_id, metadata)` | Set global context for all subsequent requests |
    from prysmai import PrysmClient, prysm_context

    client = PrysmClient().openai()
    prysm_context.set(user_id="u1", session_id="s1", metadata={"env": "prod", "version": "1.2.0"})
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        headers = last_headers(proxy_env)
        assert (headers["x-prysm-user-id"], headers["x-prysm-session-id"]) == ("u1", "s1")
        assert json.loads(headers["x-prysm-metadata"]) == {"env": "prod", "version": "1.2.0"}


def test_prysm_context_get_returns_the_current_context_object() -> None:
    # | `prysm_context.get()` | Get the current context object |
    from prysmai import prysm_context

    empty = prysm_context.get()
    assert (empty.user_id, empty.session_id, empty.metadata) == (None, None, {})
    prysm_context.set(user_id="u1", session_id="s1", metadata={"env": "prod"})
    ctx = prysm_context.get()
    assert (ctx.user_id, ctx.session_id, ctx.metadata) == ("u1", "s1", {"env": "prod"})


def test_prysm_context_clear_resets_to_defaults() -> None:
    # | `prysm_context.clear()` | Reset context to defaults |
    from prysmai import prysm_context

    prysm_context.set(user_id="u1", session_id="s1", metadata={"a": 1})
    prysm_context.clear()
    ctx = prysm_context.get()
    assert (ctx.user_id, ctx.session_id, ctx.metadata) == (None, None, {})


def test_prysm_context_as_a_context_manager_nested_and_merged() -> None:
    # | `prysm_context(user_id, session_id, metadata)` | Use as a context manager for scoped metadata |
    # (the seed's tests: scoped, nested, metadata merged, restored on exit)
    from prysmai import prysm_context

    prysm_context.set(user_id="outer", metadata={"a": 1})
    with prysm_context(user_id="inner", session_id="sess", metadata={"b": 2}) as ctx:
        assert (ctx.user_id, ctx.session_id, ctx.metadata) == ("inner", "sess", {"a": 1, "b": 2})
        with prysm_context(metadata={"c": 3}):
            assert prysm_context.get().metadata == {"a": 1, "b": 2, "c": 3}
        assert prysm_context.get().metadata == {"a": 1, "b": 2}
    after = prysm_context.get()
    assert (after.user_id, after.session_id, after.metadata) == ("outer", None, {"a": 1})


def test_prysm_context_value_type_and_to_headers() -> None:
    # PrysmContext(user_id="u1", session_id="s1", metadata={"env": "test"}).to_headers()
    from prysmai.context import PrysmContext

    assert PrysmContext().to_headers() == {}
    headers = PrysmContext(user_id="u1", session_id="s1", metadata={"env": "test"}).to_headers()
    assert headers["X-Prysm-User-Id"] == "u1"
    assert headers["X-Prysm-Session-Id"] == "s1"
    assert json.loads(headers["X-Prysm-Metadata"]) == {"env": "test"}
    partial = PrysmContext(user_id="u1").to_headers()
    assert set(partial) == {"X-Prysm-User-Id"}


def test_prysm_context_get_to_headers() -> None:
    # prysm_context.get().to_headers()
    from prysmai import prysm_context

    prysm_context.set(user_id="u1")
    with prysm_context(session_id="s1"):
        assert prysm_context.get().to_headers() == {"X-Prysm-User-Id": "u1", "X-Prysm-Session-Id": "s1"}


# --- Environment Variables ----------------------------------------------------------------------


def test_environment_variables(proxy_env: RecordingServer) -> None:
    # | `PRYSM_API_KEY` | Your Prysm API key (used if `prysm_key` is not passed) |
    # | `PRYSM_BASE_URL` | Custom proxy URL (used if `base_url` is not passed) |
    # monitored = monitor(openai.OpenAI(api_key="sk-..."))   # No need to pass prysm_key — reads from env
    from prysmai import PrysmClient, monitor

    monitored = monitor(openai.OpenAI(api_key="sk-user"))
    monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert proxy_env.last.path == "/api/v1/chat/completions"
    assert last_headers(proxy_env)["authorization"] == f"Bearer {SEED_KEY}"
    pc = PrysmClient()
    assert (pc.prysm_key, pc.base_url) == (SEED_KEY, proxy_env.url)


# --- Streaming, Async Support, Self-Hosted Proxy ------------------------------------------------


def test_streaming(proxy_env: RecordingServer) -> None:
    # stream = monitored.chat.completions.create(..., stream=True)
    # for chunk in stream: if chunk.choices[0].delta.content: print(chunk.choices[0].delta.content, end="")
    from prysmai import monitor

    monitored = monitor(openai.OpenAI(api_key="sk-user"))
    stream = monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from proxy"


async def test_async_support(proxy_env: RecordingServer) -> None:
    # client = openai.AsyncOpenAI(api_key="sk-..."); monitored = monitor(client, prysm_key="sk-prysm-...")
    # response = await monitored.chat.completions.create(...)
    from prysmai import monitor

    monitored = monitor(openai.AsyncOpenAI(api_key="sk-user"), prysm_key=SEED_KEY)
    response = await monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert response.choices[0].message.content == "Hello from proxy"


def test_self_hosted_proxy(proxy_server: RecordingServer) -> None:
    # monitored = monitor(client, prysm_key="sk-prysm-...", base_url="http://localhost:3000/v1")
    from prysmai import monitor

    self_hosted = f"{proxy_server.origin}/v1"
    monitored = monitor(openai.OpenAI(api_key="sk-user"), prysm_key=SEED_KEY, base_url=self_hosted)
    monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert proxy_server.last.path == "/v1/chat/completions"


# --- Error Handling -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, openai.AuthenticationError), (429, openai.RateLimitError), (500, openai.APIError)],
)
def test_errors_are_openais(proxy_env: RecordingServer, status: int, error: type[Exception]) -> None:
    # except openai.AuthenticationError / openai.RateLimitError / openai.APIError
    # "Prysm-specific errors (invalid Prysm key, proxy unreachable) also surface as standard OpenAI exceptions"
    from prysmai import monitor

    monitored = monitor(openai.OpenAI(api_key="sk-user", max_retries=0))
    proxy_env.fail_next(status)
    with pytest.raises(error):
        monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]


def test_proxy_unreachable_is_an_openai_error() -> None:
    from prysmai import monitor

    monitored = monitor(
        openai.OpenAI(api_key="sk-user", max_retries=0), prysm_key=SEED_KEY, base_url="http://127.0.0.1:9/v1"
    )
    with pytest.raises(openai.APIError):
        monitored.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", ["monitor", "PrysmClient"])
@pytest.mark.parametrize("key", [None, ""], ids=["missing", "empty"])
def test_missing_key_error_text(make: str, key: str | None) -> None:
    # "Prysm API key is required. Pass prysm_key= or set PRYSM_API_KEY env var."
    from prysmai import PrysmClient, monitor

    with pytest.raises(ValueError, match="Prysm API key is required"):
        if make == "monitor":
            monitor(openai.OpenAI(api_key="sk-user"), prysm_key=key)
        else:
            PrysmClient(prysm_key=key)


@pytest.mark.parametrize("make", ["monitor", "PrysmClient"])
def test_invalid_key_format_error_text_never_echoes_the_key(make: str) -> None:
    # "Invalid Prysm API key format. Expected 'sk-prysm-...'"
    from prysmai import PrysmClient, monitor

    bad = "sk-openai-bad-secret-123"
    with pytest.raises(ValueError, match="Invalid Prysm API key format") as caught:
        if make == "monitor":
            monitor(openai.OpenAI(api_key="sk-user"), prysm_key=bad)
        else:
            PrysmClient(prysm_key=bad)
    assert "bad-secret" not in str(caught.value)
