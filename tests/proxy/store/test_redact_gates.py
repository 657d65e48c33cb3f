"""The gates of redaction (store/redact.py): the searches that decide a text, or a JSON body as
received, holds nothing to redact, so that most bodies are stored without being decoded.

A gate may open for nothing, never stay shut on a match: these properties check that whatever a
pattern matches (its regular expression and validator run directly, no gate involved) opens that
pattern's gate and the redactor's, in the text itself and in the raw JSON of a body holding it,
whichever characters that JSON wrote as escapes -- and that the stored body then holds no match.
Both engines: google-re2 (the proxy extra) and the standard library's, its fallback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prysmai._proxy.config.policy import REDACTION_SETS
from prysmai._proxy.store import redact
from prysmai._proxy.store.redact import Redactor

from .test_redact import SAMPLES


def _redactors() -> dict[str, Redactor]:
    engines = {"re2": Redactor(REDACTION_SETS)}
    assert redact._re2 is not None, "google-re2 (the proxy extra) is not installed"
    saved = redact._re2
    try:  # the same gates compiled by the standard library (as without google-re2)
        redact._re2 = None
        redact._compile_gate.cache_clear()
        engines["re"] = Redactor(REDACTION_SETS)
    finally:
        redact._re2 = saved
        redact._compile_gate.cache_clear()
    return engines


ENGINES = _redactors()
EVERY = ENGINES["re2"]


def _matches(rule: Any, text: str) -> bool:
    """Whether ``rule`` matches in ``text``, by its expression and validator alone."""
    return any(rule.validate is None or rule.validate(m.group(0)) for m in rule.regex.finditer(text))


def _left(redactor: Redactor, text: str) -> list[str]:
    return [rule.kind for rule in redactor.rules if _matches(rule, text)]


#: Values near each set's edges, beside the samples: spellings the patterns accept that a gate
#: built from a few literals would miss, numbers that touch other digits or letters.
EXTRA = [
    "aws_SeCrEt_AcCeSs_KeY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ACIA1234567890ABCDEF",
    "xoxb-1234567890-abcdef",
    "4111111111111111",
    "5500 0000 0000 0004",
    "(555) 123-4567",
    "555.123.4567",
    "+1 (555) 123 4567",
    "10.0.0.1",
    "fe80::1ff:fe23:4567:890a",
    "GB82 WEST 1234 5698 7654 32",
    "bob@example.com",
]
_VALUES = st.sampled_from([s[1] for s in SAMPLES] + EXTRA)
#: What stands around them: JSON's escaped characters, non-ASCII letters, digits and spaces
#: (an em dash or a no-break space before a card is a \u escape ending in digits).
_GLUE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from([*'0123456789.-+:@ \n\t"\\/()[]_', "\u2014", "\u00a0", "\u0660", "\u017f", "é", "\x00"]),
    max_size=8,
)
_TEXT = st.lists(st.tuples(_GLUE, _VALUES | _GLUE), max_size=5).map(lambda parts: "".join(a + b for a, b in parts))


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _encode(value: Any, escape: frozenset[str], slash: bool, upper: bool) -> str:
    """``value`` as JSON, with the characters in ``escape`` (and control characters without a
    short escape such as ``\\n``) written as ``\\u`` escapes (every one beyond ASCII if DEL is in
    ``escape``), ``/`` as ``\\/`` if ``slash``, hex digits in upper case if ``upper``."""
    if isinstance(value, str):
        out = ['"']
        for c in value:
            if c == '"':
                out.append('\\"')
            elif c == "\\":
                out.append("\\\\")
            elif c == "/" and slash:
                out.append("\\/")
            elif c in _SHORT and c not in escape:
                out.append(_SHORT[c])
            elif c in escape or ord(c) < 0x20 or (ord(c) > 0x7E and "\x7f" in escape):
                units = c.encode("utf-16-be")
                for i in range(0, len(units), 2):
                    code = f"\\u{units[i]:02x}{units[i + 1]:02x}"
                    out.append(code.upper().replace("\\U", "\\u") if upper else code)
            else:
                out.append(c)
        return "".join(out) + '"'
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{_encode(k, escape, slash, upper)}: {_encode(v, escape, slash, upper)}" for k, v in value.items()
            )
            + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_encode(v, escape, slash, upper) for v in value) + "]"
    return json.dumps(value)


def _strings(value: Any) -> list[str]:
    """The strings of a decoded JSON value (keys too) and its integers, as text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)] if isinstance(value, int) and not isinstance(value, bool) else []


