"""Redaction: the built-in pattern sets and a project's own patterns, applied to what is stored.

Each match becomes a typed marker, ``[redacted:TYPE]`` (see :data:`MARKERS`). The writer applies a
:class:`Redactor` to a trace's bodies, metadata and error text while it builds the row
(:mod:`.capture`), so nothing that matches reaches the store -- nor, since export, the dashboard
and the CLI read the store, anything downstream of it. The request forwarded to the provider and
the answer returned to the client are never touched: this runs off the request path.

A JSON body is redacted string by string, after decoding (so a match hidden by an escape,
``alice\\u0040example.com`` or a key after a ``\\n``, is found), and written back only if something
changed. Patterns are built to run in linear time on hostile text: every one that starts with a
repeated class starts only where the class's run starts.

Most bodies hold nothing to redact, and are stored as received without being decoded: each
pattern has a *gate*, a search found in whatever the pattern matches, and a body in whose raw
text no gate is found (one google-re2 search for all of them, a DFA: linear in the body's length
whatever the number of sets) holds no match in its decoded strings either. A gate is sound in raw
JSON because it holds only ASCII characters that JSON writers do not escape and no lookaround;
a ``\\u00XX`` escape of an ASCII character, which could hide one, opens the raw gate by itself.
A body the gate opens is decoded and walked; each string runs only the patterns whose gates it
opens (one ``RE2::Set`` search says which).

What the sets look at: strings (keys and values) and integers, whose digits may be a card
number a client sent as a number; never floats, ``true``/``false`` or ``null``.

The sets:

* ``secrets`` -- provider API keys (``sk-...``, Anthropic, Google ``AIza...``, Stripe, GitHub,
  Slack, Hugging Face, Groq, xAI), bearer tokens, JWTs, private key blocks, AWS access key ids and
  AWS secret keys written next to their name;
* ``email``; ``phone`` -- international numbers written with ``+`` and North-American-shaped ones
  (``(555) 123-4567``, ``555-123-4567``): a bare run of digits is not taken for a phone number;
* ``card`` -- 13 to 19 digits (spaces or dashes allowed between them) that pass the Luhn check;
* ``iban`` -- that pass the ISO 13616 mod-97 check; ``ip`` -- IPv4 and IPv6 addresses.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re

from ..config.policy import REDACTION_SETS

try:
    # google-re2 (the proxy extra): every gate in one pass of a DFA over a body, in time linear
    # in its length whatever the number of gates; the standard library's engine tries each
    # alternative at each place (60 to 100 times slower on a chat request or answer).
    import re2 as _re2  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # without the proxy extra: the same gates, slower
    _re2 = None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, Protocol

    from ..config.policy import StoragePolicy

    Validator = Callable[[str], "list[tuple[int, int]]"]

    class Searcher(Protocol):
        """A compiled gate: a standard library pattern, or google-re2's."""

        def search(self, text: str) -> object | None: ...


#: Set name -> the type its markers carry.
MARKERS = {"secrets": "secret", "email": "email", "phone": "phone", "card": "card", "iban": "iban", "ip": "ip"}
#: A marker as it appears in stored text.
MARKER = re.compile(r"\[redacted:[a-z][a-z0-9_]{0,31}\]")


def marker(kind: str) -> str:
    return f"[redacted:{kind}]"


# -- validators: which parts of a candidate match really are one ([]: none) ---------------------------
def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(text: str) -> list[tuple[int, int]]:
    """The cards in a run of digit groups: from the left, at each group's start, the longest
    stretch of whole groups holding 13 to 19 digits that passes the Luhn check (a run may hold
    several cards, or a card and other numbers: "4111 1111 1111 1111 123")."""
    places = [i for i, c in enumerate(text) if c.isdigit()]
    digits = "".join(text[i] for i in places)
    starts = [k for k, i in enumerate(places) if k == 0 or i != places[k - 1] + 1]
    spans: list[tuple[int, int]] = []
    taken = 0
    for first in starts:
        if first < taken:
            continue
        for count in range(min(19, len(places) - first), 12, -1):
            last = first + count - 1
            end = places[last] + 1
            if (end == len(text) or not text[end].isdigit()) and _luhn(digits[first : last + 1]):
                spans.append((places[first], end))
                taken = last + 1
                break
    return spans


