"""What the store keeps of a project's traces: its :class:`StoragePolicy`.

A policy says whether bodies are kept (``capture``), which patterns are redacted from what is kept
(``redact``: built-in sets by name, and the project's own regular expressions), how large a stored
body may be, and how long a trace is kept (``retention_seconds``). Each project has one (from the
config file, else from the proxy's flags); the store's writer applies it when it builds a trace's
row (:mod:`..store.redact`, :mod:`..store.capture`), never on the request path.

Standard library only: the CLI checks flags with it before the proxy's extra is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: ``capture``: keep the bodies (redacted), or only what describes the exchange.
CAPTURE_MODES = ("full", "metadata")
#: The built-in pattern sets (their patterns: :mod:`..store.redact`).
REDACTION_SETS = ("secrets", "email", "phone", "card", "iban", "ip")
#: What is redacted when nothing is said.
DEFAULT_REDACT = ("secrets",)
#: Stored request and response bodies larger than this are truncated (``--max-stored-body-bytes``).
DEFAULT_MAX_STORED_BODY_BYTES = 1024 * 1024
#: A custom pattern's name: it becomes its marker, ``[redacted:NAME]``.
PATTERN_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*\Z", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class PolicyError(ValueError):
    """A setting of a storage policy that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class StoragePolicy:
    """What is kept of a trace (see the module docstring). Hashable: the writer compiles each
    policy's patterns once."""

    capture: str = "full"
    redact: tuple[str, ...] = DEFAULT_REDACT
    #: The project's own patterns: (name, regular expression), matched as Python ``re`` patterns.
    patterns: tuple[tuple[str, str], ...] = ()
    #: Bytes of a stored body at most (0: no limit).
    max_body_bytes: int = DEFAULT_MAX_STORED_BODY_BYTES
    #: Traces older than this are deleted (``None``: kept for ever).
    retention_seconds: float | None = None

    def __post_init__(self) -> None:
        check_capture(self.capture)
        check_sets(self.redact)
        for name, pattern in self.patterns:
            check_pattern(name, pattern)
        if self.max_body_bytes < 0:
            raise PolicyError("the stored body size limit must be 0 (no limit) or more bytes")
        if self.retention_seconds is not None and not self.retention_seconds > 0:
            raise PolicyError("retention must be longer than 0")

    def as_tuple(self) -> tuple[object, ...]:
        """Plain values (for the writer process's frames)."""
        return (self.capture, self.redact, self.patterns, self.max_body_bytes, self.retention_seconds)

    @classmethod
    def from_tuple(cls, values: tuple[Any, ...]) -> StoragePolicy:
        capture, redact, patterns, max_body_bytes, retention = values
        return cls(
            str(capture),
            tuple(str(name) for name in redact),
            tuple((str(n), str(p)) for n, p in patterns),
            int(max_body_bytes),
            None if retention is None else float(retention),
        )


def check_capture(value: str) -> str:
    if value not in CAPTURE_MODES:
        raise PolicyError(f'capture must be "full" or "metadata", not {value!r}')
    return value


def check_sets(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in REDACTION_SETS:
            sets = ", ".join(REDACTION_SETS)
            raise PolicyError(f"{name!r} is not a redaction set; the sets are: {sets}")
    return names


def check_pattern(name: str, pattern: str) -> None:
    """A custom pattern: a marker-friendly name and a regular expression that compiles and cannot
    match the empty string (it would put a marker between every two characters)."""
    if not PATTERN_NAME.match(name):
        raise PolicyError(
            f"redaction pattern name {name!r}: use 1 to 32 lowercase letters, digits or '_', starting with a letter"
        )
    if name in REDACTION_SETS:
        raise PolicyError(f"redaction pattern name {name!r} is a built-in set's name; choose another")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PolicyError(f"redaction pattern {name!r} is not a valid regular expression: {exc}") from None
    if compiled.fullmatch(""):
        raise PolicyError(f"redaction pattern {name!r} matches the empty text; make it match at least one character")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` in seconds (more than 0)."""
    found = _DURATION.match(text)
    if not found or not float(found.group(1)) > 0:
        raise PolicyError(f"{text!r} is not a duration; write a number and a unit, like 30d, 12h, 90m or 2w")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2).lower()]


def parse_sets(text: str) -> tuple[str, ...]:
    """``--redact secrets,email`` (``none``: nothing)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("none",):
        return ()
    return check_sets(names)


def parse_pattern(text: str) -> tuple[str, str]:
    """``--redact-pattern NAME=REGEX``."""
    name, sep, pattern = text.partition("=")
    if not sep:
        raise PolicyError(f"--redact-pattern takes NAME=REGEX, like employee_id=EMP-[0-9]{{6}}, not {text!r}")
    check_pattern(name.strip(), pattern)
    return name.strip(), pattern
