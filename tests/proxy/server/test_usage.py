"""Asking a stream for its usage and stripping it from what the client sees (server/usage.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prysmai._proxy.config.pricing import PriceTable
from prysmai._proxy.server.usage import UsageStripper, inject_usage

PRICES = PriceTable.load()


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