def _iban_ok(value: str) -> bool:
    if len(value) < 15 or len(value) > 34:
        return False
    moved = value[4:] + value[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


_IBAN_START = re.compile(r"[A-Z]{2}[0-9]{2}")


def _iban(text: str) -> list[tuple[int, int]]:
    """The IBANs in a candidate: from the left, at each place one may start (two letters, two
    digits), the longest stretch that passes the mod-97 check."""
    places = [i for i, c in enumerate(text) if c != " "]
    chars = "".join(text[i] for i in places)
    spans: list[tuple[int, int]] = []
    first = 0
    while first <= len(chars) - 15:
        if _IBAN_START.match(chars, first) and (first == 0 or text[places[first] - 1] == " "):
            for end in range(min(len(chars), first + 34), first + 14, -1):
                if _iban_ok(chars[first:end]):
                    spans.append((places[first], places[end - 1] + 1))
                    first = end
                    break
            else:
                first += 1
        else:
            first += 1
    return spans


def _phone(text: str) -> list[tuple[int, int]]:
    """The longest beginning of the candidate, ending with a group of digits, that holds 8 to 15
    digits (a candidate may run on into the next number)."""
    ends = [i + 1 for i, c in enumerate(text) if c.isdigit() and (i + 1 == len(text) or not text[i + 1].isdigit())]
    for end in reversed(ends):
        if 8 <= sum(c.isdigit() for c in text[:end]) <= 15:
            return [(0, end + (text[end : end + 1] == ")"))]
    return []


def _ipv4(text: str) -> list[tuple[int, int]]:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return []
    return [(0, len(text))]


def _ipv6(text: str) -> list[tuple[int, int]]:
    """The longest beginning of a run of hex digits and colons that is an IPv6 address (a run
    may go on into a word: "fe80::1:Bearer")."""
    text = text[:45]  # the longest written form of an address
    if text.count(":") < 2:
        return []
    ends = (
        {len(text)}
        | {i for i, c in enumerate(text) if c == ":"}
        | {i + 2 for i in range(len(text)) if text[i : i + 2] == "::"}
    )
    for end in sorted(ends, reverse=True):
        candidate = text[:end]
        # "a::b" and "::1" parse, but read more often as code (Foo::bar) or loopback than as a
        # person's address: at least three colons, or a group of three hex digits or more.
        if candidate.count(":") < 3 and not any(len(g) >= 3 for g in candidate.split(":")):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return [(0, end)]
    return []


# -- the patterns ------------------------------------------------------------------------------------
#: Set -> its patterns: (regular expression, validator or None, group to replace or None for the
#: whole match, gate). Each expression starts with what it matches first and checks what stands
#: before that afterwards, in a lookbehind: an expression that starts with a literal or a character
#: class is searched for at C speed.
#:
#: A gate is an expression found in every text the pattern matches (``None``: none, the pattern
#: always runs), with no lookaround and only ASCII characters that a JSON writer never escapes
#: unasked (no quote, backslash, slash or control character). So it is found in the raw JSON of a
#: body whose decoded strings hold a match too -- unless the body spells an ASCII character as a
#: ``\u00XX`` escape, which the raw gate treats as "maybe" (see :meth:`Redactor.json_text`).
#: Where a pattern refuses a start after certain characters, its gate keeps only the part of that
#: refusal that holds in raw JSON too (the card's: not after a digit or a dot).
_KEY = r"[A-Za-z0-9_\-]"  # what a key is made of
_SETS: dict[str, list[tuple[str, Any, str | None, str | None]]] = {
    "secrets": [
        # A private key block (its headers too); without its END line (a cut body), to the end of
        # what a block may hold.
        (
            r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY-----(?:(?!-----END)(?:[A-Za-z0-9+/=\s:,._\-]|\\[nr]))*"
            r"(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY-----)?",
            None,
            None,
            r"PRIVATE KEY-----",
        ),
        # OpenAI, Anthropic (sk-ant-), Prysm and most "sk-" keys: with at least one digit. A key
        # starts a word: the letters before "sk-" in "risk-..." are not a key's.
        (rf"sk-(?<![A-Za-z0-9]sk-)(?=[A-Za-z_\-]*[0-9]){_KEY}{{20,}}", None, None, r"sk-"),
        (r"[sr]k_(?<![A-Za-z0-9][sr]k_)(?:live|test)_[A-Za-z0-9]{16,}", None, None, r"k_(?:live|test)_"),
        (rf"AIza(?<![A-Za-z0-9]AIza){_KEY}{{35}}", None, None, r"AIza"),  # Google
        (r"gh[pousr]_(?<![A-Za-z0-9]gh[pousr]_)[A-Za-z0-9]{36,}", None, None, r"gh[pousr]_"),
        (r"github_pat_(?<![A-Za-z0-9]github_pat_)[A-Za-z0-9_]{22,}", None, None, r"github_pat_"),
        (r"xox[abposr]-(?<![A-Za-z0-9]xox[abposr]-)[A-Za-z0-9-]{10,}", None, None, r"xox[abposr]-"),  # Slack
        (r"hf_(?<![A-Za-z0-9]hf_)[A-Za-z0-9]{30,}", None, None, r"hf_"),  # Hugging Face
        (r"gsk_(?<![A-Za-z0-9]gsk_)[A-Za-z0-9]{20,}", None, None, r"gsk_"),  # Groq
        (r"xai-(?<![A-Za-z0-9]xai-)[A-Za-z0-9]{20,}", None, None, r"xai-"),  # xAI
        (
            r"A[KSBC][IC]A(?<![A-Za-z0-9]A[KSBC][IC]A)[0-9A-Z]{16}(?![A-Za-z0-9])",
            None,
            None,
            r"A[KSBC][IC]A[0-9A-Z]{16}",
        ),  # AWS access key id
        (
            r"[Aa][Ww][Ss]_?(?ai:secret_?(?:access_?)?key)[\"'\s:=]{1,5}(?P<value>[A-Za-z0-9/+=]{40})"
            r"(?![A-Za-z0-9/+=])",
            None,
            "value",
            r"[Aa][Ww][Ss]_?(?i:secret)",
        ),
        # A bearer token (at least one character that is not a letter: "Bearer instruments" is prose).
        (
            r"[Bb]earer(?<![A-Za-z0-9_][Bb]earer)\s+(?P<value>(?=[A-Za-z]*[0-9._~+/\-])[A-Za-z0-9._~+/\-]{16,}=*)",
            None,
            "value",
            r"[Bb]earer",
        ),
        (r"eyJ(?<![A-Za-z0-9]eyJ)[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", None, None, r"eyJ"),
    ],
    "email": [(r"(?<![\w.%+'-])[\w.%+'-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])", None, None, r"@")],
    "iban": [
        (
            r"[A-Z](?<![\w][A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]){11,}(?![\w])",
            _iban,
            None,
            r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11}",
        )
    ],
    "card": [
        (
            r"[0-9](?<![\w.][0-9])(?:[ -]?[0-9]){12,}(?![\w]|[.,][0-9])",
            _card,
            None,
            # Not after a digit or a dot: the fractional digits of a float (an embedding's
            # "-0.0069292834959924") do not open it. In raw JSON the character before a card's
            # first digit is never a dot, and a digit there is a \u escape's last one, whose own
            # run of digits then starts the gate's match.
            r"(?:^|[^0-9.])[0-9](?:[ -]?[0-9]){12}",
        )
    ],
    "phone": [
        (r"\+(?<![\w+]\+)[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,5}\)?){1,8}(?![\w])", _phone, None, r"\+[0-9]"),
        (
            r"[(0-9](?<![\w.-][(0-9])(?:(?<=\()[0-9]{3}\)|(?<=[0-9])[0-9]{2})[ .-][0-9]{3}[ .-][0-9]{4}"
            r"(?![\w]|[.-][0-9])",
            None,
            None,
            r"[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}",
        ),
    ],
    "ip": [
        (
            r"[0-9](?<![\w.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![\w]|\.[0-9])",
            _ipv4,
            None,
            r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",
        ),
        (
            r"[0-9A-Fa-f](?<![\w:][0-9A-Fa-f])[0-9A-Fa-f]{0,3}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*",
            _ipv6,
            None,
            r":[0-9A-Fa-f]{0,4}:",
        ),
    ],
}
assert set(_SETS) == set(MARKERS) == set(REDACTION_SETS)
#: The order sets run in: secrets first, so a key is one marker, not a key cut by a card or a phone;
#: the checked numbers (IBAN, card) before the e-mail addresses their digits may touch.
_ORDER = ("secrets", "iban", "card", "email", "phone", "ip")


