"""The proxy's log: one format for its own records and uvicorn's, with timestamps, no colour.

``text``: ``2025-01-31T12:00:05.123Z WARNING prysmai.proxy: message`` (UTC). ``json``: one object
per line, ``{"time", "level", "logger", "message"}`` (plus ``client``, ``method``, ``path``,
``status`` for access-log lines and ``exception`` when there is one). What a message may carry
from a client (a request path, a header) is escaped (:func:`escape`): control characters, the
Unicode line and paragraph separators and the bidirectional controls, so a log line is one line
for every reader, reads in its own order and cannot drive a terminal; in JSON lines they are
``\\uXXXX`` escapes of the same value. Colour is never used, so ``NO_COLOR`` and non-tty outputs
are honoured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, TextIO

LOGGERS = ("prysmai", "uvicorn")
#: Never written raw where a person or a log reader sees text (the log, the CLI's tables): C0 and C1
#: controls and DEL; U+2028 and U+2029, at which readers split lines; the bidirectional controls
#: (U+202E turns what follows around); unpaired surrogates (not text at all).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_BUT_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
#: In a JSON line: what JSON leaves raw (it escapes the C0 controls itself).
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
#: uvicorn's server messages come from "uvicorn.error", which is not about errors.
_NAMES = {"uvicorn.error": "uvicorn"}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, lines: bool = False) -> str:
    """``text`` with every :data:`UNSAFE` character as an escape (``\\x1b``, ``\\u202e``);
    ``lines=True`` keeps newlines and tabs (a body shown as text)."""
    return (_UNSAFE_BUT_LINES if lines else UNSAFE).sub(_escape_char, text)


def _json_line(doc: dict[str, Any]) -> str:
    # Valid JSON either way: the escapes decode to the same characters.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(doc, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = _NAMES.get(record.name, record.name)
        line = f"{_timestamp(record)} {record.levelname} {name}: {escape(record.getMessage())}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": _NAMES.get(record.name, record.name),
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            doc.update(client=args[0], method=args[1], path=args[2], status=args[4])
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return _json_line(doc)


@contextlib.contextmanager
def configured(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> Iterator[logging.Logger]:
    """Send the ``prysmai`` and ``uvicorn`` loggers to one handler while the block runs; yields
    ``prysmai.proxy``. Everything is put back afterwards (``main()`` may run inside a test process
    or another program).

    At ``info``, uvicorn's own start-up chatter stays out (its warnings and errors do not)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    numeric = logging.getLevelName(level.upper())
    levels = {
        "prysmai": numeric,
        "uvicorn": numeric if numeric <= logging.DEBUG else logging.WARNING,
        # Access lines are INFO records; whether there are any is uvicorn's access_log switch.
        "uvicorn.access": logging.INFO,
    }
    saved = [(lg, lg.level, lg.propagate) for lg in map(logging.getLogger, (*LOGGERS, "uvicorn.access"))]
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    try:
        yield logging.getLogger("prysmai.proxy")
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        for logger, old_level, old_propagate in saved:
            logger.setLevel(old_level)
            logger.propagate = old_propagate
