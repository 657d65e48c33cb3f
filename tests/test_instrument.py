"""``instrument()`` / ``uninstrument()``: which clients are redirected, and that undo is exact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx, loopback_http_client, prysm_headers

import prysmai

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _call(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def _own(cls: type, name: str = "_prepare_options") -> object:
    return cls.__dict__.get(name, "<inherited>")


def test_pre_existing_clients_are_redirected(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    _call(default_client)
    assert len(openai_server.requests) == 1  # before: straight to "OpenAI"
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    assert prysmai.is_instrumented()
    with prysmai.prysm_context(user_id="early-client"):
        _call(default_client)
    assert len(openai_server.requests) == 1
    assert proxy_server.last.path == "/api/v1/chat/completions"
    assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "early-client"}


def test_clients_created_after_are_redirected_with_explicit_default_url(
    proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    implicit = openai.OpenAI(http_client=loopback_http_client(openai_server), max_retries=0)
    explicit = openai.OpenAI(
        base_url="https://api.openai.com/v1", http_client=loopback_http_client(openai_server), max_retries=0
    )
    _call(implicit)
    _call(explicit)
    assert len(proxy_server.requests) == 2
    assert openai_server.requests == []


def test_custom_base_urls_are_left_alone_unless_included(
    proxy_server: RecordingServer, openai_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    prysmai.prysm_context.set(user_id="u")
    gateway = openai.OpenAI(base_url=openai_server.url, max_retries=0)
    _call(gateway)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    from_env = openai.OpenAI(max_retries=0)
    env_honoured = str(from_env.base_url).rstrip("/") == openai_server.url  # not by openai 1.0.0
    if env_honoured:
        _call(from_env)
    assert proxy_server.requests == []
    assert len(openai_server.requests) == (2 if env_honoured else 1)
    for recorded in openai_server.requests:
        assert recorded.header("authorization") == "Bearer sk-env-openai-key"
        assert prysm_headers(recorded) == {}

    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url, include_base_urls=[openai_server.url])
    _call(gateway)
    assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "u"}


def test_azure_clients_are_left_alone(proxy_server: RecordingServer, openai_server: RecordingServer) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url, include_base_urls=[openai_server.url])
    prysmai.prysm_context.set(user_id="u")
    azure = openai.AzureOpenAI(
        api_key="azure-key", api_version="2024-06-01", azure_endpoint=openai_server.origin, max_retries=0
    )
    _call(azure)
    assert proxy_server.requests == []
    assert "/openai/deployments/gpt-4o-mini/chat/completions" in openai_server.last.path
    assert prysm_headers(openai_server.last) == {}


def test_swapped_http_client_is_still_redirected(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    default_client._client = loopback_http_client(openai_server)  # as some libraries do after construction
    _call(default_client)
    assert len(proxy_server.requests) == 1
    assert openai_server.requests == []


def test_base_url_changed_after_construction_is_honoured(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    _call(default_client)
    default_client.base_url = openai_server.url  # type: ignore[assignment]
    if str(default_client.base_url).rstrip("/") != openai_server.url:
        pytest.skip("this openai release's base_url setter does not change the client's base URL")
    _call(default_client)
    assert len(proxy_server.requests) == 1
    assert len(openai_server.requests) == 1
    assert prysm_headers(openai_server.last) == {}


def test_module_level_client_is_redirected(
    proxy_server: RecordingServer, openai_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai, "api_key", "sk-module-key")
    monkeypatch.setattr(openai, "http_client", loopback_http_client(openai_server))
    monkeypatch.setattr(openai, "max_retries", 0)
    monkeypatch.setattr(openai, "_client", None)  # the lazily built module client
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    openai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert openai_server.requests == []


def test_idempotent_and_thread_safe(default_client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    import wrapt

    original_sync, original_async = _own(openai.OpenAI), _own(openai.AsyncOpenAI)
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)

    for cls, original in ((openai.OpenAI, original_sync), (openai.AsyncOpenAI, original_async)):
        wrapper = cls.__dict__["_prepare_options"]
        assert isinstance(wrapper, wrapt.FunctionWrapper)
        inner = wrapper.__wrapped__
        assert not isinstance(inner, wrapt.FunctionWrapper), "wrapped twice"
        if original != "<inherited>":
            assert inner is original
    prysmai.prysm_context.set(user_id="once", metadata={"a": 1})
    _call(default_client)
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "once", "x-prysm-metadata": '{"a":1}'}


def test_uninstrument_restores_by_identity_and_on_the_wire(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    before = {cls: _own(cls) for cls in (openai.OpenAI, openai.AsyncOpenAI)}
    monitored = prysmai.monitor(openai.OpenAI(max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    # Cached bound methods (with_raw_response is a cached property) outlive uninstrument().
    raw_create = default_client.chat.completions.with_raw_response.create
    assert all(_own(cls) is not original for cls, original in before.items())
    prysmai.prysm_context.set(user_id="u")

    prysmai.uninstrument()
    assert not prysmai.is_instrumented()
    for cls, original in before.items():
        assert _own(cls) is original  # the very object, or absent again where it was inherited

    _call(default_client)
    raw_create(model="gpt-4o-mini", messages=MESSAGES)
    assert proxy_server.requests == []
    assert len(openai_server.requests) == 2
    for recorded in openai_server.requests:
        assert recorded.header("authorization") == "Bearer sk-user-openai-key"
        assert prysm_headers(recorded) == {}

    # monitor()'s clients are not instrument()'s to undo.
    _call(monitored)
    assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "u"}
    prysmai.uninstrument()  # a second call is harmless
    assert _own(openai.OpenAI) is before[openai.OpenAI]


def test_uninstrument_leaves_a_wrapper_put_on_top(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    import wrapt

    before = _own(openai.OpenAI)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    calls: list[str] = []

    def other_tool(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("other")
        return wrapped(*args, **kwargs)

    ours = openai.OpenAI.__dict__["_prepare_options"]
    theirs = wrapt.FunctionWrapper(ours, other_tool)
    openai.OpenAI._prepare_options = theirs  # type: ignore[method-assign]
    try:
        prysmai.uninstrument()
        assert openai.OpenAI.__dict__["_prepare_options"] is theirs  # not clobbered
        _call(default_client)
        assert calls == ["other"]
        assert proxy_server.requests == []  # ours, inside theirs, is switched off
        assert openai_server.last.header("authorization") == "Bearer sk-user-openai-key"

        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)  # and can come back on top
        _call(default_client)
        assert len(proxy_server.requests) == 1
    finally:
        prysmai.uninstrument()
        if before == "<inherited>":
            del openai.OpenAI._prepare_options
        else:
            openai.OpenAI._prepare_options = before  # type: ignore[method-assign]


def test_monitor_and_instrument_together_tag_once(proxy_server: RecordingServer) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    monitored = prysmai.monitor(
        openai.OpenAI(http_client=default_httpx.Client(), max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url
    )
    with prysmai.prysm_context(user_id="u", session_id="s"):
        _call(monitored)
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "u", "x-prysm-session-id": "s"}


def test_redirects_the_async_client(proxy_server: RecordingServer, openai_server: RecordingServer) -> None:
    import asyncio

    async def main() -> None:
        client = openai.AsyncOpenAI(http_client=loopback_http_client(openai_server, is_async=True), max_retries=0)
        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
        await client.chat.completions.create(model="m", messages=MESSAGES)
        prysmai.uninstrument()
        await client.chat.completions.create(model="m", messages=MESSAGES)
        await client.close()

    asyncio.run(main())
    assert len(proxy_server.requests) == 1
    assert len(openai_server.requests) == 1


def test_upstream_key_only_when_asked(default_client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    _call(default_client)
    assert "x-prysm-upstream-key" not in proxy_server.last.headers
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url, upstream_api_key="sk-provider-key")
    _call(default_client)
    assert proxy_server.last.header("x-prysm-upstream-key") == "sk-provider-key"


def test_instrument_timeout_applies_when_the_call_sets_none(
    default_client: openai.OpenAI, proxy_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url, timeout=0.2)
    proxy_server.delay = 1.0
    with pytest.raises(openai.APITimeoutError):
        _call(default_client)


def test_before_import_without_importing_openai(proxy_server: RecordingServer, openai_server: RecordingServer) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import prysmai
        prysmai.instrument(
            prysm_key={PRYSM_KEY!r}, base_url={proxy_server.url!r}, include_base_urls=[{openai_server.url!r}]
        )
        assert "openai" not in sys.modules, "instrument() imported openai"
        assert "wrapt" not in sys.modules, "instrument() imported wrapt before openai"
        import openai
        client = openai.OpenAI(api_key="sk-user", base_url={openai_server.url!r}, max_retries=0)
        with prysmai.prysm_context(user_id="sub"):
            client.chat.completions.create(model="m", messages=[{{"role": "user", "content": "x"}}])
        import importlib.resources
        assert importlib.resources.files("openai").joinpath("py.typed").is_file()
        print(type(openai.OpenAI.__dict__["_prepare_options"]).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FunctionWrapper"
    assert openai_server.requests == []
    assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "sub"}


def test_hook_error_is_logged_once_and_the_request_proceeds(
    default_client: openai.OpenAI,
    openai_server: RecordingServer,
    proxy_server: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prysmai import _hooks, _log

    def broken() -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(_hooks, "current_headers", broken)
    monkeypatch.setattr(_log, "_seen", set())
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    with caplog.at_level("WARNING", logger="prysmai"):
        _call(default_client)
        _call(default_client)
    assert len(openai_server.requests) == 2  # proceeded, unobserved, with the user's own key
    assert openai_server.last.header("authorization") == "Bearer sk-user-openai-key"
    records = [r for r in caplog.records if r.name == "prysmai"]
    assert len(records) == 1
    assert PRYSM_KEY not in caplog.text