@functools.lru_cache(maxsize=256)
def _compile_gate(pattern: str) -> Searcher:
    if _re2 is None:
        return re.compile(pattern)
    # Over the text's UTF-8 bytes, one character a byte: a gate is ASCII, and a byte of a
    # character beyond ASCII is none of its characters, as the character is not.
    options = _re2.Options()
    options.encoding = _re2.Options.Encoding.LATIN1
    options.log_errors = False
    searcher: Searcher = _Bytes(_re2.compile(pattern.encode(), options))
    return searcher


class _Bytes:
    """A google-re2 gate searched in a text's UTF-8 bytes (a lone surrogate included)."""

    __slots__ = ("regex",)

    def __init__(self, regex: Any) -> None:
        self.regex = regex

    def search(self, text: str) -> object | None:
        found: object | None = self.regex.search(text.encode("utf-8", "surrogatepass"))
        return found


class _GateSet:
    """Which of some gates are found in a text, in one search (google-re2's ``RE2::Set``)."""

    __slots__ = ("set",)

    def __init__(self, patterns: list[str]) -> None:
        assert _re2 is not None
        options = _re2.Options()
        options.encoding = _re2.Options.Encoding.LATIN1
        options.log_errors = False
        self.set = _re2.Set.SearchSet(options)
        for pattern in patterns:
            self.set.Add(pattern.encode())
        self.set.Compile()

    def found(self, text: str) -> list[int] | None:
        """The indexes of the gates found in ``text``; ``None`` for none -- or for a search
        that gave up (out of memory), which a caller that knows some gate is there reads as
        "any of them"."""
        hits: list[int] | None = self.set.Match(text.encode("utf-8", "surrogatepass"))
        return hits


