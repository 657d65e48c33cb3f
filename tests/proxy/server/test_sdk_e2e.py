"""The SDK (monitor, PrysmClient, instrument, PRYSM_AUTO) -> the real proxy -> a fake upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import openai

import prysmai

from ..conftest import KEY, FakeUpstream, ProxyHandle

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_instrument_redirects_default_clients_sync_and_async(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    import asyncio

    prysmai.instrument(prysm_key=KEY, base_url=proxy.base_url)
    plain = openai.OpenAI(max_retries=0)  # OpenAI's default base URL: redirected at request time
    assert plain.chat.completions.create(**CHAT).choices[0].message.content == "Hello there!"
    with prysmai.prysm_context(user_id="alice", session_id="s1", metadata={"feature": "search"}):
        text = "".join(
            c.choices[0].delta.content or "" for c in plain.chat.completions.create(**CHAT, stream=True) if c.choices
        )
    assert text == "tok0 tok1 tok2 "

    async def call() -> str:
        async with openai.AsyncOpenAI(max_retries=0) as client:
            with prysmai.prysm_context(user_id="bob"):
                r = await client.chat.completions.create(**CHAT)
            return r.choices[0].message.content or ""

    assert asyncio.run(call()) == "Hello there!"
    first, second, third = proxy.traces()
    assert (first["user_id"], first["stream"]) == (None, False)
    assert (second["user_id"], second["session_id"], second["metadata"], second["stream"]) == (
        "alice",
        "s1",
        {"feature": "search"},
        True,
    )
    assert third["user_id"] == "bob"
    # the proxy used its stored credentials, not the app's OPENAI_API_KEY
    assert fake.last().headers["authorization"] == "Bearer sk-stored-upstream-credential"


async def test_prysm_client_async_and_upstream_key(proxy: ProxyHandle, fake: FakeUpstream) -> None:
    pc = prysmai.PrysmClient(prysm_key=KEY, base_url=proxy.base_url, upstream_api_key="sk-from-sdk")
    async with pc.async_openai(max_retries=0) as client:
        r = await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert r.data[0].embedding == [0.1, 0.2, 0.3]
    assert fake.last().headers["authorization"] == "Bearer sk-from-sdk"
    sync = pc.openai(max_retries=0)
    assert sync.models.list().data[0].id == "gpt-4o-mini"
    traces = proxy.traces()
    assert [t["endpoint"] for t in traces] == ["embeddings", "models"]
    assert "sk-from-sdk" not in json.dumps(traces)


def test_prysm_auto_in_a_child_process(proxy: ProxyHandle) -> None:
    code = (
        "import openai\n"
        "c = openai.OpenAI(max_retries=0)\n"
        "r = c.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(r.choices[0].message.content)\n"
    )
    env = {**os.environ, "PRYSM_API_KEY": KEY, "PRYSM_BASE_URL": proxy.base_url, "OPENAI_API_KEY": "sk-app"}
    env.pop("PRYSM_AUTO", None)
    out = subprocess.run(
        [sys.executable, "-m", "prysmai._cli", "run", "--", sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Hello there!"
    (trace,) = proxy.traces()
    assert trace["status"] == "success" and trace["model"] == "gpt-4o-mini"
