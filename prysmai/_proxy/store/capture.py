"""What the proxy captured about one exchange, and how it becomes a trace row.

The request path only fills an :class:`Exchange` (raw bytes and ``perf_counter`` timestamps);
everything that costs CPU -- JSON parsing of the response, SSE reassembly, usage, TTFT, cost --
happens in :func:`finalize`, in the store's writer process (or on its writer thread).

TTFT is the time from the proxy receiving the request (``Exchange.t0``, taken when the ASGI app
is entered) to the moment the proxy forwarded the chunk that completed the first SSE event
carrying generated content: a chat/completions ``delta.content``, ``delta.tool_calls``,
``delta.function_call`` or ``delta.refusal`` that is not empty, a legacy completions ``text``, or a
Responses-API ``response.output_text.delta`` / ``response.refusal.delta`` /
``response.function_call_arguments.delta`` / ``response.custom_tool_call_input.delta`` event.
A role-only first frame, an empty delta or a usage chunk does not stop the clock.
"""

from __future__ import annotations

import json
import re
import time

from ..config import pricedb
from ..config.policy import StoragePolicy
from ..config.pricing import cost_of, first_price
from ..config.projects import DEFAULT_PROJECT
from . import keep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from ..config.pricing import Price, PriceTable

#: Stream events parsed (about 6 us each) between two yields of the GIL while a long streamed
#: answer is reassembled on the writer thread.
EVENTS_PER_SLICE = 32
#: A ``usage`` member with an object value: the mark of the event that carries a stream's usage
#: (other chunks carry ``"usage":null`` when usage was asked for).
USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
#: Responses-API stream events that carry generated content (they stop the TTFT clock).
RESPONSES_CONTENT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)


#: The policy of an exchange whose project says nothing (secrets redacted, bodies up to 1 MiB).
DEFAULT_POLICY = StoragePolicy()


class Exchange:
    """One request as the proxy saw it. Filled on the request path, finalized off it."""

    __slots__ = (  # noqa: RUF023
        "chunks",
        "created_at",
        "endpoint",
        "error",
        "http_status",
        "id",
        "key_id",
        "metadata",
        "method",
        "model",
        "notes",
        "policy",
        "price_ref",
        "project",
        "provider",
        "provider_prices",
        "provider_request_id",
        "request_body",
        "request_content_type",
        "request_json",
        "response_body",
        "response_content_type",
        "sent_model",
        "sent_secrets",
        "session_id",
        "spend_counted",
        "status",
        "stream",
        "submitted",
        "t0",
        "t_end",
        "user_id",
        # Appended, not sorted in: a journal written before it holds the fields in this order.
        "error_code",
    )

    def __init__(self, trace_id: str, created_at: float, t0: float, method: str, endpoint: str) -> None:
        self.id = trace_id
        self.created_at = created_at
        self.t0 = t0
        self.t_end: float | None = None
        self.method = method
        self.endpoint = endpoint
        self.model: str | None = None
        self.stream = False
        self.request_body: bytes = b""
        self.request_content_type = ""
        self.request_json: Any = None
        self.user_id: str | None = None
        self.session_id: str | None = None
        self.metadata: dict[str, Any] | None = None
        self.notes: list[str] = []
        self.status = "success"
        self.http_status: int | None = None
        self.error: str | None = None
        #: The ``code`` of the error the proxy answered itself (``project_rate_limit_exceeded``,
        #: ``project_budget_exceeded``, ``model_not_routed``...); ``None`` for a provider's answer.
        self.error_code: str | None = None
        self.response_body: bytes = b""
        self.response_content_type = ""
        #: For streams: (perf_counter when forwarded, raw upstream bytes), in order.
        self.chunks: list[tuple[float, bytes]] = []
        self.provider_request_id: str | None = None
        self.key_id: str | None = None
        #: The project of the key, the provider the request went to (its name in the config) and
        #: that provider's own prices (model -> Price; consulted before the global table).
        self.project: str = DEFAULT_PROJECT
        self.provider: str | None = None
        self.provider_prices: Mapping[str, Price] | None = None
        #: The model name sent upstream when a prefix rule changed it (``ollama/llama3.1`` -> ``llama3.1``).
        self.sent_model: str | None = None
        #: How the price database knows the provider (see ``Provider.price_ref``).
        self.price_ref: tuple[str | None, str | None] | None = None
        #: What of it is stored: the project's policy (redaction, capture, body cap).
        self.policy: StoragePolicy = DEFAULT_POLICY
        self.submitted = False
        #: The proxy counted this answer's cost towards the project's budget as it completed
        #: (the writer then does not count it again).
        self.spend_counted = False
        #: The credentials sent upstream with this request (the provider's, the client's
        #: ``X-Prysm-Upstream-Key``): masked in what is stored (:func:`scrub`), never sent to the
        #: writer process.
        self.sent_secrets: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"Exchange(id={self.id!r}, {self.method} {self.endpoint}, status={self.status!r})"