def _found(gate: Searcher, text: str) -> bool:
    """Whether ``gate`` is found in ``text``."""
    return gate.search(text) is not None


class _Rule:
    __slots__ = ("gate", "group", "kind", "regex", "validate")

    def __init__(
        self,
        kind: str,
        regex: re.Pattern[str],
        validate: Validator | None = None,
        group: str | None = None,
        gate: Searcher | None = None,
    ) -> None:
        # gate: found in every text regex matches (None: no such search)
        self.kind = kind
        self.regex = regex
        self.validate = validate
        self.group = group
        self.gate = gate

    def apply(self, text: str, counts: dict[str, int]) -> str:
        replacement = marker(self.kind)
        validate, group = self.validate, self.group

        def sub(m: re.Match[str]) -> str:
            found = m.group(0)
            if group is not None:
                spans = [(m.start(group) - m.start(), m.end(group) - m.start())]
            elif validate is None:
                counts[self.kind] = counts.get(self.kind, 0) + 1
                return replacement
            else:
                spans = validate(found)
                if not spans:
                    return found
            counts[self.kind] = counts.get(self.kind, 0) + len(spans)
            parts: list[str] = []
            at = 0
            for start, end in spans:
                parts += (found[at:start], replacement)
                at = end
            parts.append(found[at:])
            return "".join(parts)

        return self.regex.sub(sub, text)


#: The longest string :attr:`Redactor._clean` keeps, and how many strings it keeps at most.
_SHORT = 64
_CLEAN_MAX = 4096


