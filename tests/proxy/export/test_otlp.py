"""OTLP export through a real ``prysmai proxy`` to a loopback OTLP/HTTP receiver that decodes the
protobuf (tests/proxy/otlp.py): every attribute of chat, streamed, embeddings, Responses API,
error and tool-call traces; a collector down mid-load; a proxy stopped and killed with spans
waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from ..conftest import KEY, PRYSMAI, FakeUpstream, Proxy, cli_env
from ..otlp import Receiver

UPSTREAM_ENV = {"OPENAI_API_KEY": "sk-upstream-credential-0000"}


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def _call(base: str, path: str, body: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{base}/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _health(base: str) -> Any:
    request = urllib.request.Request(base + "/health", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _proxy(fake: FakeUpstream, db: str, *args: str, **env: str) -> Proxy:
    return Proxy("--db", db, "--upstream", fake.url, "--key", KEY, *args, **UPSTREAM_ENV, **env)  # type: ignore[attr-defined]


def test_every_trace_becomes_a_span_on_the_genai_conventions(
    fake: FakeUpstream, receiver: Receiver, tmp_path: Any
) -> None:
    proxy = _proxy(
        fake,
        str(tmp_path / "t.db"),
        "--otlp-endpoint",
        receiver.url,
        "--otlp-content",
        "--redact",
        "secrets,email",
        OTEL_SERVICE_NAME="shop-gateway",
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=acme",
    ).start()
    ids: dict[str, str] = {}
    try:
        tools = [
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
            }
        ]
        chat = {
            "model": "gpt-4o-mini",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 64,
            "stop": ["END"],
            "seed": 7,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "mail ada@example.com"},
            ],
        }
        meta = {
            "X-Prysm-User-Id": "user-42",
            "X-Prysm-Session-Id": "sess-9",
            "X-Prysm-Metadata": '{"team": "search", "n": 3}',
        }
        _, h, _ = _call(proxy.base, "chat/completions", chat, **meta)
        ids["chat"] = h["x-prysm-trace-id"]
        _, h, _ = _call(proxy.base, "chat/completions", {**chat, "stream": True}, **{"x-fake-first-delay-ms": "50"})
        ids["stream"] = h["x-prysm-trace-id"]
        _, h, _ = _call(proxy.base, "embeddings", {"model": "text-embedding-3-small", "input": "hi"})
        ids["embeddings"] = h["x-prysm-trace-id"]
        _, h, _ = _call(
            proxy.base,
            "responses",
            {"model": "gpt-4o", "instructions": "Be kind.", "input": "Hello", "max_output_tokens": 50},
        )
        ids["responses"] = h["x-prysm-trace-id"]
        status, h, _ = _call(proxy.base, "chat/completions", chat, **{"x-fake-status": "429"})
        assert status == 429
        ids["error"] = h["x-prysm-trace-id"]
        tool_chat = {
            "model": "gpt-4o-mini",
            "tools": tools,
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_0",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
            ],
        }
        _, h, _ = _call(proxy.base, "chat/completions", tool_chat, **{"x-fake-tool-call": "1"})
        ids["tools"] = h["x-prysm-trace-id"]
        got = receiver.wait_for(set(ids.values()), timeout=30)
    finally:
        proxy.stop()
    spans = {name: got[trace_id] for name, trace_id in ids.items()}
    assert all(len(s) == 1 for s in spans.values()), "one span per trace"
    s = {name: v[0] for name, v in spans.items()}
    port = int(fake.url.split(":")[2].split("/")[0])  # type: ignore[attr-defined]
    common = {
        "gen_ai.provider.name": "openai",
        "server.address": "127.0.0.1",
        "server.port": port,
        "prysm.project": "default",
        "prysm.provider": "upstream",
    }
    for name, span in s.items():
        a = span["attributes"]
        assert span["kind"] == 3, name  # SPAN_KIND_CLIENT
        assert span["trace_id"] == ids[name] and span["parent"] == ""
        assert span["resource"]["service.name"] == "shop-gateway"
        assert span["scope"][0] == "prysmai.proxy"
        assert {k: a.get(k) for k in common} == common, name
        assert a["prysm.key_id"].startswith("key_")
        assert "gen_ai.system" not in a  # the deprecated name
        assert span["end"] >= span["start"] > 0
    assert all(h.get("x-tenant") == "acme" for h in receiver.headers)

    chat_a = s["chat"]["attributes"]
    assert s["chat"]["name"] == "chat gpt-4o-mini"
    assert {
        k: chat_a[k]
        for k in (
            "gen_ai.operation.name",
            "openai.api.type",
            "gen_ai.request.model",
            "gen_ai.response.model",
            "gen_ai.response.id",
            "gen_ai.response.finish_reasons",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.request.max_tokens",
            "gen_ai.request.temperature",
            "gen_ai.request.top_p",
            "gen_ai.request.stop_sequences",
            "gen_ai.request.seed",
            "gen_ai.conversation.id",
            "user.id",
            "http.response.status_code",
            "prysm.metadata.team",
            "prysm.metadata.n",
            "prysm.status",
        )
    } == {
        "gen_ai.operation.name": "chat",
        "openai.api.type": "chat_completions",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.response.id": "chatcmpl-fake",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.stop_sequences": ["END"],
        "gen_ai.request.seed": 7,
        "gen_ai.conversation.id": "sess-9",
        "user.id": "user-42",
        "http.response.status_code": 200,
        "prysm.metadata.team": "search",
        "prysm.metadata.n": 3,
        "prysm.status": "success",
    }
    assert chat_a["prysm.cost_usd"] > 0 and "price table" in chat_a["prysm.price_source"]
    assert "gen_ai.request.stream" not in chat_a and "gen_ai.response.time_to_first_chunk" not in chat_a
    assert (s["chat"]["end"] - s["chat"]["start"]) > 0
    # Content (opt-in), as stored: redacted.
    assert json.loads(chat_a["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "mail [redacted:email]"}]},
    ]
    assert json.loads(chat_a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello there!"}], "finish_reason": "stop"}
    ]
    assert "ada@example.com" not in json.dumps(receiver.spans)

    stream_a = s["stream"]["attributes"]
    assert stream_a["gen_ai.request.stream"] is True
    assert 0.05 <= stream_a["gen_ai.response.time_to_first_chunk"] < 10
    assert stream_a["gen_ai.usage.output_tokens"] == 3 and stream_a["gen_ai.response.finish_reasons"] == ["stop"]
    assert json.loads(stream_a["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "text", "content": "tok0 tok1 tok2 "}
    ]

    emb = s["embeddings"]
    assert emb["name"] == "embeddings text-embedding-3-small"
    assert emb["attributes"]["gen_ai.operation.name"] == "embeddings"
    assert emb["attributes"]["gen_ai.usage.input_tokens"] == 5 and "openai.api.type" not in emb["attributes"]

    resp = s["responses"]["attributes"]
    assert s["responses"]["name"] == "chat gpt-4o"
    assert resp["openai.api.type"] == "responses" and resp["gen_ai.response.id"] == "resp_1"
    assert resp["gen_ai.usage.input_tokens"] == 7 and resp["gen_ai.usage.output_tokens"] == 2
    assert resp["gen_ai.request.max_tokens"] == 50 and resp["gen_ai.response.finish_reasons"] == ["stop"]
    assert json.loads(resp["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be kind."}]
    assert json.loads(resp["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Hello"}]}
    ]
    assert json.loads(resp["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hi you"}], "finish_reason": "stop"}
    ]

    err = s["error"]
    assert err["status"] == (2, "planned 429")  # STATUS_CODE_ERROR, the provider's message
    assert err["attributes"]["error.type"] == "fake" and err["attributes"]["http.response.status_code"] == 429
    assert err["attributes"]["prysm.status"] == "error"
    assert s["chat"]["status"][0] == 0  # UNSET on success

    tool = s["tools"]["attributes"]
    assert tool["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert json.loads(tool["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}],
            "finish_reason": "tool_call",
        }
    ]
    assert json.loads(tool["gen_ai.input.messages"])[1:] == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_0", "name": "get_weather", "arguments": {"city": "Rome"}}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_0", "response": "sunny"}]},
    ]
    assert json.loads(tool["gen_ai.tool.definitions"]) == [
        {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}
    ]


def test_content_is_opt_in_and_sampling_never_changes_what_is_stored(
    fake: FakeUpstream, receiver: Receiver, tmp_path: Any
) -> None:
    # The endpoint from OpenTelemetry's own variable (a base URL: /v1/traces is added).
    proxy = _proxy(
        fake, str(tmp_path / "t.db"), "--otlp-sample", "0.5", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url
    ).start()
    try:
        ids = [
            _call(proxy.base, "chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})[1][
                "x-prysm-trace-id"
            ]
            for _ in range(40)
        ]
        deadline = time.monotonic() + 30
        while _health(proxy.base)["export"]["sampled_out"] + len(receiver.spans) < 40:
            assert time.monotonic() < deadline, _health(proxy.base)["export"]
            time.sleep(0.1)
        health = _health(proxy.base)
        stats_request = urllib.request.Request(
            proxy.base + "/stats?since=all", headers={"Authorization": f"Bearer {KEY}"}
        )
        with urllib.request.urlopen(stats_request, timeout=10) as response:
            assert json.loads(response.read())["requests"] == 40  # every trace is stored
    finally:
        proxy.stop()
    exported = {s["trace_id"] for s in receiver.spans}
    assert exported < set(ids) and 5 <= len(exported) <= 35  # about half, decided by the trace id
    assert health["export"]["exported"] == len(exported) and health["export"]["sampled_out"] == 40 - len(exported)
    assert all("gen_ai.input.messages" not in s["attributes"] for s in receiver.spans)


def test_a_collector_down_for_ten_seconds_mid_load_loses_nothing(
    fake: FakeUpstream, receiver: Receiver, tmp_path: Any
) -> None:
    proxy = _proxy(fake, str(tmp_path / "t.db"), "--otlp-endpoint", receiver.url).start()
    ids: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            _, h, _ = _call(
                proxy.base, "chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            )
            ids.append(h["x-prysm-trace-id"])
            time.sleep(0.01)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1.5)
        receiver.stop()  # down: connections refused
        down_at = len(ids)
        time.sleep(10)
        health = _health(proxy.base)
        assert health["export"]["waiting"] > 0 and health["export"]["failing_since"] is not None
        assert health["status"] == "ok" or "OTLP export" in health["reason"]
        receiver.start()  # back, on the same port
        time.sleep(1.5)
        stop.set()
        thread.join(30)
        assert len(ids) > down_at + 50  # the load went on, unhindered, while the collector was down
        got = receiver.wait_for(set(ids), timeout=60)
        deadline = time.monotonic() + 10
        # The export process reports its counters now and then: wait for the report that counts
        # the last span (the outbox may be empty a moment before).
        while (health := _health(proxy.base))["export"]["waiting"] or health["export"]["exported"] < len(ids):
            assert time.monotonic() < deadline, health["export"]
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
        proxy.stop()
    assert set(got) == set(ids)
    assert all(len(spans) == 1 for spans in got.values()), "no duplicates without a crash"
    assert health["export"]["exported"] == len(ids) and health["export"]["failed"] > 0
    assert health["status"] == "ok"


def test_spans_wait_in_the_store_across_a_stop_and_a_crash(fake: FakeUpstream, tmp_path: Any) -> None:
    db = str(tmp_path / "t.db")
    receiver = Receiver().start()
    url = receiver.url
    receiver.stop()  # the collector is down from the start
    try:
        proxy = _proxy(fake, db, "--otlp-endpoint", url).start()
        first = [_call(proxy.base, "embeddings", {"model": "e", "input": "a"})[1]["x-prysm-trace-id"] for _ in range(5)]
        deadline = time.monotonic() + 10
        while _health(proxy.base)["export"]["waiting"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        log = proxy.stop()  # a clean stop: spans stay in the outbox
        assert "OTLP export to" in log and "failing" in log
        proxy = _proxy(fake, db, "--otlp-endpoint", url, new_session=True).start()
        second = [
            _call(proxy.base, "embeddings", {"model": "e", "input": "b"})[1]["x-prysm-trace-id"] for _ in range(5)
        ]
        deadline = time.monotonic() + 10
        while _health(proxy.base)["export"]["waiting"] < 10:
            assert time.monotonic() < deadline, _health(proxy.base)["export"]
            time.sleep(0.05)
        os.killpg(proxy.proc.pid, signal.SIGKILL)  # a crash: the proxy and its children, at once
        proxy.proc.wait(10)
        receiver.start()
        proxy = _proxy(fake, db, "--otlp-endpoint", url).start()
        got = receiver.wait_for(set(first + second), timeout=60)
        proxy.stop()
        assert set(got) == set(first + second)
    finally:
        receiver.stop()


def test_export_off_empties_the_outbox_and_a_missing_extra_is_one_line(fake: FakeUpstream, tmp_path: Any) -> None:
    db = str(tmp_path / "t.db")
    receiver = Receiver().start()
    url = receiver.url
    receiver.stop()
    proxy = _proxy(fake, db, "--otlp-endpoint", url).start()
    _call(proxy.base, "embeddings", {"model": "e", "input": "a"})
    deadline = time.monotonic() + 10
    while _health(proxy.base)["export"]["waiting"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proxy.stop()
    proxy = _proxy(fake, db).start()
    health = _health(proxy.base)
    log = proxy.stop()
    assert "export" not in health
    assert "1 trace(s) that waited to be exported" in log
    # Without OpenTelemetry's packages (shadowed here by an empty package of the same name).
    shadow = tmp_path / "shadow"
    (shadow / "opentelemetry").mkdir(parents=True)
    (shadow / "opentelemetry" / "__init__.py").write_text("")
    env = cli_env(PYTHONPATH=f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(
        [*PRYSMAI, "proxy", "--port", "0", "--db", db, "--otlp-endpoint", url], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2
    assert "pip install 'prysmai[proxy,otel]'" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(
        [*PRYSMAI, "proxy", "--port", "0", "--db", db, "--otlp-endpoint", "http://user:pw@collector:4318"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert done.returncode == 2 and "OTEL_EXPORTER_OTLP_HEADERS" in done.stderr and "pw@" not in done.stderr


def test_doctor_reports_the_export(fake: FakeUpstream, tmp_path: Any) -> None:
    from ..cli.test_doctor import by_name, doctor

    receiver = Receiver().start()
    proxy = _proxy(
        fake, str(tmp_path / "t.db"), "--otlp-endpoint", receiver.url, OTEL_EXPORTER_OTLP_TIMEOUT="2"
    ).start()
    try:
        _call(proxy.base, "embeddings", {"model": "e", "input": "a"})
        deadline = time.monotonic() + 10
        while _health(proxy.base)["export"]["exported"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        code, out, _ = doctor("--json", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=proxy.base)
        check = by_name(out)["trace export"]
        assert code == 0 and check["status"] == "ok"
        assert check["detail"] == f"OTLP export to {receiver.url}/v1/traces: 1 exported, 0 failed, 0 waiting"
        receiver.stop()
        _call(proxy.base, "embeddings", {"model": "e", "input": "b"})
        while _health(proxy.base)["export"]["failing_since"] is None:
            assert time.monotonic() < deadline + 20
            time.sleep(0.1)
        code, out, _ = doctor("--json", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=proxy.base)
        check = by_name(out)["trace export"]
        assert check["status"] == "warning" and "1 waiting" in check["detail"] and "collector" in check["fix"]
    finally:
        proxy.stop()
        receiver.stop()
