"""A fast fake OpenAI upstream on loopback: chat completions, plain and streamed, with usage.

Raw asyncio protocol (on uvloop when installed): no framework, so the upstream costs a few tens
of microseconds per request and is never the bottleneck of what it measures.

    python bench/server.py --port 0            # prints {"event": "listening", "port": N}

Every ``POST .../chat/completions`` answers. ``"stream": true`` sends an SSE stream of
``--chunks`` content chunks (the role chunk and the first content chunk at once, then one chunk
every ``--chunk-delay-ms``), a finish chunk, a usage chunk when ``stream_options.include_usage``
is set, and ``[DONE]``. The model name may override both, so one server serves several shapes
through proxies that only forward the body: ``bench-c20-d2`` is 20 chunks, 2 ms apart.
``GET .../models`` lists one model; anything else is a 404 in OpenAI's error shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from typing import Any

from _common import emit, run_async

_MODEL_CHUNKS = re.compile(r"-c(\d+)")
_MODEL_DELAY = re.compile(r"-d(\d+(?:\.\d+)?)")
_MAX_HEAD = 64 * 1024


class Settings:
    def __init__(self, chunks: int, chunk_delay_ms: float, words: int) -> None:
        self.chunks = chunks
        self.chunk_delay = chunk_delay_ms / 1000.0
        self.words = words


def _response_head(status: str, content_type: str, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{framing}\r\n"
        "openai-processing-ms: 0\r\nx-request-id: req_bench\r\n\r\n"
    ).encode("latin-1")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection. Requests are handled one at a time, in order."""

    counter = 0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed stream is being written: parse the next request after it
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's class is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    # -- request parsing -------------------------------------------------------------------
    def _process(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._close()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
            except ValueError:
                self._close()
                return
            length = 0
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                lname = name.strip().lower()
                if lname == "content-length":
                    length = int(value.strip())
                elif lname == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            start = end + 4
            if chunked:
                parsed = _parse_chunked(self.buf, start)
                if parsed is None:
                    return
                body, consumed = parsed
            else:
                if len(self.buf) < start + length:
                    return
                body = bytes(self.buf[start : start + length])
                consumed = start + length
            del self.buf[:consumed]
            self._handle(method, target, body)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # -- answering -------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _handle(self, method: str, target: str, body: bytes) -> None:
        path = target.split("?", 1)[0]
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                request: dict[str, Any] = json.loads(body) if body else {}
            except ValueError:
                self._error("400 Bad Request", "invalid JSON body")
                return
            self._chat(request)
        elif method == "GET" and path.endswith("/models"):
            payload = _dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]})
            self._write(_response_head("200 OK", "application/json", len(payload)) + payload)
        else:
            self._error("404 Not Found", f"no route {method} {path}")

    def _error(self, status: str, message: str) -> None:
        payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
        self._write(_response_head(status, "application/json", len(payload)) + payload)

    def _chat(self, request: dict[str, Any]) -> None:
        UpstreamProtocol.counter += 1
        rid = f"chatcmpl-bench{UpstreamProtocol.counter}"
        model = str(request.get("model") or "bench")
        created = int(time.time())
        prompt_tokens = 9
        if not request.get("stream"):
            words = self.settings.words
            answer = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": " ".join(["hello"] * words),
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": words,
                    "total_tokens": prompt_tokens + words,
                },
                "system_fingerprint": "fp_bench",
            }
            payload = _dumps(answer)
            self._write(_response_head("200 OK", "application/json", len(payload)) + payload)
            return

        chunks = self.settings.chunks
        delay = self.settings.chunk_delay
        match = _MODEL_CHUNKS.search(model)
        if match:
            chunks = int(match.group(1))
        match = _MODEL_DELAY.search(model)
        if match:
            delay = float(match.group(1)) / 1000.0
        options = request.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        base: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_bench",
        }

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                chunk["usage"] = None
            return _chunked(b"data: " + _dumps(chunk) + b"\n\n")

        head = _response_head("200 OK", "text/event-stream; charset=utf-8", None)
        # The role chunk and the first content chunk go at once (before the rest is even built,
        # so time to first token is not inflated by this server); then one chunk per delay.
        self._write(head + event({"role": "assistant", "content": "", "refusal": None}) + event({"content": "tok0 "}))
        content_events = [event({"content": f"tok{i} "}) for i in range(1, chunks)]
        tail = [event({}, "stop")]
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": chunks,
                "total_tokens": prompt_tokens + chunks,
            }
            tail.append(_chunked(b"data: " + _dumps(dict(base, choices=[], usage=usage)) + b"\n\n"))
        tail.append(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        if delay <= 0 or not content_events:
            self._write(b"".join(content_events) + b"".join(tail))
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._drip(content_events, b"".join(tail), delay))

    async def _drip(self, events: list[bytes], tail: bytes, delay: float) -> None:
        try:
            for ev in events:
                await asyncio.sleep(delay)
                if self.closed:
                    return
                self._write(ev)
            self._write(tail)
        finally:
            self.busy = False
            if self.buf and not self.closed:
                self._process()


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body beginning at ``start``; None while incomplete, else (body, end)."""
    pos = start
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            # Skip trailers up to the empty line.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


async def serve(host: str, port: int, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(settings), host, port, backlog=1024)
    sock = server.sockets[0]
    emit({"event": "listening", "host": host, "port": sock.getsockname()[1]})
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
    parser.add_argument("--words", type=int, default=8, help="words in a non-streamed answer")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(args.chunks, args.chunk_delay_ms, args.words)
    with contextlib.suppress(KeyboardInterrupt):
        run_async(serve(args.host, args.port, settings), use_uvloop=not args.no_uvloop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