class Redactor:
    """The compiled patterns of some sets and custom patterns; :meth:`text` and :meth:`value`
    redact. ``counts`` says how many markers of each type it has put in so far."""

    def __init__(self, sets: Iterable[str], patterns: Iterable[tuple[str, str]] = ()) -> None:
        chosen = set(sets)
        self.rules: list[_Rule] = []
        gates: list[str] = []
        for name in _ORDER:
            if name in chosen:
                flags = re.DOTALL if name == "secrets" else 0
                for regex, validate, group, gate in _SETS[name]:
                    compiled = None if gate is None else _compile_gate(gate)
                    self.rules.append(_Rule(MARKERS[name], re.compile(regex, flags), validate, group, compiled))
                    gates += [] if gate is None else [gate]
        for name, regex in patterns:
            self.rules.append(_Rule(name, re.compile(regex)))
        self.counts: dict[str, int] = {}
        # Every gate at once, in one search: a text none of them opens has nothing to redact
        # (most bodies). None: a pattern without a gate (a custom one) must always run.
        ungated = any(rule.gate is None for rule in self.rules)
        self._gate = None if ungated else _compile_gate("|".join(gates))
        self._raw_gate = None if ungated else _compile_gate("|".join([*gates, _ASCII_ESCAPE]))
        # Which gates a text opens, in one search too: the gated rules' indexes in ``rules``.
        self._gated = [i for i, rule in enumerate(self.rules) if rule.gate is not None]
        self._ungated = [i for i, rule in enumerate(self.rules) if rule.gate is None]
        #: Short strings no gate opens, as met: the keys and roles, models and ids every body of
        #: a walk repeats ("role", "content", "assistant") then cost a set lookup, not a search.
        self._clean: set[str] = set()
        self._gate_set = _GateSet(gates) if _re2 is not None and gates else None

    def may_match(self, text: str) -> bool:
        """Whether some pattern's gate lets it try ``text`` (``False``: nothing can match)."""
        return self._gate is None or _found(self._gate, text)

    def may_match_json(self, text: str) -> bool:
        """Whether the decoded strings of the JSON document ``text`` may hold a match
        (``False``: none can, however the document escaped them)."""
        return self._raw_gate is None or _found(self._raw_gate, text)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _open(self, text: str) -> frozenset[int]:
        """The indexes (in ``rules``) of the rules that may match ``text``, some gate of which
        is known to be found in it."""
        if self._gate_set is not None:
            hits = self._gate_set.found(text)
            if hits is not None:
                return frozenset([*(self._gated[h] for h in hits), *self._ungated])
            return frozenset(range(len(self.rules)))  # a search that gave up: every rule
        return frozenset(i for i, rule in enumerate(self.rules) if rule.gate is None or _found(rule.gate, text))

    def text(self, text: str) -> str:
        """``text`` with every match replaced by its marker. Until nothing more matches: a match
        that ran on into a neighbour ("a@b.uk-c+d@e.uk") leaves the neighbour's rest, which a
        marker before it makes a match of its own."""
        short = len(text) <= _SHORT
        if short and text in self._clean:
            return text
        if not self.may_match(text):
            if short and len(self._clean) < _CLEAN_MAX:
                self._clean.add(text)
            return text
        open_rules = self._open(text)
        for _ in range(8):
            before = text
            for i, rule in enumerate(self.rules):
                if i not in open_rules:
                    continue
                redacted = rule.apply(text, self.counts)
                if redacted is not text:
                    text = redacted
                    if not self.may_match(text):
                        return text
                    open_rules = self._open(text)
            if text == before:
                break
        return text

    def matches(self, text: str) -> bool:
        """Whether any pattern matches somewhere in ``text`` (validated)."""
        if not self.may_match(text):
            return False
        open_rules = self._open(text)
        for i, rule in enumerate(self.rules):
            if i not in open_rules:
                continue
            if rule.validate is None:
                if rule.regex.search(text) is not None:
                    return True
                continue
            for m in rule.regex.finditer(text):
                if rule.validate(m.group(0)):
                    return True
        return False

    def value(self, value: Any) -> Any:
        """A decoded JSON value with its strings (keys included) and integers redacted: the same
        object when nothing matched. Raises ``RecursionError`` for a value nested too deeply."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            changed = False
            for k, v in value.items():
                k2, v2 = self.text(k), self.value(v)
                changed = changed or k2 is not k or v2 is not v
                out[k2] = v2
            return out if changed else value
        if isinstance(value, list):
            items = [self.value(v) for v in value]
            return items if any(a is not b for a, b in zip(items, value)) else value
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
            redacted = self.text(text)
            return value if redacted == text else redacted
        return value

    def json_text(self, text: str, doc: Any = None) -> str:
        """A body's text redacted: a JSON document (``doc``, or parsed here) string by string,
        written back only if something changed; other text as text. Raises ``RecursionError``
        for a document nested too deeply to walk."""
        if not self.may_match_json(text):
            return text
        if doc is None and text.lstrip()[:1] in ("{", "["):
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
        if doc is None:
            return self.text(text)
        redacted = self.value(doc)
        if redacted is doc:
            return text
        return json.dumps(redacted, ensure_ascii=False)


#: A printable ASCII character written as a \u escape ("\u0040"): what could hide a gate's text
#: in a JSON document (no JSON writer does so unasked).
_ASCII_ESCAPE = r"\\u00[2-7][0-9A-Fa-f]"


@functools.lru_cache(maxsize=64)
def redactor_for(sets: tuple[str, ...], patterns: tuple[tuple[str, str], ...]) -> Redactor:
    """The compiled :class:`Redactor` of a policy's sets and patterns (compiled once)."""
    return Redactor(sets, patterns)


def of_policy(policy: StoragePolicy) -> Redactor:
    return redactor_for(policy.redact, policy.patterns)
