"""``prysmai.last_trace_id()`` and ``prysmai.score()`` on every openai lane: the loopback "proxy"
of conftest answers each request with ``X-Prysm-Trace-Id`` as the real one does (the real proxy
is in tests/proxy/server/test_sdk_scores.py); fail-open's direct calls leave ``None``."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx, loopback_http_client
from test_fallback import BrokenProxy

import prysmai

MESSAGES = [{"role": "user", "content": "hi"}]


def _monitored(proxy: RecordingServer) -> openai.OpenAI:
    return prysmai.monitor(openai.OpenAI(api_key="sk-user", max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy.url)


def test_last_trace_id_is_the_proxys_answer_and_score_posts_to_it(
    proxy_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert prysmai.last_trace_id() is None
    client = _monitored(proxy_server)
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    first = prysmai.last_trace_id()
    assert first == proxy_server.last.trace_id and first
    # A stream's id is known once its headers are in.
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert prysmai.last_trace_id() == proxy_server.last.trace_id != first
    list(stream)
    # The key and the URL resolved as monitor() resolves them: here from the environment.
    monkeypatch.setenv("PRYSM_API_KEY", PRYSM_KEY)
    monkeypatch.setenv("PRYSM_BASE_URL", proxy_server.url)
    made = prysmai.score(prysmai.last_trace_id(), "thumbs", True, comment="nice")
    assert made["trace_id"] == proxy_server.requests[1].trace_id
    posted = proxy_server.last
    assert posted.path == f"/api/v1/traces/{proxy_server.requests[1].trace_id}/scores"
    assert posted.json() == {"name": "thumbs", "value": True, "comment": "nice"}
    assert posted.header("authorization") == f"Bearer {PRYSM_KEY}"


def test_each_thread_and_task_sees_its_own_last_call(proxy_server: RecordingServer) -> None:
    client = _monitored(proxy_server)
    seen: dict[int, tuple[str | None, str | None]] = {}

    def worker(n: int) -> None:
        before = prysmai.last_trace_id()
        client.chat.completions.create(model="m", messages=MESSAGES, user=str(n))  # type: ignore[arg-type]
        seen[n] = (before, prysmai.last_trace_id())

    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    mine = prysmai.last_trace_id()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_user = {r.json()["user"]: r.trace_id for r in proxy_server.requests if r.json().get("user")}
    assert {n: after for n, (_, after) in seen.items()} == {n: by_user[str(n)] for n in range(6)}
    assert all(before is None for before, _ in seen.values())  # a new thread starts with none
    assert prysmai.last_trace_id() == mine  # the other threads' calls did not change this one's

    async def tasks() -> list[tuple[str, str | None]]:
        aclient = prysmai.monitor(
            openai.AsyncOpenAI(api_key="sk-user", max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url
        )

        async def one(n: int) -> tuple[str, str | None]:
            await aclient.chat.completions.create(model="m", messages=MESSAGES, user=f"task{n}")  # type: ignore[arg-type]
            await asyncio.sleep(0.01)  # the others run meanwhile
            return f"task{n}", prysmai.last_trace_id()

        return await asyncio.gather(*(one(n) for n in range(5)))

    results = asyncio.run(tasks())
    by_user = {r.json()["user"]: r.trace_id for r in proxy_server.requests if r.json().get("user")}
    assert all(got == by_user[user] for user, got in results)


def test_instrumented_clients_record_it_too_and_uninstrument_stops(
    proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url, fallback=False)
    client = openai.OpenAI(api_key="sk-user", max_retries=0, http_client=loopback_http_client(openai_server))
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert prysmai.last_trace_id() == proxy_server.last.trace_id
    prysmai.uninstrument()
    assert "_process_response" not in openai.OpenAI.__dict__  # the inherited method is back


def test_fail_open_leaves_none_and_score_of_none_is_a_clear_error(
    openai_server: RecordingServer, proxy_server: RecordingServer
) -> None:
    client = _monitored(proxy_server)
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert prysmai.last_trace_id() is not None
    broken = BrokenProxy()
    try:
        source = openai.OpenAI(
            api_key="sk-user", base_url=openai_server.url, http_client=default_httpx.Client(), max_retries=0
        )
        direct = prysmai.monitor(source, prysm_key=PRYSM_KEY, base_url=broken.url, fallback=True)
        direct.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    finally:
        broken.stop()
    assert openai_server.requests  # it went straight to the provider
    assert prysmai.last_trace_id() is None
    with pytest.raises(ValueError, match="trace_id is None"):
        prysmai.score(prysmai.last_trace_id(), "thumbs", True, base_url=proxy_server.url)
    with pytest.raises(ValueError, match="trace_id is None"):
        asyncio.run(prysmai.ascore(None, "thumbs", True, base_url=proxy_server.url))


def test_a_call_that_raised_leaves_none_not_the_previous_calls_id(proxy_server: RecordingServer) -> None:
    client = _monitored(proxy_server)
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert prysmai.last_trace_id() is not None
    proxy_server.fail_next(400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert prysmai.last_trace_id() is None  # scoring would otherwise judge the wrong answer


def test_a_refused_score_raises_score_error_with_the_proxys_reason(proxy_server: RecordingServer) -> None:
    proxy_server.fail_next(400, message="name must be 1 to 64 characters")
    with pytest.raises(prysmai.ScoreError, match="name must be 1 to 64") as info:
        prysmai.score("abc", "<bad>", 1, base_url=proxy_server.url, prysm_key=PRYSM_KEY)
    assert info.value.status == 400
    with pytest.raises(prysmai.ScoreError, match="could not send"):
        prysmai.score("abc", "ok", 1, base_url="http://127.0.0.1:9/api/v1", prysm_key=PRYSM_KEY)
    made = asyncio.run(prysmai.ascore("abc", "ok", 0.5, base_url=proxy_server.url, prysm_key=PRYSM_KEY))
    assert made["value"] == 0.5 and proxy_server.last.path == "/api/v1/traces/abc/scores"