@pytest.mark.parametrize("engine", list(ENGINES))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT)
@example(text="export AWS_SeCrEt_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
@example(text="ACIA1234567890ABCDEF")
def test_whatever_a_pattern_matches_opens_its_gate_and_the_redactors(engine: str, text: str) -> None:
    redactor = ENGINES[engine]
    for i, rule in enumerate(redactor.rules):
        if _matches(rule, text):
            assert rule.gate is not None and rule.gate.search(text) is not None, (rule.kind, rule.regex.pattern, text)
            assert redactor.may_match(text)
            assert i in redactor._open(text)  # the rules a text's gates let run (google-re2: one search)
    assert _left(redactor, redactor.text(text)) == []


@pytest.mark.parametrize("engine", list(ENGINES))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(_TEXT, min_size=1, max_size=3),
    number=st.sampled_from([4111111111111111, -5500000000000004, 1733012345, 17330123456789]) | st.integers(),
    escape=st.frozensets(st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=6),
    slash=st.booleans(),
    upper=st.booleans(),
)
# What a raw gate must not miss: a card after an escaped newline (the raw text has a letter
# before it), after an em dash a client wrote as \u2014 (digits before it), an '@' as \u0040.
@example(texts=["x\n4111111111111111"], number=7, escape=frozenset(), slash=False, upper=False)
@example(texts=["card\u20144111 1111 1111 1111"], number=7, escape=frozenset("\x7f"), slash=False, upper=True)
@example(texts=["bob@example.com"], number=7, escape=frozenset("@"), slash=False, upper=False)
@example(
    texts=["AWS_SECRET_Key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
    number=7,
    escape=frozenset(),
    slash=True,
    upper=False,
)
def test_a_json_body_whose_strings_hold_a_match_opens_the_raw_gate_whatever_it_escaped(
    engine: str, texts: list[str], number: int, escape: frozenset[str], slash: bool, upper: bool
) -> None:
    redactor = ENGINES[engine]
    doc = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": t} for t in texts],
        "n": number,
        "embedding": [-0.006929283495992422, 0.0123456789012345],
        texts[0][:30]: [number, texts[-1]],
    }
    raw = _encode(doc, escape, slash, upper)
    assert json.loads(raw) == doc
    if any(_left(redactor, s) for s in _strings(doc)):
        assert redactor.may_match_json(raw), raw
    stored = redactor.json_text(raw)
    assert [s for s in _strings(json.loads(stored)) if _left(redactor, s)] == []
    if not redactor.may_match_json(raw):
        assert stored is raw  # a shut gate: the body is stored as received, not decoded


def test_what_the_gates_leave_shut_on_openai_answers() -> None:
    """What the gates are for: an OpenAI answer's ids, times, fingerprints, usage and floats
    open none of them, so it is stored without being decoded."""
    chat = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1733012345,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi, version 2.1 ships on 2025-01-15."}}],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 1024}},
        "system_fingerprint": "fp_44709d6fcb",
    }
    embeddings = {"object": "list", "data": [{"embedding": [-0.006929283495992422, 0.0123456789012345, 1e-05]}]}
    for engine, redactor in ENGINES.items():
        for doc in (chat, embeddings):
            for raw in (json.dumps(doc), json.dumps(doc, indent=2), json.dumps(doc, separators=(",", ":"))):
                assert not redactor.may_match_json(raw), (engine, raw)
        # ... while what a client may hide behind an escape opens it.
        assert redactor.may_match_json('{"content": "bob\\u0040example.com"}')
        assert redactor.may_match_json(json.dumps({"card": 4111111111111111}))