#: Shorter values are not masked: they could not be told from ordinary text (credentials are longer).
MIN_SECRET_BYTES = 8


def scrub(ex: Exchange, secrets: Iterable[bytes]) -> None:
    """Mask every occurrence of a known credential in what ``ex`` captured -- a provider's error
    that echoes the key it was sent, a client that pasted one into a prompt -- before the trace is
    stored: each byte of it becomes ``*``, so the lengths and the stream's chunk boundaries (with
    their timestamps) stay as they were. Runs on the writer thread, in the proxy's process: the
    credentials never reach the writer process."""
    found = [s for s in dict.fromkeys((*secrets, *ex.sent_secrets)) if len(s) >= MIN_SECRET_BYTES]
    ex.sent_secrets = ()
    if not found:
        return
    ex.request_body = _mask(ex.request_body, found)
    ex.response_body = _mask(ex.response_body, found)
    if ex.chunks:
        joined = b"".join(chunk for _, chunk in ex.chunks)
        masked = _mask(joined, found)  # across chunk boundaries too
        if masked is not joined:
            chunks, pos = [], 0
            for t, chunk in ex.chunks:
                chunks.append((t, masked[pos : pos + len(chunk)]))
                pos += len(chunk)
            ex.chunks = chunks
    texts = [s.decode("latin-1") for s in found]
    if ex.error:
        ex.error = _mask_text(ex.error, texts)
    ex.notes = [_mask_text(note, texts) for note in ex.notes]


def scrubbed(ex: Exchange, secrets: Iterable[bytes]) -> Exchange:
    """``ex`` as :func:`scrub` leaves it, without changing ``ex`` (whose answer may still be on its
    way to the client): ``ex`` itself when it holds no known credential, else a masked copy."""
    found = [s for s in dict.fromkeys((*secrets, *ex.sent_secrets)) if len(s) >= MIN_SECRET_BYTES]
    if not found or not _holds_any(ex, found):
        return ex
    copy = Exchange.__new__(Exchange)
    for name in Exchange.__slots__:
        setattr(copy, name, getattr(ex, name))
    copy.notes = list(ex.notes)
    scrub(copy, found)
    return copy


def _holds_any(ex: Exchange, secrets: list[bytes]) -> bool:
    texts = [s.decode("latin-1") for s in secrets]
    streamed = b"".join(chunk for _, chunk in ex.chunks) if ex.chunks else b""  # across chunk boundaries
    return (
        any(s in (ex.request_body or b"") or s in (ex.response_body or b"") or s in streamed for s in secrets)
        or bool(ex.error and any(t in ex.error for t in texts))
        or any(t in note for note in ex.notes for t in texts)
    )


def _mask(data: bytes, secrets: list[bytes]) -> bytes:
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, b"*" * len(secret))
    return data


def _mask_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "*" * len(secret))
    return text


def body_text(body: bytes, content_type: str) -> str | None:
    """A body as text for storage; binary bodies (uploads, audio) are summarised."""
    if not body:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(body)} bytes of {content_type or 'binary data'}, not stored>"


