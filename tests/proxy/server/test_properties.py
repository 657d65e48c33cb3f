"""Property-based: whatever a client sends, it gets a documented 4xx or is served, the proxy
records exactly one trace, and what is recorded decodes back to what was sent."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai import _wire

from ..conftest import KEY, ProxyHandle

AUTH = {"Authorization": f"Bearer {KEY}"}
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)
#: Text including what breaks naive code: controls, non-BMP, unpaired surrogates, NUL.
TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def _trace(proxy: ProxyHandle, response: httpx.Response) -> dict[str, Any]:
    trace_id = response.headers["x-prysm-trace-id"]
    got = httpx.get(f"{proxy.base_url}/traces/{trace_id}", headers=AUTH, timeout=30)
    assert got.status_code == 200, got.text
    doc: dict[str, Any] = got.json()
    return doc


def _count(proxy: ProxyHandle) -> int:
    stats = httpx.get(f"{proxy.base_url}/stats", headers=AUTH, timeout=30).json()
    return int(stats["requests"])


@SETTINGS
@given(
    body=st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(TEXT, JSON_VALUES, max_size=4).map(
            lambda d: json.dumps({"model": "gpt-4o-mini", "messages": [], **d, "stream": False}).encode()
        ),
    )
)
def test_any_body_gets_a_documented_answer_and_one_faithful_trace(proxy: ProxyHandle, body: bytes) -> None:
    before = _count(proxy)
    r = httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code in (200, 400), (r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "invalid_json"
    trace = _trace(proxy, r)
    assert _count(proxy) == before + 1
    assert trace["http_status"] == r.status_code
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        assert trace["request_body"].startswith(f"<{len(body)} bytes")
    else:
        recorded = trace["request_body"]
        if isinstance(recorded, str) or recorded is None:
            assert recorded == (text or None)
        else:  # a JSON document comes back as its value (docs/proxy.md, "JSON output")
            assert recorded == json.loads(text)


@SETTINGS
@given(user=TEXT, session=TEXT, metadata=st.dictionaries(TEXT, JSON_VALUES, max_size=4))
def test_any_context_is_recorded_as_sent(proxy: ProxyHandle, user: str, session: str, metadata: Any) -> None:
    headers = dict(AUTH)
    expect_user = expect_session = expect_metadata = True
    try:
        headers[_wire.USER_ID_HEADER] = _wire.encode_id(user)
    except ValueError:  # unpaired surrogates: the SDK refuses them; send the raw value instead
        expect_user = False
    try:
        headers[_wire.SESSION_ID_HEADER] = _wire.encode_id(session)
    except ValueError:
        expect_session = False
    encoded = _wire.encode_metadata(metadata)
    if len(encoded) <= _wire.MAX_HEADER_VALUE_BYTES:
        headers[_wire.METADATA_HEADER] = encoded
    else:
        expect_metadata = False
    r = httpx.post(f"{proxy.base_url}/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=headers)
    assert r.status_code == 200
    trace = _trace(proxy, r)
    if expect_user and user:
        assert trace["user_id"] == user
    if expect_session and session:
        assert trace["session_id"] == session
    if expect_metadata:
        assert trace["metadata"] == metadata


def _raw_post(proxy: ProxyHandle, extra: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str], bytes]:
    """A POST written byte for byte (HTTP clients refuse to send some of these values)."""
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    head = [
        b"POST /api/v1/chat/completions HTTP/1.1",
        b"host: 127.0.0.1",
        b"authorization: Bearer " + KEY.encode(),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *(name + b": " + value for name, value in extra),
    ]
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


@SETTINGS
@given(
    name=st.sampled_from([_wire.USER_ID_HEADER, _wire.SESSION_ID_HEADER, _wire.METADATA_HEADER]),
    value=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")),
)
def test_a_bad_prysm_header_never_fails_the_request(proxy: ProxyHandle, name: str, value: bytes) -> None:
    before = _count(proxy)
    status, headers, payload = _raw_post(proxy, [(name.encode(), value)])
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
        # Not a valid HTTP field value (RFC 9110 5.5): the server refuses the request, in JSON.
        assert status == 400 and json.loads(payload)["error"]["code"] == "invalid_http_request"
        assert headers["x-prysm-origin"] == "proxy"
        assert _count(proxy) == before
        return
    assert status == 200, payload
    got = httpx.get(f"{proxy.base_url}/traces/{headers['x-prysm-trace-id']}", headers=AUTH, timeout=30)
    assert got.status_code == 200
    assert _count(proxy) == before + 1
