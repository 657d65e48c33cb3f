"""``monitor()`` and ``PrysmClient``: a routed copy that keeps the caller's settings."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx, loopback_http_client, prysm_headers

import prysmai

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _call(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_returns_same_class_and_leaves_the_original_alone(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    monitored = prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    assert type(monitored) is openai.OpenAI
    assert monitored is not default_client
    assert str(monitored.base_url) == proxy_server.url + "/"
    assert str(default_client.base_url) == "https://api.openai.com/v1/"
    assert default_client.api_key == "sk-user-openai-key"
    prysmai.prysm_context.set(user_id="u")

    _call(monitored)
    _call(default_client)
    assert len(proxy_server.requests) == 1
    assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "u"}
    assert len(openai_server.requests) == 1  # the original still talks to its own target, untagged
    assert openai_server.last.header("authorization") == "Bearer sk-user-openai-key"
    assert prysm_headers(openai_server.last) == {}


HAS_PROJECT = "project" in inspect.signature(openai.OpenAI.__init__).parameters  # introduced in openai 1.16


def test_keeps_the_callers_settings(proxy_server: RecordingServer) -> None:
    http_client = default_httpx.Client()
    original = openai.OpenAI(
        api_key="sk-user",
        organization="org-1",
        max_retries=1,
        default_headers={"X-Team": "search"},
        default_query={"tenant": "t1"},
        http_client=http_client,
        **({"project": "proj-1"} if HAS_PROJECT else {}),
    )
    monitored = prysmai.monitor(original, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    assert monitored._client is http_client  # its proxies, TLS and pool
    assert monitored.max_retries == 1
    assert monitored.organization == "org-1"
    proxy_server.fail_next(500, retry_after_ms="1")
    _call(monitored)
    assert len(proxy_server.requests) == 2  # max_retries=1 kept
    recorded = proxy_server.last
    assert recorded.header("x-team") == "search"
    assert recorded.header("openai-organization") == "org-1"
    if HAS_PROJECT:
        assert monitored.project == "proj-1"
        assert recorded.header("openai-project") == "proj-1"
    assert "tenant=t1" in recorded.path


def test_timeout_defaults_to_120_seconds_and_can_be_set(default_client: openai.OpenAI) -> None:
    assert prysmai.monitor(default_client, prysm_key=PRYSM_KEY).timeout == 120.0
    assert prysmai.monitor(default_client, prysm_key=PRYSM_KEY, timeout=7).timeout == 7.0


def test_monitoring_twice_does_not_wrap_twice(default_client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    once = prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    assert prysmai.monitor(once, prysm_key=PRYSM_KEY, base_url=proxy_server.url) is once
    other_key = "sk-prysm-other-key"
    twice = prysmai.monitor(once, prysm_key=other_key, base_url=proxy_server.url)
    with prysmai.prysm_context(user_id="u", metadata={"m": 1}):
        _call(twice)
    assert proxy_server.last.header("authorization") == f"Bearer {other_key}"
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "u", "x-prysm-metadata": '{"m":1}'}


def test_copy_retargeted_elsewhere_is_no_longer_tagged(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    monitored = prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    elsewhere = monitored.copy(base_url=openai_server.url, api_key="sk-user")
    with prysmai.prysm_context(user_id="u"):
        _call(elsewhere)
    assert proxy_server.requests == []
    assert prysm_headers(openai_server.last) == {}


def test_upstream_key_is_sent_only_when_given(default_client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    _call(prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url))
    assert "x-prysm-upstream-key" not in proxy_server.last.headers
    _call(prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url, upstream_api_key="sk-up"))
    assert proxy_server.last.header("x-prysm-upstream-key") == "sk-up"
    _call(PrysmClient_openai(proxy_server, upstream_api_key="sk-up-2"))
    assert proxy_server.last.header("x-prysm-upstream-key") == "sk-up-2"


def PrysmClient_openai(proxy_server: RecordingServer, **kwargs: Any) -> openai.OpenAI:
    return prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url=proxy_server.url, **kwargs).openai(max_retries=0)


def test_explicit_per_call_headers_win_and_are_not_mutated(
    default_client: openai.OpenAI, proxy_server: RecordingServer
) -> None:
    monitored = prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    extra = {"x-prysm-user-id": "explicit", "X-Other": "1"}
    with prysmai.prysm_context(user_id="context", session_id="s"):
        monitored.chat.completions.create(model="m", messages=MESSAGES, extra_headers=extra)
    assert extra == {"x-prysm-user-id": "explicit", "X-Other": "1"}
    assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "explicit", "x-prysm-session-id": "s"}


class TestPrysmClient:
    def test_sync_and_async_clients(self, proxy_server: RecordingServer) -> None:
        prysm = prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url=proxy_server.url + "/")
        assert prysm.base_url == proxy_server.url
        sync_client = prysm.openai(max_retries=4, default_headers={"X-App": "a"})
        async_client = prysm.async_openai()
        assert type(sync_client) is openai.OpenAI
        assert type(async_client) is openai.AsyncOpenAI
        assert sync_client.max_retries == 4
        assert sync_client.timeout == 120.0

        with prysmai.prysm_context(session_id="s-sync"):
            _call(sync_client)
        assert proxy_server.last.header("x-app") == "a"
        assert prysm_headers(proxy_server.last) == {"x-prysm-session-id": "s-sync"}

        async def call() -> None:
            async with prysmai.prysm_context(session_id="s-async"):
                await async_client.chat.completions.create(model="m", messages=MESSAGES)

        asyncio.run(call())
        assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"
        assert prysm_headers(proxy_server.last) == {"x-prysm-session-id": "s-async"}

    def test_env_settings(self, proxy_server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PRYSM_API_KEY", PRYSM_KEY)
        monkeypatch.setenv("PRYSM_BASE_URL", proxy_server.url)
        client = prysmai.PrysmClient().openai(max_retries=0)
        _call(client)
        assert proxy_server.last.header("authorization") == f"Bearer {PRYSM_KEY}"

    def test_monitored_async_copy_stays_tagged(self, proxy_server: RecordingServer) -> None:
        base = openai.AsyncOpenAI(http_client=default_httpx.AsyncClient(), max_retries=0)
        monitored = prysmai.monitor(base, prysm_key=PRYSM_KEY, base_url=proxy_server.url)

        async def call() -> None:
            with prysmai.prysm_context(user_id="copy"):
                await monitored.with_options(max_retries=0).chat.completions.create(model="m", messages=MESSAGES)

        asyncio.run(call())
        assert prysm_headers(proxy_server.last) == {"x-prysm-user-id": "copy"}


def test_monitor_does_not_patch_any_class(openai_server: RecordingServer, proxy_server: RecordingServer) -> None:
    before = dict(vars(openai.OpenAI))
    base = openai.OpenAI(http_client=loopback_http_client(openai_server), max_retries=0)
    prysmai.monitor(base, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    after = dict(vars(openai.OpenAI))
    assert before.keys() == after.keys()
    assert all(before[name] is after[name] for name in before)


def test_base_url_changed_after_monitor_is_honoured(
    default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    monitored = prysmai.monitor(default_client, prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    _call(monitored)
    monitored.base_url = openai_server.url  # type: ignore[assignment]
    if str(monitored.base_url).rstrip("/") != openai_server.url:
        pytest.skip("this openai release's base_url setter does not change the client's base URL")
    _call(monitored)
    assert len(proxy_server.requests) == 1
    assert openai_server.last.path == "/v1/chat/completions"


@pytest.mark.parametrize("derive", ["monitor", "with_options"])
def test_monitored_client_outlives_the_temporary_it_was_made_from(derive: str, proxy_server: RecordingServer) -> None:
    """``monitor(openai.OpenAI())``: openai 1.0.x closes a client's own http client when the client is
    collected, and copies share it; the monitored client must keep working after the original is gone."""
    import gc

    monitored = prysmai.monitor(openai.OpenAI(max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    if derive == "with_options":
        monitored = monitored.with_options(timeout=30.0)
    gc.collect()
    _call(monitored)
    gc.collect()
    _call(monitored)
    assert len(proxy_server.requests) == 2
