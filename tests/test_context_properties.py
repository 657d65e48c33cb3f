"""Property: any ``prysm_context`` value is either refused when set (``TypeError``/``ValueError``) or
sent as ASCII header values that decode, the way the proxy decodes them, to exactly what was set.

Inputs include what breaks naive encoders: lone and paired surrogates, control characters,
non-finite floats, huge integers, deep nesting and values near the size limit.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, prysm_headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prysmai
from prysmai import PrysmContext, prysm_context
from prysmai._wire import decode_id, decode_metadata

NASTY = ["\ud800", "\udfff", "\ud83d\ude80", "\x00", "\r\n", "\u2028", "%", "%C3%A9", "é", "🚀", " ", "\x7f"]

texts = st.text(max_size=12) | st.builds(
    lambda a, nasty, b: a + nasty + b, st.text(max_size=4), st.sampled_from(NASTY), st.text(max_size=4)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=12,
)
metadatas = (
    st.none()
    | st.dictionaries(texts, json_like, max_size=4)
    | st.builds(lambda n: {"pad": "x" * n}, st.integers(8170, 8200))
)
ids = st.none() | texts | st.builds(lambda n: "u" * n, st.integers(8180, 8200))


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def check(user_id: str | None, session_id: str | None, metadata: Any) -> None:
    try:
        value = PrysmContext(user_id=user_id, session_id=session_id, metadata=metadata)
    except (TypeError, ValueError):
        # Refused the same way wherever it is set, and nothing changes.
        with pytest.raises((TypeError, ValueError)):
            prysm_context.set(user_id=user_id, session_id=session_id, metadata=metadata)
        with pytest.raises((TypeError, ValueError)):
            prysm_context(user_id=user_id, session_id=session_id, metadata=metadata)
        assert prysm_context.get() == PrysmContext()
        return
    headers = value.to_headers()
    for header in headers.values():
        assert header.isascii() and header.isprintable() and len(header) <= 8192
    decoded = (
        decode_id(headers["X-Prysm-User-Id"]) if "X-Prysm-User-Id" in headers else None,
        decode_id(headers["X-Prysm-Session-Id"]) if "X-Prysm-Session-Id" in headers else None,
        decode_metadata(headers["X-Prysm-Metadata"]) if "X-Prysm-Metadata" in headers else None,
    )
    assert decoded == (user_id, session_id, metadata or None)
    prysm_context.set(user_id=user_id, session_id=session_id, metadata=metadata)
    try:
        assert prysm_context.get().to_headers() == headers
    finally:
        prysm_context.clear()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_id=ids, session_id=ids, metadata=metadatas)
def test_any_context_is_refused_when_set_or_decodes_back_exactly(
    user_id: str | None, session_id: str | None, metadata: Any
) -> None:
    check(user_id, session_id, metadata)


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 3000))
def test_any_nesting_depth_is_refused_or_decodes_back(depth: int) -> None:
    check(None, None, {"deep": deep(depth)})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(user_id=ids, metadata=metadatas)
def test_what_the_proxy_receives_decodes_back(
    proxy_server: RecordingServer, user_id: str | None, metadata: Any
) -> None:
    try:
        prysm_context.set(user_id=user_id, metadata=metadata)
    except (TypeError, ValueError):
        return
    try:
        client = prysmai.monitor(
            openai.OpenAI(api_key="sk-user", max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url
        )
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        client.close()
        sent = prysm_headers(proxy_server.last)
        assert (decode_id(sent["x-prysm-user-id"]) if "x-prysm-user-id" in sent else None) == user_id
        assert (decode_metadata(sent["x-prysm-metadata"]) if "x-prysm-metadata" in sent else None) == (metadata or None)
    finally:
        prysm_context.clear()
