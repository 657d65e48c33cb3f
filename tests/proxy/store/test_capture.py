"""A captured exchange becomes a row: SSE reassembly, TTFT, usage (store/capture.py)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prysmai._proxy.config.pricing import PriceTable
from prysmai._proxy.store.capture import Exchange, finalize

PRICES = PriceTable.load()


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
    from prysmai._proxy.store import capture

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
    from prysmai._proxy.store.capture import _feed_events, _StreamState

    events = [(float(i), None, p) for i, p in enumerate(payloads)]
    together, one_by_one = _StreamState(0.0), _StreamState(0.0)
    _feed_events(together, events)
    for event in events:
        one_by_one.feed(*event)
    assert vars(together) == vars(one_by_one)


@given(st.lists(st.sampled_from(_PAYLOADS[:8]), min_size=1, max_size=12), st.data())
@settings(max_examples=200, deadline=None)
def test_sse_events_are_the_same_however_the_bytes_are_chunked(payloads: list[bytes], data: Any) -> None:
    from prysmai._proxy.store.capture import iter_sse

    stream = b"".join(b"data: " + p + b"\n\n" for p in payloads)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    whole = [(e[1], e[2]) for e in iter_sse([(0.0, stream)])]
    chunked = [(e[1], e[2]) for e in iter_sse([(float(i), p) for i, p in enumerate(pieces)])]
    assert chunked == whole == [(None, p) for p in payloads]


# -- known credentials masked before storage -----------------------------------------------------------
SECRET = b"sk-provider-credential-0123456789"


@settings(max_examples=200, deadline=None)
@given(
    before=st.binary(max_size=60),
    after=st.binary(max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_a_credential_is_masked_wherever_the_stream_cut_it(before: bytes, after: bytes, cuts: list[int]) -> None:
    from prysmai._proxy.store.capture import scrub

    data = before + SECRET + after + SECRET
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [(float(i), data[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    ex = _stream_exchange(chunks)
    ex.response_body = b"echo: " + SECRET
    ex.error = f"upstream said {SECRET.decode()}"
    ex.notes = [SECRET.decode()]
    ex.sent_secrets = (SECRET,)
    scrub(ex, [])
    joined = b"".join(c for _, c in ex.chunks)
    assert SECRET not in joined and joined == before + b"*" * len(SECRET) + after + b"*" * len(SECRET)
    assert [(t, len(c)) for t, c in ex.chunks] == [(t, len(c)) for t, c in chunks]  # timing kept
    assert ex.response_body == b"echo: " + b"*" * len(SECRET)
    assert SECRET.decode() not in ex.error and SECRET.decode() not in ex.notes[0]
    assert ex.sent_secrets == ()  # dropped once used: nothing holds it on the way to the store


def test_the_writer_process_is_never_sent_a_credential() -> None:
    from prysmai._proxy.store import writerproc

    assert "sent_secrets" in Exchange.__slots__ and "sent_secrets" not in writerproc.FIELDS
