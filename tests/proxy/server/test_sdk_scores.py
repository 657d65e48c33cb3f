"""The SDK's scores against the real proxy on loopback: ``last_trace_id()`` is the id of the trace
the proxy stored for this thread's or task's last call, and ``score()`` / ``ascore()`` attach a
score to it that the read API then shows."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import openai

import prysmai

from ..conftest import KEY, ProxyHandle

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {KEY}"}


def _scores(proxy: ProxyHandle, trace_id: str) -> list[dict[str, Any]]:
    trace = httpx.get(f"{proxy.base_url}/traces/{trace_id}", headers=AUTH).json()
    return list(trace["scores"])


def test_sync_calls_in_threads_each_score_their_own_trace(proxy: ProxyHandle) -> None:
    client = prysmai.monitor(openai.OpenAI(max_retries=0), prysm_key=KEY, base_url=proxy.base_url)
    got: dict[str, str | None] = {}

    def user(name: str) -> None:
        with prysmai.prysm_context(user_id=name):
            client.chat.completions.create(**CHAT)
        trace_id = prysmai.last_trace_id()
        got[name] = trace_id
        prysmai.score(trace_id, "thumbs", name != "u0", comment=f"from {name}", prysm_key=KEY, base_url=proxy.base_url)

    threads = [threading.Thread(target=user, args=(f"u{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {t["user_id"]: t["id"] for t in proxy.traces()}
    assert got == stored
    for name, trace_id in stored.items():
        (score,) = _scores(proxy, trace_id)
        assert (score["name"], score["value"], score["comment"]) == ("thumbs", name != "u0", f"from {name}")
        assert score["source"] == "api" and score["key_id"].startswith("key_")


def test_async_tasks_and_streams_score_their_own_trace(proxy: ProxyHandle) -> None:
    async def main() -> dict[str, str | None]:
        client = prysmai.monitor(openai.AsyncOpenAI(max_retries=0), prysm_key=KEY, base_url=proxy.base_url)

        async def one(name: str, stream: bool) -> tuple[str, str | None]:
            with prysmai.prysm_context(user_id=name):
                if stream:
                    async for _ in await client.chat.completions.create(**CHAT, stream=True):
                        await asyncio.sleep(0)  # the other tasks run between chunks
                else:
                    await client.chat.completions.create(**CHAT)
            trace_id = prysmai.last_trace_id()
            await prysmai.ascore(trace_id, "quality", 0.5 if stream else 1, prysm_key=KEY, base_url=proxy.base_url)
            return name, trace_id

        return dict(await asyncio.gather(*(one(f"t{n}", n % 2 == 1) for n in range(4))))

    got = asyncio.run(main())
    stored = {t["user_id"]: t for t in proxy.traces()}
    assert got == {name: t["id"] for name, t in stored.items()}
    for trace in stored.values():
        assert [s["value"] for s in _scores(proxy, trace["id"])] == [0.5 if trace["stream"] else 1]


def test_instrumented_default_client_gives_the_trace_id_too(proxy: ProxyHandle) -> None:
    prysmai.instrument(prysm_key=KEY, base_url=proxy.base_url)
    try:
        openai.OpenAI(max_retries=0).chat.completions.create(**CHAT)
        trace_id = prysmai.last_trace_id()
    finally:
        prysmai.uninstrument()
    assert trace_id == proxy.traces()[0]["id"]
    made = prysmai.score(trace_id, "tone", "friendly", prysm_key=KEY, base_url=proxy.base_url)
    assert _scores(proxy, trace_id)[0]["id"] == made["id"]
