"""Stream-usage rewriting: asking the upstream for a stream's token usage, and hiding that we did.

To count a stream's tokens the proxy adds ``stream_options.include_usage`` to a streamed request
the client sent without it (:func:`inject_usage`); :class:`UsageStripper` then drops the usage-only
chunk and the ``"usage":null`` members from what the client receives, so its stream looks as it
asked. :func:`stream_finished` tells whether a stream's end-of-stream marker has been forwarded.
"""

from __future__ import annotations

import json
import re

from ..store.capture import USAGE_OBJECT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_USAGE_NULL = (
    re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])'),
    re.compile(rb'"usage"\s*:\s*null\s*,\s*'),
)
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class UsageStripper:
    """Makes a stream for which the proxy injected ``include_usage`` look as the client asked:
    drops the usage-only chunk and the ``"usage":null`` field the provider adds to every other
    chunk. Works on whole SSE events (a partial event is held until its end arrives)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._buf + chunk if self._buf else chunk
        if b'"usage"' not in data:
            ends = list(_EVENT_END.finditer(data))
            if not ends:
                self._buf = data
                return b""
            cut = ends[-1].end()
            self._buf = data[cut:]
            return data[:cut]
        out: list[bytes] = []
        pos = 0
        for m in _EVENT_END.finditer(data):
            out.append(self._event(data[pos : m.end()]))
            pos = m.end()
        self._buf = data[pos:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return self._event(rest) if rest else b""

    @staticmethod
    def _event(event: bytes) -> bytes:
        if b'"usage"' not in event:
            return event
        # The common case, every content chunk: strip ``"usage":null`` by bytes. (A JSON string
        # cannot hold an unescaped quote, so these patterns only match a member of an object.)
        stripped, n = _USAGE_NULL[0].subn(b"", event, count=1)
        if n:
            return stripped
        stripped, n = _USAGE_NULL[1].subn(b"", event, count=1)
        if n:
            return stripped
        if USAGE_OBJECT.search(event) is None:  # (the mark of the usage-only chunk)
            return event
        for line in event.splitlines():  # maybe the usage-only chunk: parse this one event
            if line.startswith(b"data:"):
                try:
                    obj = json.loads(line[5:])
                except ValueError:
                    break
                if isinstance(obj, dict) and obj.get("usage") and not obj.get("choices"):
                    return b""  # the usage-only chunk the client did not ask for
                break
        return event


def inject_usage(body: bytes, parsed: dict[str, Any]) -> tuple[bytes, bool]:
    """Ask the upstream for streaming usage; returns (body to send, whether we injected)."""
    options = parsed.get("stream_options")
    if options is None and "stream_options" not in parsed:
        start = body.find(b"{")
        return b'{"stream_options":{"include_usage":true},' + body[start + 1 :], True
    if isinstance(options, dict):
        if options.get("include_usage") is True:
            return body, False  # the client asked: it gets the usage chunk
        changed = dict(parsed)
        changed["stream_options"] = {**options, "include_usage": True}
        return json.dumps(changed, ensure_ascii=False).encode("utf-8"), True
    return body, False  # something odd: let the upstream judge it


def stream_finished(chunks: list[tuple[float, bytes]]) -> bool:
    """Whether the upstream's end-of-stream marker has been forwarded already."""
    if not chunks:
        return False
    last = chunks[-1][1]
    return b"[DONE]" in last[-16:] or b'"response.completed"' in last or b'"response.incomplete"' in last