def iter_sse(chunks: list[tuple[float, bytes]]) -> Any:
    """Yield ``(time, event_type, data)`` for each complete SSE event; ``time`` is the time of the
    chunk that completed the event."""
    buf = b""
    for t, chunk in chunks:
        if (
            not buf
            and chunk[:6] == b"data: "
            and chunk[-2:] == b"\n\n"
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):
            yield t, None, chunk[6:-2]  # the common chunk: exactly one event of one data line
            continue
        buf += chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            raw, buf = buf[:end], buf[end + 2 :]
            event_type = None
            data: list[bytes] = []
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event_type = line[6:].strip().decode("utf-8", "replace")
            if data:
                yield t, event_type, b"\n".join(data)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _usage_numbers(usage: Any) -> tuple[int | None, int | None, int | None, int | None]:
    """(prompt, completion, total, cached) from a chat/completions or Responses usage object."""
    if not isinstance(usage, dict):
        return None, None, None, None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    total = usage.get("total_tokens")
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt, completion, total, cached = _int(prompt), _int(completion), _int(total), _int(cached)
    if total is None and prompt is not None:
        total = prompt + (completion or 0)
    return prompt, completion, total, cached


class _StreamState:
    """Reassembles a streamed chat/completions/Responses answer."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ttft: float | None = None
        self.id: str | None = None
        self.created: Any = None
        self.model: str | None = None
        self.object: str | None = None
        self.usage: Any = None
        self.error: str | None = None
        self.choices: dict[int, dict[str, Any]] = {}
        self.final_response: Any = None
        self.output_text: list[str] = []
        self.other_events = 0
        self.too_deep = 0

    def _content(self, t: float) -> None:
        if self.ttft is None:
            self.ttft = (t - self.t0) * 1000.0

    def feed(self, t: float, event_type: str | None, data: bytes) -> None:
        """One event's data, parsed here."""
        if data.strip() == b"[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            self.other_events += 1
            return
        except RecursionError:
            self.too_deep += 1
            return
        self.feed_parsed(t, event_type, obj)

    def feed_parsed(self, t: float, event_type: str | None, obj: Any) -> None:
        """One event's data, already parsed."""
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event_type
        if (kind and kind.startswith("response.")) or kind == "error":
            self._feed_responses(t, kind, obj)
            return
        if isinstance(obj.get("error"), dict):
            self.error = str(obj["error"].get("message") or obj["error"])
            return
        self.id = self.id or obj.get("id")
        self.created = self.created or obj.get("created")
        self.model = obj.get("model") or self.model
        self.object = self.object or obj.get("object")
        if obj.get("usage"):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict):
                self._feed_choice(t, choice)

    def _feed_choice(self, t: float, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        st = self.choices.get(index)
        if st is None:
            st = self.choices[index] = {"role": None, "content": [], "refusal": [], "tools": {}, "finish_reason": None}
        if choice.get("finish_reason"):
            st["finish_reason"] = choice["finish_reason"]
        text = choice.get("text")  # legacy completions
        if isinstance(text, str) and text:
            st["content"].append(text)
            self._content(t)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        if delta.get("role"):
            st["role"] = delta["role"]
        for key in ("content", "refusal"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                st[key].append(value)
                self._content(t)
        calls = delta.get("tool_calls")
        if isinstance(calls, list) and calls:
            self._content(t)
            for call in calls:
                if not isinstance(call, dict):
                    continue
                slot = st["tools"].setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
        fc = delta.get("function_call")
        if isinstance(fc, dict) and fc:
            self._content(t)
            slot = st["tools"].setdefault("function_call", {"name": "", "arguments": ""})
            slot["name"] += fc.get("name") or ""
            slot["arguments"] += fc.get("arguments") or ""

    def _feed_responses(self, t: float, kind: str, obj: dict[str, Any]) -> None:
        if kind in RESPONSES_CONTENT_EVENTS:
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                self._content(t)
                if kind == "response.output_text.delta":
                    self.output_text.append(delta)
        elif kind == "error":
            err: dict[str, Any] = obj["error"] if isinstance(obj.get("error"), dict) else obj
            self.error = str(err.get("message") or err.get("code") or "error event")
        resp = obj.get("response")
        if isinstance(resp, dict):
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self.final_response = resp
            self.id = resp.get("id") or self.id
            self.model = resp.get("model") or self.model
            if resp.get("usage"):
                self.usage = resp["usage"]
            if kind == "response.failed" and isinstance(resp.get("error"), dict):
                self.error = str(resp["error"].get("message") or resp["error"])

    def body(self) -> Any:
        if self.final_response is not None:
            return self.final_response
        if self.output_text:
            return {"object": "response", "id": self.id, "model": self.model, "output_text": "".join(self.output_text)}
        if not self.choices:
            return None
        completions = self.object == "text_completion"
        choices = []
        for index in sorted(self.choices, key=lambda i: (not isinstance(i, int), i)):
            st = self.choices[index]
            if completions:
                choices.append({"index": index, "text": "".join(st["content"]), "finish_reason": st["finish_reason"]})
                continue
            message: dict[str, Any] = {
                "role": st["role"] or "assistant",
                "content": "".join(st["content"]) if st["content"] else None,
            }
            if st["refusal"]:
                message["refusal"] = "".join(st["refusal"])
            tools = st["tools"]
            if "function_call" in tools:
                message["function_call"] = tools.pop("function_call")
            if tools:
                message["tool_calls"] = [tools[i] for i in sorted(tools)]
            choices.append({"index": index, "message": message, "finish_reason": st["finish_reason"]})
        return {
            "id": self.id,
            "object": "text_completion" if completions else "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        }


def _feed_events(state: _StreamState, events: list[tuple[float, str | None, bytes]]) -> None:
    """Feed stream events, their data parsed with one ``json.loads`` (a call per event cost more
    than the parsing itself: ~9 us an event against ~1.5 us); a group in which any event is not a
    single JSON value (``[DONE]`` aside) is parsed event by event instead."""
    kept = [(t, event_type, d) for t, event_type, d in events if d.strip() != b"[DONE]"]
    try:
        parsed = json.loads(b"[" + b",".join(d for _, _, d in kept) + b"]") if kept else []
    except (ValueError, RecursionError):
        parsed = None
    if parsed is None or len(parsed) != len(kept):  # one event's data was not one value
        for t, event_type, d in kept:
            state.feed(t, event_type, d)
        return
    for (t, event_type, _), value in zip(kept, parsed):
        state.feed_parsed(t, event_type, value)


def finalize(ex: Exchange, prices: PriceTable) -> dict[str, Any]:
    """The trace row for a finished exchange (runs on the writer thread)."""
    latency = None if ex.t_end is None else round((ex.t_end - ex.t0) * 1000.0, 3)
    ttft = None
    usage: Any = None
    response_model: str | None = None
    response_text: str | None
    error = ex.error
    notes = list(ex.notes)
    response_doc: Any = None
    if ex.stream and ex.chunks:
        state = _StreamState(ex.t0)
        events = list(iter_sse(ex.chunks))
        for start in range(0, len(events), EVENTS_PER_SLICE):
            if start:
                time.sleep(0)  # a long answer: let the event loop have the GIL (see store.GIL_SLICE)
            _feed_events(state, events[start : start + EVENTS_PER_SLICE])
        ttft = None if state.ttft is None else round(state.ttft, 3)
        usage = state.usage
        response_model = state.model
        reassembled = state.body()
        if state.too_deep:
            notes.append(f"{state.too_deep} stream event(s) nested too deeply to parse: not reassembled")
        if reassembled is not None:
            try:
                response_text = json.dumps(reassembled, ensure_ascii=False)
            except RecursionError:
                notes.append("response nested too deeply to reassemble: stored as received")
                reassembled = None
        if reassembled is None:
            response_text = body_text(b"".join(c for _, c in ex.chunks), ex.response_content_type)
        else:
            response_doc = reassembled
        if state.error and not error:
            error = state.error
            if ex.status == "success":
                ex.status = "error"
    else:
        response_text = body_text(ex.response_body, ex.response_content_type)
        if ex.response_body[:1] == b"{":
            try:
                parsed = json.loads(ex.response_body)
            except ValueError:
                parsed = None
            except RecursionError:
                parsed = None
                notes.append("response body nested too deeply to parse: stored as text (no usage, no cost)")
            if isinstance(parsed, dict):
                response_doc = parsed
                usage = parsed.get("usage")
                model = parsed.get("model")
                response_model = model if isinstance(model, str) else None
                err = parsed.get("error")
                if not error and isinstance(err, dict) and (ex.http_status or 200) >= 400:
                    error = str(err.get("message") or err.get("code") or err)
    prompt, completion, total, cached = _usage_numbers(usage)
    cost = _cost(ex, prices, response_model, prompt, completion, cached)
    row = _captured(ex)
    row.update(
        latency_ms=latency,
        ttft_ms=ttft,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cost_usd=cost,
        response_body=response_text,
        error=error,
        metadata=None if ex.metadata is None else json.dumps(ex.metadata, ensure_ascii=False),
        notes=json.dumps(notes, ensure_ascii=False) if notes else None,
        response_model=response_model,
    )
    return keep.apply(row, ex.policy, response_doc=response_doc)


def _cost(
    ex: Exchange,
    prices: PriceTable,
    response_model: str | None,
    prompt: int | None,
    completion: int | None,
    cached: int | None,
) -> float | None:
    """The cost of these token counts for ``ex`` (``None``: unknown). The provider's own prices
    first (a local model priced 0 is known free), then the table; in each, the model as the
    provider reported it, as it was sent to the provider, then as the client sent it; then
    genai-prices, for this provider."""
    names = (response_model, ex.sent_model, ex.model)
    price = first_price((ex.provider_prices, prices.prices), names)
    cost = cost_of(price, prompt, completion, cached)
    if price is None and ex.price_ref is not None:
        for i, name in enumerate(names):
            if name and name not in names[:i]:
                cost = pricedb.cost(*ex.price_ref, name, prompt, completion, cached)
                if cost is not None:
                    break
    return cost


def answer_cost(ex: Exchange, prices: PriceTable) -> float | None:
    """The cost of ``ex``'s answer, priced as :func:`finalize` prices it but read from the usage
    alone (no reassembly): what the proxy counts towards a project's budget as the answer
    completes, before its end reaches the client."""
    usage: Any = None
    model: Any = None
    if ex.stream and ex.chunks:
        for _, _, data in iter_sse(ex.chunks):
            if USAGE_OBJECT.search(data) is None:  # most events: no usage, not parsed
                continue
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                continue
            if not isinstance(obj, dict):
                continue
            response = obj.get("response")  # Responses API: the final response carries it
            found = response if isinstance(response, dict) and response.get("usage") else obj
            if found.get("usage"):
                usage, model = found["usage"], found.get("model") or model
    elif ex.response_body[:1] == b"{" and b'"usage"' in ex.response_body:
        try:
            parsed = json.loads(ex.response_body)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            usage, model = parsed.get("usage"), parsed.get("model")
    prompt, completion, _, cached = _usage_numbers(usage)
    return _cost(ex, prices, model if isinstance(model, str) else None, prompt, completion, cached)


def _captured(ex: Exchange) -> dict[str, Any]:
    """The fields of a row taken from the exchange as captured, with no parsing: what
    :func:`finalize` and :func:`fallback_row` share."""
    return {
        "id": ex.id,
        "created_at": ex.created_at,
        "method": ex.method,
        "endpoint": ex.endpoint,
        "model": ex.model,
        "stream": int(ex.stream),
        "status": ex.status,
        "http_status": ex.http_status,
        "request_body": body_text(ex.request_body, ex.request_content_type),
        "user_id": ex.user_id,
        "session_id": ex.session_id,
        "provider_request_id": ex.provider_request_id,
        "key_id": ex.key_id,
        "project": ex.project,
        "provider": ex.provider,
        "error_code": ex.error_code,
    }


def fallback_row(ex: Exchange, exc: BaseException) -> dict[str, Any]:
    """The row of an exchange :func:`finalize` could not build: what was captured, unparsed (no
    usage, cost or reassembly), with a note saying why."""
    notes = [*ex.notes, f"trace stored unparsed: building it failed ({type(exc).__name__}: {str(exc)[:200]})"]
    metadata = None
    if ex.metadata is not None:
        try:
            metadata = json.dumps(ex.metadata)
        except (ValueError, TypeError, RecursionError):
            notes.append("metadata could not be stored")
    response = b"".join(c for _, c in ex.chunks) if ex.chunks else ex.response_body
    row = _captured(ex)
    row.update(
        latency_ms=None if ex.t_end is None else round((ex.t_end - ex.t0) * 1000.0, 3),
        response_body=body_text(response, ex.response_content_type),
        error=ex.error,
        metadata=metadata,
        notes=json.dumps(notes),
    )
    try:
        return keep.apply(row, ex.policy)
    except Exception as exc:  # never store what the policy could not be applied to
        row.update(request_body=None, response_body=None, metadata=None, error=None)
        row["notes"] = json.dumps(
            [f"bodies, metadata and error not stored: applying the policy failed ({type(exc).__name__})"]
        )
        return row
