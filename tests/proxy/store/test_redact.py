"""Redaction, the body cap and ``capture = "metadata"``, applied while a row is built
(store/redact.py, store/keep.py, store/capture.py).

The hostile-text properties inject known values of every set into text Hypothesis makes up
(unicode, markers' own characters, values touching each other or overlapping) and check that none
of them survives, wherever it stood."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.config.policy import REDACTION_SETS, PolicyError, StoragePolicy, parse_duration
from prysmai._proxy.config.pricing import PriceTable
from prysmai._proxy.store import keep
from prysmai._proxy.store.capture import Exchange, fallback_row, finalize
from prysmai._proxy.store.redact import MARKER, Redactor

PRICES = PriceTable.load()
EVERY = Redactor(REDACTION_SETS)

#: Known values of each set: (set, value, the part of it that must never be stored).
SAMPLES = [
    ("secrets", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"),
    ("secrets", "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1", "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1"),
    ("secrets", "AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    ("secrets", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    ("secrets", "ghp_0123456789abcdefghijABCDEFGHIJ012345", "0123456789abcdefghijABCDEFGHIJ012345"),
    ("secrets", "Bearer eyJhbGciOi.JIUzI1NiJ9abc.dozjgNryP4J3jVmNHl0w5N", "dozjgNryP4J3jVmNHl0w5N"),
    (
        "secrets",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7d3kq\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA7d3kq",
    ),
    ("email", "alice.smith+test@example.co.uk", "alice.smith+test@example"),
    ("phone", "+44 20 7946 0958", "7946 0958"),
    ("phone", "(555) 123-4567", "123-4567"),
    ("card", "4111 1111 1111 1111", "4111 1111 1111 1111"),
    ("card", "5500-0000-0000-0004", "5500-0000-0000-0004"),
    ("iban", "DE89 3704 0044 0532 0130 00", "3704 0044 0532 0130"),
    ("iban", "GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("ip", "192.168.17.201", "192.168.17.201"),
    ("ip", "2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::8a2e:370:7334"),
]


def _no_sample_left(text: str, samples: list[tuple[str, str, str]]) -> None:
    for _, value, core in samples:
        assert core not in text, f"{value!r} survived in {text!r}"


@pytest.mark.parametrize(("kind", "value", "core"), SAMPLES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SAMPLES)])
def test_each_set_finds_its_values_and_marks_them_with_their_type(kind: str, value: str, core: str) -> None:
    out = Redactor([kind]).text(f"before {value} after")
    assert core not in out
    marker = "secret" if kind == "secrets" else kind
    assert f"[redacted:{marker}]" in out
    assert out.startswith("before ") and out.endswith(" after")
    assert Redactor([s for s in REDACTION_SETS if s != kind]).text(f"x {value} y") != ""  # other sets run


@pytest.mark.parametrize(
    "text",
    [
        "created 1700000000 at 12:30:45 on 2024-01-15, version 1.2.3, 3.14159265358979",
        "Bearer instruments and sk-learn-compatible-estimators, order #123456",
        '{"embedding": [0.0123456789012345, 0.9876543210987654], "total_tokens": 13}',
        "1 234 567 apples; 4111 1111 1111 1112 fails the Luhn check; DE00 1234 5678 9012 3456 78 fails mod-97",
        "std::vector<int> and a::b in code, 10:20",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert EVERY.text(text) == text
    assert EVERY.json_text(text) == text


def test_a_card_followed_by_more_digits_is_still_found() -> None:
    assert "4111" not in EVERY.text("card 4111 1111 1111 1111 123 thanks")
    assert "1111 1111" not in EVERY.text("card 4111-1111-1111-1111-99")


def test_json_escapes_cannot_hide_a_match_and_an_untouched_body_is_kept_byte_for_byte() -> None:
    hidden = json.dumps({"a": "mail alice\u0040example.com", "b": "key:\nAKIAIOSFODNN7EXAMPLE"}, ensure_ascii=True)
    hidden = hidden.replace("@", "\\u0040")
    out = EVERY.json_text(hidden)
    decoded = json.loads(out)
    assert "alice" not in out and "IOSFODNN7EXAMPLE" not in out
    assert decoded["b"] == "key:\n[redacted:secret]"
    clean = '{"model":"gpt-4o",  "messages":[{"role":"user","content":"hi\\nthere \\u00e9"}]}'
    assert EVERY.json_text(clean) is clean  # nothing matched: the stored text is the text received
    assert json.loads(EVERY.json_text('{"n": 4111111111111111}')) == {"n": "[redacted:card]"}


# -- hostile text ------------------------------------------------------------------------------------
_glue = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(list("[]:@.-+ \n\\\"'{}")),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_glue, st.sampled_from(SAMPLES)), min_size=1, max_size=6), _glue)
def test_no_injected_value_survives_in_hostile_text(parts: list[tuple[str, Any]], tail: str) -> None:
    text = "".join(glue + " " + sample[1] + " " for glue, sample in parts) + tail
    out = EVERY.text(text)
    _no_sample_left(out, [sample for _, sample in parts])
    assert EVERY.text(out) == out  # a fixpoint: redacting what is stored finds nothing more
    assert not EVERY.matches(out)
    # The same in a JSON body, escaped as a client would send it, and as its decoded strings.
    body = json.dumps({"messages": [{"role": "user", "content": text}], "metadata": {text[:40]: 1}})
    stored = EVERY.json_text(body)
    decoded = json.loads(stored)
    _no_sample_left(decoded["messages"][0]["content"], [sample for _, sample in parts])
    assert not EVERY.matches(stored)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SAMPLES), st.sampled_from(SAMPLES))
def test_values_that_touch_or_overlap_are_all_removed(first: Any, second: Any) -> None:
    # Touching: one separator between them (a value glued to the letters of another word does not
    # start a word, and is not taken for one); overlapping: the first inside the second.
    half = len(second[1]) // 2
    joined_ones = [first[1] + sep + second[1] for sep in (" ", "\n", ",", "@", ":", "/", "-")]
    for joined in (*joined_ones, second[1][:half] + " " + first[1] + " " + second[1][half:]):
        out = EVERY.text(joined)
        assert not EVERY.matches(out)
        # (The halves of a value cut in two are no longer that value: only the whole one counts.)
        assert first[2] not in out.replace(second[1][:half], "").replace(second[1][half:], "")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SAMPLES), st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=5))
def test_a_value_split_across_stream_chunks_is_redacted_in_the_reassembled_answer(
    sample: Any, cut: int, more: int
) -> None:
    value = sample[1]
    cut = min(cut, len(value) - 1)
    deltas = [f"here: {value[:cut]}", value[cut:], *(" more" for _ in range(more))]
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    chunks = [
        (100.0 + i / 100, b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": d}}]}).encode())
        for i, d in enumerate(deltas)
    ]
    # The network splits the SSE frames anywhere too.
    raw = b"\n\n".join(c for _, c in chunks) + b"\n\ndata: [DONE]\n\n"
    step = max(1, len(raw) // 7)
    ex = _exchange(stream=True, policy=StoragePolicy(redact=REDACTION_SETS))
    ex.chunks = [(100.0 + i, raw[i : i + step]) for i in range(0, len(raw), step)]
    row = finalize(ex, PRICES)
    assert sample[2] not in row["response_body"]
    assert "[redacted:" in json.loads(row["response_body"])["choices"][0]["message"]["content"]


# -- rows --------------------------------------------------------------------------------------------
def _exchange(stream: bool = False, policy: StoragePolicy | None = None, body: Any = None) -> Exchange:
    ex = Exchange("trace1", time.time(), 100.0, "POST", "chat/completions")
    ex.model = "gpt-4o-mini"
    ex.stream = stream
    ex.t_end = 100.5
    ex.http_status = 200
    ex.request_body = json.dumps(
        body or {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    ex.request_content_type = "application/json"
    if policy is not None:
        ex.policy = policy
    return ex


def _answer(content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    ).encode()


def test_bodies_metadata_and_errors_are_redacted_and_the_row_says_how_much() -> None:
    ex = _exchange(
        policy=StoragePolicy(redact=("secrets", "email"), patterns=(("employee", r"EMP-[0-9]{6}"),)),
        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "I am EMP-123456, bob@example.com"}]},
    )
    ex.response_body = _answer("Your key is sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z")
    ex.metadata = {"owner": "carol@example.com", "dave@example.com": "key"}
    ex.error = "upstream said: bad key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    row = finalize(ex, PRICES)
    stored = json.dumps(row)
    for secret in ("EMP-123456", "bob@", "carol@", "dave@", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"):
        assert secret not in stored
    assert json.loads(row["request_body"])["messages"][0]["content"] == "I am [redacted:employee], [redacted:email]"
    assert json.loads(row["metadata"]) == {"owner": "[redacted:email]", "[redacted:email]": "key"}
    assert "redacted before storage: 2 email, 1 employee, 2 secret" in json.loads(row["notes"])[-1] or any(
        n.startswith("redacted before storage:") for n in json.loads(row["notes"])
    )
    assert row["prompt_tokens"] == 10 and row["cost_usd"] is not None  # usage read before redaction


def test_no_redaction_stores_the_bodies_as_received() -> None:
    ex = _exchange(policy=StoragePolicy(redact=()))
    ex.response_body = _answer("mail me: eve@example.com")
    row = finalize(ex, PRICES)
    assert row["response_body"] == ex.response_body.decode()
    assert row["notes"] is None


def test_capture_metadata_keeps_parameters_and_outline_but_no_content() -> None:
    body = {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 50,
        "stop": ["END"],
        "messages": [{"role": "system", "content": "secret plan"}, {"role": "user", "content": "the launch codes"}],
        "tools": [{"type": "function", "function": {"name": "launch", "description": "fires it"}}],
        "user": "someone",
    }
    ex = _exchange(policy=StoragePolicy(capture="metadata"), body=body)
    ex.response_body = _answer("the codes are 0000")
    ex.metadata = {"team": "a"}
    row = finalize(ex, PRICES)
    stored = json.dumps(row)
    for content in ("secret plan", "launch codes", "fires it", "codes are", "someone"):
        assert content not in stored
    assert json.loads(row["request_body"]) == {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 50,
        "stop": ["END"],
    }
    outline = json.loads(row["response_body"])
    assert outline["id"] == "chatcmpl-1" and outline["choices"] == [{"index": 0, "finish_reason": "stop"}]
    assert outline["usage"]["total_tokens"] == 15 and row["total_tokens"] == 15
    assert json.loads(row["metadata"]) == {"team": "a"}
    assert keep.METADATA_NOTE in json.loads(row["notes"])


def test_a_large_json_body_is_cut_inside_its_strings_and_stays_a_document() -> None:
    big = "x" * 300_000 + " sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z " + "y" * 300_000
    ex = _exchange(
        policy=StoragePolicy(max_body_bytes=64 * 1024),
        body={"model": "m", "messages": [{"role": "user", "content": big}]},
    )
    ex.response_body = _answer("short")
    row = finalize(ex, PRICES)
    stored = row["request_body"]
    assert len(stored.encode()) <= 64 * 1024
    doc = json.loads(stored)  # still valid JSON
    assert doc["model"] == "m" and doc["messages"][0]["role"] == "user"
    assert "…[truncated: " in doc["messages"][0]["content"]
    assert "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" not in stored
    note = next(n for n in json.loads(row["notes"]) if n.startswith("request body:"))
    original = len(ex.request_body)  # the size received, before redaction and cuts
    assert f"request body: {original} bytes" in note
    assert f"stored {len(stored.encode())} bytes, {original - len(stored.encode())} bytes cut" in note
    assert row["response_body"] == ex.response_body.decode()  # under the limit: untouched


def test_a_large_text_body_is_cut_on_a_character_boundary_with_a_marker() -> None:
    ex = _exchange(policy=StoragePolicy(max_body_bytes=2048))
    ex.endpoint = "audio/speech"
    ex.request_body = ("é" * 5000).encode()
    ex.request_content_type = "text/plain"
    row = finalize(ex, PRICES)
    stored = row["request_body"]
    assert len(stored.encode()) <= 2048
    assert stored.startswith("éé") and stored.endswith(" bytes not stored]")
    assert "\ufffd" not in stored
    # Numbers: a huge array cannot be cut inside strings; it is cut as text.
    ex = _exchange(policy=StoragePolicy(max_body_bytes=2048), body={"input": list(range(5000))})
    assert len(finalize(ex, PRICES)["request_body"].encode()) <= 2048


def test_no_limit_keeps_a_large_body_whole() -> None:
    ex = _exchange(policy=StoragePolicy(max_body_bytes=0), body={"m": "z" * 3_000_000})
    assert len(finalize(ex, PRICES)["request_body"]) > 3_000_000


def test_a_body_too_deep_to_redact_is_not_stored() -> None:
    ex = _exchange(policy=StoragePolicy())
    ex.request_body = b'{"a":' * 50_000 + b'"sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z\\n"' + b"}" * 50_000
    row = finalize(ex, PRICES)
    assert row["request_body"] is None
    assert any("not stored" in n for n in json.loads(row["notes"]))


def test_the_fallback_row_is_redacted_too() -> None:
    ex = _exchange(policy=StoragePolicy(redact=("secrets", "email")))
    ex.response_body = b"not json: frank@example.com sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    row = fallback_row(ex, RuntimeError("boom carol@example.com"))
    stored = json.dumps(row)
    assert "frank@" not in stored and "carol@" not in stored and "Ab3dEf6h" not in stored


def test_policy_settings_are_checked() -> None:
    with pytest.raises(PolicyError, match="not a redaction set"):
        StoragePolicy(redact=("emails",))
    with pytest.raises(PolicyError, match="matches the empty text"):
        StoragePolicy(patterns=(("x", "a*"),))
    with pytest.raises(PolicyError, match="not a valid regular expression"):
        StoragePolicy(patterns=(("x", "(unclosed"),))
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200 and parse_duration("2w") == 14 * 86400
    with pytest.raises(PolicyError, match="like 30d"):
        parse_duration("30")
    assert MARKER.fullmatch("[redacted:email]")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.sampled_from(SAMPLES),
    st.one_of(  # anywhere, and around each cut: the cap's, and the rough cut's before redaction
        st.integers(min_value=0, max_value=3_000_000),
        st.integers(min_value=256 * 1024 - 3000, max_value=256 * 1024 + 200),
        st.integers(min_value=320 * 1024 - 3000, max_value=320 * 1024 + 200),
    ),
    st.sampled_from(["json", "text"]),
    st.integers(min_value=1, max_value=4),
)
def test_huge_bodies_are_cut_and_never_keep_a_value_wherever_it_stood(
    sample: Any, at: int, shape: str, strings: int
) -> None:
    """Bodies of 3 MB, cut (first roughly, before redaction; then to the cap) with a value placed
    anywhere, also right at either cut."""
    limit = 256 * 1024
    filler = "lorem ipsum é " * (3_000_000 // 14 // strings)
    parts = [filler] * strings
    which = at % strings
    spot = at % len(filler)
    parts[which] = filler[:spot] + " " + sample[1] + " " + filler[spot:]
    ex = _exchange(policy=StoragePolicy(redact=REDACTION_SETS, max_body_bytes=limit))
    if shape == "json":
        ex.request_body = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": p} for p in parts]}
        ).encode()
    else:
        ex.endpoint = "audio/speech"
        ex.request_content_type = "text/plain"
        ex.request_body = "\n".join(parts).encode()
    row = finalize(ex, PRICES)
    stored = row["request_body"]
    assert len(stored.encode()) <= limit
    assert sample[2] not in stored and not EVERY.matches(stored)
    if shape == "json":
        doc = json.loads(stored)
        assert len(doc["messages"]) == strings
        text = "".join(m["content"] for m in doc["messages"])
        assert sample[2] not in text
    note = next(n for n in json.loads(row["notes"]) if n.startswith("request body:"))
    assert note.startswith(f"request body: {len(ex.request_body)} bytes")
