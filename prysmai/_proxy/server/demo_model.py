"""``prysm-demo``: the built-in offline model behind ``prysmai proxy --upstream demo``.

An :class:`~.upstream.Upstream` that answers the OpenAI API shapes (chat completions, completions,
embeddings, responses -- streamed and not -- and models) without any network, deterministically.
Streams really stream: each word is a separate chunk, a few milliseconds apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Any

MODEL = "prysm-demo"
_WORD_DELAY = 0.004


def _tokens(text: str) -> int:
    """A rough token count (about 4 characters per token), at least 1 for non-empty text."""
    return max(1, round(len(text) / 4)) if text else 0


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("text") or value.get("content") or "")
    return ""


def _reply(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    snippet = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return f'Hello from prysm-demo, the offline model built into prysmai. You said: "{snippet}"'


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class _Answer:
    """An answer of the demo model, as an :class:`~.upstream.UpstreamResponse`."""

    __slots__ = ("_body", "_events", "raw_headers", "status")

    def __init__(self, status: int, content_type: bytes, body: bytes = b"", events: list[bytes] | None = None) -> None:
        self.status = status
        self.raw_headers = [(b"content-type", content_type)]
        self._body = body
        self._events = events

    async def read(self) -> bytes:
        if self._events is None:
            return self._body
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._events is None:
            yield self._body
            return
        for i, event in enumerate(self._events):
            if i:
                await asyncio.sleep(_WORD_DELAY)
            yield event

    def buffered(self) -> bytes:
        return b""  # (each event is made when its time comes)

    async def aclose(self) -> None:
        pass


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def _json(status: int, obj: Any) -> _Answer:
    return _Answer(status, b"application/json", json.dumps(obj).encode())


def _error(status: int, message: str, code: str) -> _Answer:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})


class DemoUpstream:
    """Answers like the OpenAI API, offline."""

    async def send(self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> _Answer:
        path = urlsplit(url).path.rstrip("/")
        endpoint = path.split("/v1/", 1)[-1] if "/v1/" in path else path.lstrip("/")
        if method == "GET" and endpoint == "models":
            return _json(
                200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "prysmai"}]}
            )
        if method != "POST" or endpoint not in ("chat/completions", "completions", "embeddings", "responses"):
            return _error(404, f"prysm-demo does not serve {method} /{endpoint}", "unknown_url")
        doc = json.loads(body or b"{}")
        seed = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]
        model = doc.get("model") or MODEL
        if endpoint == "embeddings":
            return self._embeddings(doc, model)
        if endpoint == "responses":
            return self._responses(doc, model, seed)
        if endpoint == "completions":
            prompt = _text_of(doc.get("prompt"))
        else:
            messages = doc.get("messages")
            if not isinstance(messages, list) or not messages:
                # As the real API does: a request without messages is a client error.
                return _error(400, "'messages' must contain at least one message.", "invalid_value")
            last = messages[-1] if isinstance(messages[-1], dict) else {}
            if doc.get("tools") and last.get("role") == "user" and not doc.get("stream"):
                return self._tool_call(doc, model, seed, _text_of(last.get("content")))
            prompt = _text_of(last.get("content"))
        return self._chat(doc, model, seed, prompt, endpoint == "completions")

    async def aclose(self) -> None:
        pass

    def _embeddings(self, body: dict[str, Any], model: str) -> _Answer:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims = int(body.get("dimensions") or 8)
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append(
                {"object": "embedding", "index": i, "embedding": [(digest[j % 32] - 128) / 128 for j in range(dims)]}
            )
        tokens = sum(_tokens(str(item)) for item in items)
        return _json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _tool_call(self, body: dict[str, Any], model: str, seed: str, prompt: str) -> _Answer:
        """Given tools and a user's turn, the demo model calls the first tool with the user's words."""
        tool = body["tools"][0] if isinstance(body["tools"], list) and body["tools"] else {}
        name = str((tool.get("function") or {}).get("name") or "tool") if isinstance(tool, dict) else "tool"
        call = {
            "id": "call_" + seed[:12],
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"query": prompt})},
        }
        usage = {"prompt_tokens": _tokens(prompt) + 30, "completion_tokens": 12}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": None}
        return _json(
            200,
            {
                "id": "chatcmpl-" + seed,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )

    def _chat(self, body: dict[str, Any], model: str, seed: str, prompt: str, legacy: bool) -> _Answer:
        text = _reply(prompt)
        usage = {"prompt_tokens": _tokens(prompt) + 8, "completion_tokens": _tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        rid = ("cmpl-" if legacy else "chatcmpl-") + seed
        obj = "text_completion" if legacy else "chat.completion"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            if legacy:
                choice["text"] = text
            else:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            return _json(
                200, {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": rid, "object": obj + ("" if legacy else ".chunk"), "created": created, "model": model}

        def chunk(choice: dict[str, Any]) -> bytes:
            doc = {**base, "choices": [choice]}
            if include_usage:
                doc["usage"] = None
            return _sse(doc)

        events = []
        if not legacy:
            events.append(chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
        for word in _words(text):
            if legacy:
                events.append(chunk({"index": 0, "text": word, "finish_reason": None}))
            else:
                events.append(chunk({"index": 0, "delta": {"content": word}, "finish_reason": None}))
        events.append(
            chunk({"index": 0, ("text" if legacy else "delta"): "" if legacy else {}, "finish_reason": "stop"})
        )
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return _Answer(200, b"text/event-stream", events=events)

    def _responses(self, body: dict[str, Any], model: str, seed: str) -> _Answer:
        prompt = _text_of(body.get("input"))
        text = _reply(prompt)
        usage = {"input_tokens": _tokens(prompt) + 8, "output_tokens": _tokens(text)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        rid, mid = "resp_" + seed, "msg_" + seed
        message = {
            "id": mid,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        final = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [message],
            "usage": usage,
        }
        if not body.get("stream"):
            return _json(200, final)
        pending = {**final, "status": "in_progress", "output": [], "usage": None}
        events = [_sse({"type": "response.created", "sequence_number": 0, "response": pending}, "response.created")]
        seq = 1
        for word in _words(text):
            events.append(
                _sse(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": seq,
                        "item_id": mid,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word,
                    },
                    "response.output_text.delta",
                )
            )
            seq += 1
        events.append(
            _sse({"type": "response.completed", "sequence_number": seq, "response": final}, "response.completed")
        )
        return _Answer(200, b"text/event-stream", events=events)
