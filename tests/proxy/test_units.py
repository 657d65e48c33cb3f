"""Pure units: keys, pricing, SSE capture and usage stripping, the store."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prysmai._proxy.capture import Exchange, finalize
from prysmai._proxy.keys import KeyConfigError, collect_keys, generate_key, key_id
from prysmai._proxy.pricing import Price, PriceTable, PricingError
from prysmai._proxy.projects import flat
from prysmai._proxy.store import (
    COLUMNS,
    SCHEMA_VERSION,
    StoreError,
    TraceStore,
    compute_stats,
    insert_rows,
    open_existing,
)
from prysmai._proxy.usage import UsageStripper, inject_usage

PRICES = PriceTable.load()


# -- keys ----------------------------------------------------------------------------------------
def test_flat_tenancy_accepts_only_configured_keys() -> None:
    ring = flat(["sk-prysm-aaa", "sk-prysm-bbb"], "https://api.openai.com/v1", "sk-upstream-secret")
    assert ring.check(b"sk-prysm-aaa") and ring.check(b"sk-prysm-bbb")
    assert not ring.check(b"sk-prysm-aa") and not ring.check(b"sk-prysm-aaaa") and not ring.check(b"")
    entry = ring.identify(b"Bearer sk-prysm-bbb")
    assert entry is not None and entry.key_id == key_id("sk-prysm-bbb") and entry.project_name == "default"
    assert ring.identify(b"bearer sk-prysm-aaa") is not None
    assert ring.identify(None) is None and ring.identify(b"sk-prysm-aaa") is None
    assert "sk-prysm" not in repr(ring) and "sk-upstream-secret" not in repr(ring.projects["default"])


def test_keys_come_from_flags_env_and_file(tmp_path: Any) -> None:
    keys_file = tmp_path / "keys"
    k = {name: f"sk-prysm-{name}-0123456789abcdef" for name in ("file1", "file2", "env1", "env2", "flag")}
    keys_file.write_text(f"# team keys\n{k['file1']}\n\n  {k['file2']}  \n")
    env = {"PRYSM_PROXY_KEYS": f"{k['env1']}, {k['env2']},", "PRYSM_PROXY_KEYS_FILE": str(keys_file)}
    keys = collect_keys([k["flag"], k["env1"]], None, env)
    assert keys == [k["flag"], k["env1"], k["env2"], k["file1"], k["file2"]]
    assert collect_keys([], None, {}) == []


@pytest.mark.parametrize("bad", ["sk-live-secretvalue", "sk-prysm-", "sk-prysm-has secret"])
def test_malformed_key_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(KeyConfigError) as info:
        collect_keys([bad], None, {})
    secret = bad.replace("sk-prysm-", "")
    assert not secret or secret not in str(info.value)


def test_generated_keys_are_valid_and_distinct() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and collect_keys([a, b], None, {}) == [a, b]


# -- pricing -------------------------------------------------------------------------------------
def test_pricing_table_has_date_and_source() -> None:
    assert PRICES.as_of and PRICES.source.startswith("https://")
    assert PRICES.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert PRICES.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)  # snapshot
    assert PRICES.cost("gpt-4-0613", 1_000_000, 0) == pytest.approx(30.0)
    assert PRICES.cost("gpt-4o", 1_000_000, 0, cached_tokens=500_000) == pytest.approx(1.25 + 0.625)
    assert PRICES.cost("text-embedding-3-small", 1_000_000, None) == pytest.approx(0.02)


def test_unknown_model_or_tokens_cost_none_never_zero() -> None:
    assert PRICES.cost("mystery", 10, 10) is None
    assert PRICES.cost(None, 10, 10) is None
    assert PRICES.cost("gpt-4o", None, None) is None
    assert PRICES.cost("text-embedding-3-small", 10, 5) is None  # no output price known


def test_pricing_override_file(tmp_path: Any) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"models": {"my-model": {"input": 1, "output": 2}, "gpt-4o": {"input": 9, "output": 9}}})
    )
    table = PriceTable.load(str(path))
    assert table.cost("my-model", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("gpt-4o", 1_000_000, 0) == pytest.approx(9.0)
    assert table.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # the rest stays
    path.write_text('{"models": {"x": {"output": 1}}}')
    with pytest.raises(PricingError):
        PriceTable.load(str(path))
    with pytest.raises(PricingError):
        PriceTable.load(str(tmp_path / "missing.json"))


def _answered(model: str, answered_by: str | None, prices: dict[str, Price] | None) -> dict[str, Any]:
    """The row of a plain chat completion asking for ``model``, answered by ``answered_by``
    (1M prompt and 1M completion tokens), through a provider with ``prices``."""
    ex = Exchange("t3", 0.0, 0.0, "POST", "chat/completions")
    ex.model = model
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}}
    if answered_by is not None:
        body["model"] = answered_by
    ex.response_body = json.dumps(body).encode()
    ex.http_status = 200
    ex.project, ex.provider, ex.provider_prices = "web", "ollama", prices
    return finalize(ex, PRICES)


def test_a_providers_own_prices_come_first_and_zero_is_known_free() -> None:
    local = {"llama3.1": Price(0, 0), "gpt-4o": Price(1, 2), "mine": Price(3, 4)}
    free = _answered("ollama/llama3.1", "llama3.1", local)
    assert free["cost_usd"] == 0.0 and free["cost_usd"] is not None  # known free, not unknown
    assert (free["project"], free["provider"]) == ("web", "ollama")
    assert _answered("gpt-4o", "gpt-4o", local)["cost_usd"] == pytest.approx(3.0)  # not the table's price
    assert _answered("gpt-4o", "gpt-4o-2024-08-06", local)["cost_usd"] == pytest.approx(3.0)  # a snapshot
    # The model as the provider reported it first, then as the client sent it.
    assert _answered("mine", "gpt-4o", local)["cost_usd"] == pytest.approx(3.0)
    assert _answered("mine", "somebody-else", local)["cost_usd"] == pytest.approx(7.0)
    assert _answered("mine", None, local)["cost_usd"] == pytest.approx(7.0)
    # Neither the provider nor the table knows it: unknown, never $0.
    assert _answered("ollama/qwen", "qwen", local)["cost_usd"] is None
    assert _answered("ollama/qwen", "qwen", None)["cost_usd"] is None
    # What the provider does not price, the table does (the table's gpt-4o-mini: $0.15 + $0.60).
    assert _answered("gpt-4o-mini", "gpt-4o-mini", local)["cost_usd"] == pytest.approx(0.75)
    assert _answered("gpt-4o-mini", "gpt-4o-mini", {})["cost_usd"] == pytest.approx(0.75)
    assert _answered("gpt-4o-mini", "gpt-4o-mini", None)["cost_usd"] == pytest.approx(0.75)


# -- capture -------------------------------------------------------------------------------------
def _sse(*objs: Any) -> list[bytes]:
    return [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs]


def _stream_exchange(events: list[tuple[float, bytes]]) -> Exchange:
    ex = Exchange("t1", time.time(), 100.0, "POST", "chat/completions")
    ex.stream = True
    ex.model = "gpt-4o-mini"
    ex.chunks = events
    ex.t_end = 101.0
    return ex


def test_ttft_ignores_role_only_and_empty_frames_and_reassembles_tool_calls() -> None:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18"}
    role, empty, tool1, tool2, text, end, usage = _sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {}}]},
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]}}
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {"content": "ok"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0, "total_tokens": 1_000_000},
        },
    )
    # The tool-call frame arrives split across two network chunks: it counts when complete.
    ex = _stream_exchange(
        [
            (100.010, role),
            (100.020, empty),
            (100.100, tool1[:20]),
            (100.150, tool1[20:] + tool2),
            (100.200, text + end + usage + b"data: [DONE]\n\n"),
        ]
    )
    row = finalize(ex, PRICES)
    assert row["ttft_ms"] == pytest.approx(150.0)
    assert row["latency_ms"] == pytest.approx(1000.0)
    body = json.loads(row["response_body"])
    message = body["choices"][0]["message"]
    assert message["content"] == "ok" and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert row["response_model"] == "gpt-4o-mini-2024-07-18"
    assert row["cost_usd"] == pytest.approx(0.15)


def test_ttft_none_when_nothing_generated_and_crlf_events() -> None:
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\r\n\r\n'
    row = finalize(_stream_exchange([(100.5, role), (100.6, b"data: [DONE]\r\n\r\n")]), PRICES)
    assert row["ttft_ms"] is None and row["status"] == "success"


def test_responses_stream_capture() -> None:
    events = [
        b'event: response.created\ndata: {"type":"response.created","response":{"id":"r","status":"in_progress"}}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":""}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n',
    ]
    ex = _stream_exchange([(100.1, events[0]), (100.2, events[1]), (100.3, events[2])])
    ex.endpoint = "responses"
    row = finalize(ex, PRICES)  # cut off before response.completed: the partial text is kept
    assert row["ttft_ms"] == pytest.approx(300.0)
    assert json.loads(row["response_body"])["output_text"] == "Hi"
    failed = b'data: {"type":"response.failed","response":{"id":"r","error":{"message":"boom"}}}\n\n'
    row = finalize(_stream_exchange([(100.1, failed)]), PRICES)
    assert row["status"] == "error" and row["error"] == "boom"


def test_binary_request_body_is_summarised() -> None:
    ex = Exchange("t2", 0.0, 0.0, "POST", "audio/transcriptions")
    ex.request_body = b"\xff\xfe\x00binary"
    ex.request_content_type = "multipart/form-data"
    row = finalize(ex, PRICES)
    assert row["request_body"] == "<9 bytes of multipart/form-data, not stored>"


# -- usage injection and stripping -------------------------------------------------------------
def test_inject_usage_variants() -> None:
    body = b'{"model":"m","stream":true}'
    out, injected = inject_usage(body, json.loads(body))
    assert injected and json.loads(out) == {"stream_options": {"include_usage": True}, "model": "m", "stream": True}
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    assert inject_usage(body, json.loads(body)) == (body, False)
    body = b'{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}'
    out, injected = inject_usage(body, json.loads(body))
    assert injected and json.loads(out)["stream_options"] == {"include_obfuscation": False, "include_usage": True}


@pytest.mark.parametrize("sep", [(",", ":"), (", ", ": ")])
def test_stripper_restores_the_stream_the_client_asked_for(sep: tuple[str, str]) -> None:
    def ev(obj: Any) -> bytes:
        return b"data: " + json.dumps(obj, separators=sep).encode() + b"\n\n"

    plain = [
        {"id": "x", "choices": [{"index": 0, "delta": {"content": 'say "usage":null, ok'}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    expected = b"".join(ev(o) for o in plain) + b"data: [DONE]\n\n"
    upstream = b"".join(ev({**o, "usage": None}) for o in plain)
    upstream += ev({"id": "x", "choices": [], "usage": {"prompt_tokens": 1}}) + b"data: [DONE]\n\n"
    for size in (1, 7, 64, len(upstream)):  # any network chunking
        stripper = UsageStripper()
        out = b"".join(stripper.feed(upstream[i : i + size]) for i in range(0, len(upstream), size))
        assert out + stripper.flush() == expected


def test_stripper_parses_only_what_can_be_the_usage_chunk() -> None:
    stripper = UsageStripper()
    # "usage":null first or last, by bytes; an object-valued usage with choices is left as it is.
    assert stripper.feed(b'data: {"usage":null,"id":"a","choices":[]}\n\n') == b'data: {"id":"a","choices":[]}\n\n'
    assert stripper.feed(b'data: {"id":"a", "usage" : null}\n\n') == b'data: {"id":"a"}\n\n'
    kept = b'data: {"id":"a","choices":[{"index":0}],"usage":{"total_tokens":3}}\n\n'
    assert stripper.feed(kept) == kept
    assert stripper.feed(b'data: {"id":"a","choices":[],"usage":{"total_tokens":3}}\r\n\r\n') == b""
    assert stripper.feed(b'data: {"usage": {"total_tokens":3}, "choices": []}\n\n') == b""
    assert stripper.feed(b'data: not json, "usage":{\n\n') == b'data: not json, "usage":{\n\n'
    assert stripper.flush() == b""


# -- store ---------------------------------------------------------------------------------------
def _row(i: int, **kw: Any) -> dict[str, Any]:
    return {
        "id": f"{i:032x}",
        "created_at": 1000.0 + i,
        "method": "POST",
        "endpoint": "chat/completions",
        "model": "m",
        "stream": 0,
        "status": "success",
        "latency_ms": float(i),
        **kw,
    }


def test_store_writes_in_background_and_flushes_on_close(tmp_path: Any) -> None:
    path = str(tmp_path / "sub" / "t.db")
    store = TraceStore(path, lambda item: item, queue_size=1000)
    store.open()
    for i in range(1, 101):
        assert store.submit(_row(i, model="a" if i % 2 else "b", status="error" if i % 10 == 0 else "success"))
    store.close()
    assert store.written == 100 and store.dropped == 0
    conn = open_existing(path)
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    stats = compute_stats(conn)
    assert stats["requests"] == 100 and stats["errors"] == 10 and stats["error_rate"] == 0.1
    # Percentiles come from a histogram: within 3.2 % of the exact nearest-rank value (queries.py).
    assert stats["latency_p50_ms"] == pytest.approx(50.0, rel=0.033)
    assert stats["latency_p95_ms"] == pytest.approx(95.0, rel=0.033)
    assert stats["by_model"]["a"]["requests"] == 50 and stats["unpriced_requests"] == 100
    assert compute_stats(conn, since=1090.5)["requests"] == 10


def test_full_queue_drops_are_counted_and_logged(tmp_path: Any, caplog: Any) -> None:
    gate = threading.Event()

    def slow(item: Any) -> dict[str, Any]:
        gate.wait(10)
        return dict(item)

    store = TraceStore(str(tmp_path / "t.db"), slow, queue_size=2, when_behind="drop")
    store.open()
    results = [store.submit(_row(i)) for i in range(10)]
    assert results.count(False) >= 5 and store.dropped == results.count(False)
    assert store.counters()["dropped"] == store.dropped
    assert "dropped" in caplog.text
    gate.set()
    store.close()
    assert store.written == results.count(True)


def test_bad_row_does_not_lose_the_batch(tmp_path: Any) -> None:
    store = TraceStore(str(tmp_path / "t.db"), lambda item: item)
    store.open()
    store.submit(_row(1))
    store.submit({"id": "no-required-columns"})  # NOT NULL violations
    store.submit(_row(2))
    assert store.flush(10)
    store.close()
    assert (store.written, store.failed) == (2, 1)


def test_newer_schema_or_garbage_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        TraceStore(str(path), dict).open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        TraceStore(str(garbage), dict).open()


@pytest.mark.parametrize("n", [1, 3, 511, 513, 777])
def test_batches_of_any_size_are_written_exactly(tmp_path: Any, n: int) -> None:
    path = str(tmp_path / "t.db")
    store = TraceStore(path, lambda item: item)
    store.open()
    assert store._conn is not None
    assert insert_rows(store._conn, [tuple(_row(i).get(c) for c in COLUMNS) for i in range(n)]) == (n, 0, 0)
    store.close()
    conn = open_existing(path)
    assert conn is not None
    assert [r[0] for r in conn.execute("SELECT id FROM traces ORDER BY latency_ms")] == [
        _row(i)["id"] for i in range(n)
    ]


# -- the writer lets go of the GIL: the event loop must not wait out CPython's 5 ms switch interval --
def _long_stream(events: int) -> Exchange:
    ex = Exchange("long", time.time(), 0.0, "POST", "chat/completions")
    ex.model, ex.stream, ex.http_status, ex.t_end = "gpt-4o-mini", True, 200, 1.0
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    event = b"data: " + json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "w "}}]}).encode() + b"\n\n"
    ex.chunks = [(0.001 * i, event) for i in range(events)]
    ex.chunks.append((1.0, b"data: [DONE]\n\n"))
    return ex


def test_reassembling_a_long_stream_yields_the_gil_every_few_events(monkeypatch: Any) -> None:
    from prysmai._proxy import capture

    sleeps: list[float] = []
    real_sleep, me = time.sleep, threading.current_thread()

    def sleep(seconds: float) -> None:  # (time.sleep is global: other threads' calls go through)
        if threading.current_thread() is me:
            sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(capture.time, "sleep", sleep)
    events = 10 * capture.EVENTS_PER_SLICE + 5
    row = finalize(_long_stream(events), PriceTable.load())
    assert json.loads(row["response_body"])["choices"][0]["message"]["content"] == "w " * events
    assert sleeps == [0] * 10  # one yield per EVENTS_PER_SLICE events, never a real sleep


def test_writer_yields_the_gil_between_rows_once_its_slice_is_used(monkeypatch: Any, tmp_path: Any) -> None:
    from prysmai._proxy import store as store_module

    yields = 0
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        nonlocal yields
        if seconds == 0 and threading.current_thread().name == "prysmai-trace-writer":
            yields += 1
        real_sleep(seconds)

    monkeypatch.setattr(store_module.time, "sleep", sleep)
    monkeypatch.setattr(store_module, "GIL_SLICE", 0.0)  # every row is a whole slice
    store = TraceStore(str(tmp_path / "t.db"), lambda item: item, queue_size=1000)
    store.open()
    for i in range(1, 41):
        store.submit(_row(i))
    store.close()
    assert store.written == 40 and yields == 40


def test_the_proxy_process_freezes_its_startup_objects() -> None:
    import subprocess
    import sys

    code = (
        "import gc, sys; from prysmai._proxy import pricedb, server; server.freeze_startup_objects();"
        "loaded = 'genai_prices' in sys.modules; print(gc.get_freeze_count() > 1000, loaded or not pricedb.available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["True", "True"]


# -- stream parsing: grouped and per event agree -------------------------------------------------
_PAYLOADS = [
    b'{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant"}}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"h\\u00e9"}}],"usage":null}',
    b'{"id":"c","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f"}}]}}]}',
    b'{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b'{"type":"response.output_text.delta","delta":"x"}',
    b'{"error":{"message":"boom"}}',
    b"[DONE]",
    b" [DONE] ",
    b"not json",
    b"",
    b"1,2",
    b"1],[2",
    b'{"a":',
    b'"a string"',
    b"[" * 5000 + b"]" * 5000,
]


@given(st.lists(st.sampled_from(_PAYLOADS), max_size=40))
@settings(max_examples=300, deadline=None)
def test_stream_events_parsed_together_read_as_parsed_one_by_one(payloads: list[bytes]) -> None:
    from prysmai._proxy.capture import _feed_events, _StreamState

    events = [(float(i), None, p) for i, p in enumerate(payloads)]
    together, one_by_one = _StreamState(0.0), _StreamState(0.0)
    _feed_events(together, events)
    for event in events:
        one_by_one.feed(*event)
    assert vars(together) == vars(one_by_one)


@given(st.lists(st.sampled_from(_PAYLOADS[:8]), min_size=1, max_size=12), st.data())
@settings(max_examples=200, deadline=None)
def test_sse_events_are_the_same_however_the_bytes_are_chunked(payloads: list[bytes], data: Any) -> None:
    from prysmai._proxy.capture import iter_sse

    stream = b"".join(b"data: " + p + b"\n\n" for p in payloads)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    whole = [(e[1], e[2]) for e in iter_sse([(0.0, stream)])]
    chunked = [(e[1], e[2]) for e in iter_sse([(float(i), p) for i, p in enumerate(pieces)])]
    assert chunked == whole == [(None, p) for p in payloads]
