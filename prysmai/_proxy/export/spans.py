"""A stored trace as one span of OpenTelemetry's GenAI semantic conventions (the
semantic-conventions-genai repository's client inference span, as it stands now).

Pure data: what the span is called, when it started and ended, its attributes and status.
:mod:`.worker` hands it to OpenTelemetry's SDK. Everything comes from the stored row -- bodies
already redacted, capped or reduced to their outline (``capture = "metadata"``) by the writer --
so nothing is exported that was not stored.

The span's trace id is the Prysm trace id (``X-Prysm-Trace-Id``, 32 hex digits); its span id is
derived from it: the same trace exported twice (after a crash) is the same span.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: The proxy's endpoints as GenAI operations (others are named by their path).
OPERATIONS = {
    "chat/completions": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
#: ``openai.api.type`` of the endpoints that have one.
API_TYPES = {"chat/completions": "chat_completions", "responses": "responses"}
#: Provider hosts (suffixes) and their ``gen_ai.provider.name``.
PROVIDER_HOSTS = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure.ai.openai"),
    ("services.ai.azure.com", "azure.ai.inference"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.moonshot.ai", "moonshot_ai"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("amazonaws.com", "aws.bedrock"),
)
#: OpenAI's finish reasons as the output messages' schema names them.
FINISH_REASONS = {"tool_calls": "tool_call", "function_call": "tool_call"}


class Span:
    """One span: ``name``, start and end (ns since the epoch), ``attributes``, and ``error``
    (``None``, or the status description of a failed call)."""

    __slots__ = ("attributes", "end_ns", "error", "name", "span_id", "start_ns", "trace_id")

    def __init__(
        self,
        name: str,
        trace_id: int,
        span_id: int,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any],
        error: str | None,
    ) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.error = error


def ids_of(trace_id: str) -> tuple[int, int]:
    """(OpenTelemetry trace id, span id) of a Prysm trace id."""
    try:
        tid = int(trace_id, 16) if len(trace_id) == 32 else 0
    except ValueError:
        tid = 0
    digest = hashlib.sha256(trace_id.encode("utf-8", "surrogatepass")).digest()
    if not tid:  # an id from elsewhere (a script): a trace id of its own, the same each time
        tid = int.from_bytes(digest[16:], "big") or 1
    return tid, int.from_bytes(digest[:8], "big") or 1


def sampled(trace_id: str, ratio: float) -> bool:
    """Whether ``--otlp-sample ratio`` exports this trace: decided by a hash of its id, so the
    same trace gets the same answer every time (a Prysm id's last 64 bits are not uniform -- the
    UUID variant sits in them -- so OpenTelemetry's ``TraceIdRatioBased`` would not do)."""
    if ratio >= 1.0:
        return True
    digest = hashlib.sha256(b"sample:" + trace_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < ratio * 2**64


def provider_name(kind: str | None, base_url: str | None, name: str | None) -> str:
    """``gen_ai.provider.name``: the well-known value of the provider's host, ``azure.ai.openai``
    for an Azure provider, else ``openai`` -- every provider the proxy forwards to speaks
    OpenAI's API, which is what this attribute's value describes."""
    if kind == "azure":
        return "azure.ai.openai"
    if kind == "demo":
        return "prysmai.demo"
    host = (urlsplit(base_url).hostname or "") if base_url else ""
    for suffix, known in PROVIDER_HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return known
    return "openai"


def _body(text: Any) -> Any:
    if not isinstance(text, str) or text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def build(
    row: Mapping[str, Any],
    providers: Mapping[str, Mapping[str, Any]],
    *,
    content: bool = False,
    price_source: str | None = None,
) -> Span:
    """The span of a stored trace (``row``: its columns by name). ``providers``: ``"project/
    provider"`` -> ``{"kind", "base_url"}`` (the current config; a provider no longer configured
    gets no server address). ``content``: add the (stored, so redacted) messages."""
    endpoint = str(row.get("endpoint") or "")
    operation = OPERATIONS.get(endpoint, endpoint or "unknown")
    model = row.get("model")
    request = _body(row.get("request_body"))
    response = _body(row.get("response_body"))
    request = request if isinstance(request, dict) else {}
    response = response if isinstance(response, dict) else {}
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation}
    provider = providers.get(f"{row.get('project')}/{row.get('provider')}") or {}
    attrs["gen_ai.provider.name"] = provider_name(provider.get("kind"), provider.get("base_url"), row.get("provider"))
    if endpoint in API_TYPES:
        attrs["openai.api.type"] = API_TYPES[endpoint]
    attrs["gen_ai.request.model"] = model
    attrs["gen_ai.response.model"] = row.get("response_model")
    if isinstance(response.get("id"), str):
        attrs["gen_ai.response.id"] = response["id"]
    reasons = _finish_reasons(response)
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = reasons
    if row.get("stream"):
        attrs["gen_ai.request.stream"] = True
        if row.get("ttft_ms") is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = float(row["ttft_ms"]) / 1000.0
    attrs["gen_ai.usage.input_tokens"] = row.get("prompt_tokens")
    attrs["gen_ai.usage.output_tokens"] = row.get("completion_tokens")
    usage: Any = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    in_details: Any = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    out_details: Any = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    if isinstance(in_details, dict):
        attrs["gen_ai.usage.cache_read.input_tokens"] = _int(in_details.get("cached_tokens"))
    if isinstance(out_details, dict):
        attrs["gen_ai.usage.reasoning.output_tokens"] = _int(out_details.get("reasoning_tokens"))
    _request_parameters(request, attrs)
    attrs["gen_ai.conversation.id"] = row.get("session_id")
    attrs["user.id"] = row.get("user_id")
    base_url = provider.get("base_url")
    if base_url and provider.get("kind") != "demo":
        parts = urlsplit(base_url)
        attrs["server.address"] = parts.hostname
        attrs["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    attrs["http.response.status_code"] = _int(row.get("http_status"))
    error = None
    if row.get("status") != "success":
        attrs["error.type"] = _error_type(row, response)
        error = str(row.get("error") or row.get("status"))[:500]
    attrs["prysm.project"] = row.get("project")
    attrs["prysm.provider"] = row.get("provider")
    attrs["prysm.key_id"] = row.get("key_id")
    attrs["prysm.endpoint"] = endpoint
    attrs["prysm.status"] = row.get("status")
    attrs["prysm.cost_usd"] = _number(row.get("cost_usd"))
    attrs["prysm.price_source"] = price_source if row.get("cost_usd") is not None else "unpriced"
    _metadata(row.get("metadata"), attrs)
    if content:
        _content(endpoint, request, response, attrs)
    start = int(float(row["created_at"]) * 1e9)
    latency = row.get("latency_ms")
    end = start + (int(float(latency) * 1e6) if latency is not None else 0)
    trace_id, span_id = ids_of(str(row["id"]))
    name = f"{operation} {model}" if model else operation
    return Span(name, trace_id, span_id, start, end, {k: v for k, v in attrs.items() if v is not None}, error)


def _finish_reasons(response: Mapping[str, Any]) -> list[str]:
    choices = response.get("choices")
    if isinstance(choices, list):
        return [str(c.get("finish_reason") or "error") for c in choices if isinstance(c, dict)]
    status = response.get("status")
    if status == "completed":
        return ["stop"]
    if status == "incomplete":
        details = response.get("incomplete_details")
        return [str(details.get("reason")) if isinstance(details, dict) and details.get("reason") else "length"]
    if status in ("failed", "cancelled"):
        return ["error"]
    return []


def _request_parameters(request: Mapping[str, Any], attrs: dict[str, Any]) -> None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if _int(request.get(key)) is not None:
            attrs["gen_ai.request.max_tokens"] = request[key]
            break
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        attrs[f"gen_ai.request.{key}"] = _number(request.get(key))
    stop = request.get("stop")
    if isinstance(stop, str):
        attrs["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        attrs["gen_ai.request.stop_sequences"] = list(stop)
    attrs["gen_ai.request.seed"] = _int(request.get("seed"))
    n = _int(request.get("n"))
    if n is not None and n != 1:
        attrs["gen_ai.request.choice.count"] = n
    reasoning = request.get("reasoning")
    effort = request.get("reasoning_effort") or (reasoning.get("effort") if isinstance(reasoning, dict) else None)
    if isinstance(effort, str):
        attrs["gen_ai.request.reasoning.level"] = effort
    if isinstance(request.get("previous_response_id"), str):
        attrs["gen_ai.request.previous_response.id"] = request["previous_response_id"]


def _error_type(row: Mapping[str, Any], response: Mapping[str, Any]) -> str:
    """A low-cardinality class of the failure: the provider's error code or type, else the HTTP
    status, else ``timeout`` / ``cancelled``."""
    err = response.get("error")
    if isinstance(err, dict):
        for key in ("code", "type"):
            if isinstance(err.get(key), str) and err[key]:
                return str(err[key])
    if row.get("status") in ("timeout", "cancelled"):
        return str(row["status"])
    if row.get("http_status"):
        return str(row["http_status"])
    return "_OTHER"


def _metadata(text: Any, attrs: dict[str, Any]) -> None:
    meta = _body(text)
    if not isinstance(meta, dict):
        return
    for key, value in meta.items():
        if isinstance(value, (str, bool, int, float)) and not (isinstance(value, float) and value != value):
            attrs[f"prysm.metadata.{key}"] = value
        else:
            attrs[f"prysm.metadata.{key}"] = json.dumps(value, ensure_ascii=False)


# -- content (opt-in) --------------------------------------------------------------------------------
def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return raw
    return raw


def _parts(content: Any) -> list[dict[str, Any]]:
    """A chat or Responses message's content as the convention's parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for item in content if isinstance(content, list) else [content]:
        if isinstance(item, str):
            parts.append({"type": "text", "content": item})
            continue
        if not isinstance(item, dict):
            continue
        kind = str(item.get("type") or "")
        if kind in ("text", "input_text", "output_text"):
            parts.append({"type": "text", "content": str(item.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "content": str(item.get("refusal") or "")})
        elif "image" in kind:
            url = item.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url.startswith("data:"):
                mime = url[5:].split(";", 1)[0] or None
                parts.append({"type": "blob", "modality": "image", "mime_type": mime, "content": url.split(",", 1)[-1]})
            elif isinstance(url, str):
                parts.append({"type": "uri", "modality": "image", "uri": url})
            elif isinstance(item.get("file_id"), str):
                parts.append({"type": "file", "modality": "image", "file_id": item["file_id"]})
        else:
            parts.append({"type": kind or "unknown"})
    return parts


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict):
            fn: Any = call.get("function") if isinstance(call.get("function"), dict) else call
            out.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": fn.get("name"),
                    "arguments": _arguments(fn.get("arguments")),
                }
            )
    return out


def _input_messages(endpoint: str, request: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(input messages, system instructions given apart from them)."""
    messages: list[Any] = []
    system: list[Any] = []
    if endpoint == "chat/completions" and isinstance(request.get("messages"), list):
        for m in request["messages"]:
            if not isinstance(m, dict):
                continue
            role = str(m.get("role") or "user")
            if role == "tool":
                messages.append(
                    {
                        "role": "tool",
                        "parts": [
                            {"type": "tool_call_response", "id": m.get("tool_call_id"), "response": m.get("content")}
                        ],
                    }
                )
                continue
            parts = _parts(m.get("content")) + _tool_calls(m.get("tool_calls"))
            messages.append({"role": role, "parts": parts})
    elif endpoint == "responses":
        if isinstance(request.get("instructions"), str):
            system = [{"type": "text", "content": request["instructions"]}]
        items = request.get("input")
        for item in [items] if isinstance(items, str) else items if isinstance(items, list) else []:
            if isinstance(item, str):
                messages.append({"role": "user", "parts": [{"type": "text", "content": item}]})
            elif isinstance(item, dict) and item.get("type") == "function_call":
                messages.append({"role": "assistant", "parts": _tool_calls([{"id": item.get("call_id"), **item}])})
            elif isinstance(item, dict) and item.get("type") == "function_call_output":
                part = {"type": "tool_call_response", "id": item.get("call_id"), "response": item.get("output")}
                messages.append({"role": "tool", "parts": [part]})
            elif isinstance(item, dict):
                messages.append({"role": str(item.get("role") or "user"), "parts": _parts(item.get("content"))})
    elif endpoint == "completions":
        prompt = request.get("prompt")
        for p in [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []:
            if isinstance(p, str):
                messages.append({"role": "user", "parts": [{"type": "text", "content": p}]})
    return messages, system


def _output_messages(endpoint: str, response: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    if isinstance(response.get("choices"), list):
        for c in response["choices"]:
            if not isinstance(c, dict):
                continue
            reason = str(c.get("finish_reason") or "error")
            reason = FINISH_REASONS.get(reason, reason)
            message = c.get("message")
            if isinstance(message, dict):
                parts = _parts(message.get("content"))
                if message.get("refusal"):
                    parts.append({"type": "text", "content": str(message["refusal"])})
                parts += _tool_calls(message.get("tool_calls"))
                if isinstance(message.get("function_call"), dict):
                    parts += _tool_calls([{"function": message["function_call"]}])
                out.append({"role": str(message.get("role") or "assistant"), "parts": parts, "finish_reason": reason})
            elif "text" in c:
                out.append({"role": "assistant", "parts": _parts(c.get("text")), "finish_reason": reason})
    elif endpoint == "responses":
        found: list[Any] = []
        for item in response.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                found += _parts(item.get("content"))
            elif item.get("type") == "function_call":
                found += _tool_calls([{"id": item.get("call_id"), **item}])
            elif item.get("type") == "reasoning":
                for s in item.get("summary") or []:
                    if isinstance(s, dict) and isinstance(s.get("text"), str):
                        found.append({"type": "reasoning", "content": s["text"]})
        if not found and isinstance(response.get("output_text"), str):
            found = [{"type": "text", "content": response["output_text"]}]
        reasons = _finish_reasons(response)
        if found:
            out.append({"role": "assistant", "parts": found, "finish_reason": reasons[0] if reasons else "stop"})
    return out


def _tool_definitions(request: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for tool in request.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        fn: Any = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if tool.get("type") == "function" or "function" in tool:
            out.append(
                {
                    "type": "function",
                    "name": fn.get("name"),
                    "description": fn.get("description"),
                    "parameters": fn.get("parameters"),
                }
            )
        else:
            out.append({"type": str(tool.get("type") or "unknown")})
    return out


def _content(endpoint: str, request: Mapping[str, Any], response: Mapping[str, Any], attrs: dict[str, Any]) -> None:
    messages, system = _input_messages(endpoint, request)
    if messages:
        attrs["gen_ai.input.messages"] = _json(messages)
    if system:
        attrs["gen_ai.system_instructions"] = _json(system)
    output = _output_messages(endpoint, response)
    if output:
        attrs["gen_ai.output.messages"] = _json(output)
    tools = _tool_definitions(request)
    if tools:
        attrs["gen_ai.tool.definitions"] = _json(tools)
