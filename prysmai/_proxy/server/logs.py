"""The proxy's log: one format for its own records and uvicorn's, with timestamps, no colour.

``text``: ``2025-01-31T12:00:05.123Z WARNING prysmai.proxy: message`` (UTC). ``json``: one object
per line, ``{"time", "level", "logger", "message"}`` (plus ``client``, ``method``, ``path``,
``status`` for access-log lines and ``exception`` when there is one). Control characters in a
message (a request path can hold them) are escaped in text lines, so a log line is one line and
cannot drive a terminal. Colour is never used, so ``NO_COLOR`` and non-tty outputs are honoured.
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
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: uvicorn's server messages come from "uvicorn.error", which is not about errors.
_NAMES = {"uvicorn.error": "uvicorn"}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = _NAMES.get(record.name, record.name)
        line = f"{_timestamp(record)} {record.levelname} {name}: {_escape(record.getMessage())}"
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
        return json.dumps(doc, ensure_ascii=False)


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
