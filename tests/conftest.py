"""Shared test peers: loopback HTTP servers that record what they receive, and a clean process.

* ``proxy_server`` plays the Prysm proxy (where redirected and monitored clients must land);
* ``openai_server`` plays api.openai.com: clients that target OpenAI's default URL reach it
  through ``loopback_http_client``, a real http client whose transport only swaps the host, so
  the request still crosses a real socket and the client still "targets" the default URL.

Both speak enough of the OpenAI API for the SDK to parse their answers, streamed or not.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

OPENAI_MAJOR = int(openai.__version__.split(".")[0])

if OPENAI_MAJOR >= 3:
    import httpx2 as default_httpx
else:
    import httpx as default_httpx

PRYSM_KEY = "sk-prysm-test-0123456789"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: The X-Prysm-Trace-Id the "proxy" server answered this request with.
    trace_id: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Plan:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _chat(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def _chat_chunks(model: str, words: list[str]) -> Iterator[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    for word in words:
        yield {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def _response(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700000000,
        "model": model,
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 3,
            "output_tokens": 2,
            "total_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


class RecordingServer(ThreadingHTTPServer):
    """A loopback OpenAI-compatible server on a free port that records every request."""

    daemon_threads = True
    request_queue_size = 256  # the default (5) resets connections under concurrent tests

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.requests: list[Recorded] = []
        self._plans: list[_Plan] = []
        self._lock = threading.Lock()
        self.delay = 0.0
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, name=f"{name}-server", daemon=True
        )

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def url(self) -> str:
        """The base URL a client should use: the proxy's ``/api/v1`` or OpenAI's ``/v1``."""
        return self.origin + ("/api/v1" if self.name == "proxy" else "/v1")

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client that gave up (the timeout tests) leaves a broken pipe behind: not an error here.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def fail_next(self, status: int, times: int = 1, message: str = "planned failure", **headers: str) -> None:
        """Answer the next ``times`` requests with an OpenAI-style error."""
        body = {"error": {"message": message, "type": "test_error", "code": str(status)}}
        with self._lock:
            self._plans.extend(_Plan(status, body, dict(headers)) for _ in range(times))

    def record(self, request: Recorded) -> _Plan | None:
        with self._lock:
            self.requests.append(request)
            if self.name == "proxy":  # as the Prysm proxy, which answers every request with its trace id
                request.trace_id = f"{len(self.requests):032x}"
            return self._plans.pop(0) if self._plans else None

    @property
    def last(self) -> Recorded:
        assert self.requests, f"{self.name} received no request"
        return self.requests[-1]


class _Handler(BaseHTTPRequestHandler):
    server: RecordingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        recorded = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        plan = self.server.record(recorded)
        self._trace_id = recorded.trace_id
        if self.server.delay:
            time.sleep(self.server.delay)
        if plan is not None:
            self._send_json(plan.status, plan.body, plan.headers)
            return
        path = self.path.split("?", 1)[0]
        payload = recorded.json() if body and "json" in self.headers.get("content-type", "") else {}
        model = (payload or {}).get("model", "gpt-4o-mini")
        if path.endswith("/chat/completions"):
            if payload.get("stream"):
                self._send_sse(_chat_chunks(model, ["Hello", " from ", self.server.name]))
            else:
                self._send_json(200, _chat(model, f"Hello from {self.server.name}"))
        elif path.endswith("/responses"):
            if payload.get("stream"):
                self._send_sse(self._response_events(model))
            else:
                self._send_json(200, _response(model, f"Hello from {self.server.name}"))
        elif path.endswith("/embeddings"):
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "model": model,
                    "usage": {"prompt_tokens": 2, "total_tokens": 2},
                },
            )
        elif path.endswith("/models"):
            self._send_json(
                200,
                {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "x"}]},
            )
        elif path.endswith("/files"):
            self._send_json(200, {"object": "list", "data": [], "has_more": False})
        elif path.endswith("/scores") and self.command == "POST":  # the proxy's score API
            trace_id = path.split("/")[-2]
            self._send_json(201, {"object": "score", "id": "score_1", "trace_id": trace_id, **(payload or {})})
        else:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found", "code": "404"}})

    def _response_events(self, model: str) -> Iterator[dict[str, Any]]:
        done = _response(model, f"Hello from {self.server.name}")
        created = {**done, "status": "in_progress", "output": []}
        yield {"type": "response.created", "sequence_number": 0, "response": created}
        yield {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": f"Hello from {self.server.name}",
            "logprobs": [],
        }
        yield {"type": "response.completed", "sequence_number": 2, "response": done}

    do_GET = do_POST = do_DELETE = _handle

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if getattr(self, "_trace_id", ""):
            self.send_header("x-prysm-trace-id", self._trace_id)
        for name, value in (headers or {}).items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def _send_sse(self, events: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        if getattr(self, "_trace_id", ""):
            self.send_header("x-prysm-trace-id", self._trace_id)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in events:
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture
def proxy_server() -> Iterator[RecordingServer]:
    server = RecordingServer("proxy").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def openai_server() -> Iterator[RecordingServer]:
    server = RecordingServer("openai").start()
    try:
        yield server
    finally:
        server.stop()


def loopback_http_client(server: RecordingServer, *, is_async: bool = False, httpx_module: Any = None) -> Any:
    """A real http client whose requests to api.openai.com land on ``server`` (same path and headers).

    Lets a client keep OpenAI's default base URL (so ``instrument()`` considers it) while its
    traffic stays on this machine.
    """
    hx = httpx_module or default_httpx
    port = server.server_port

    def to_loopback(request: Any) -> None:
        # Only OpenAI's host moves: a request redirected to the proxy must still reach the proxy.
        if request.url.host == "api.openai.com":
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)

    if is_async:
        inner_async = hx.AsyncHTTPTransport()

        class AsyncLoopback(hx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                to_loopback(request)
                return await inner_async.handle_async_request(request)

            async def aclose(self) -> None:
                await inner_async.aclose()

        return hx.AsyncClient(transport=AsyncLoopback())

    inner = hx.HTTPTransport()

    class Loopback(hx.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            to_loopback(request)
            return inner.handle_request(request)

        def close(self) -> None:
            inner.close()

    return hx.Client(transport=Loopback())


@pytest.fixture
def default_client(openai_server: RecordingServer) -> Iterator[openai.OpenAI]:
    """An ``openai.OpenAI`` targeting OpenAI's default URL, whose traffic lands on ``openai_server``."""
    client = openai.OpenAI(api_key="sk-user-openai-key", http_client=loopback_http_client(openai_server), max_retries=0)
    yield client
    client.close()


@pytest.fixture
async def default_async_client(openai_server: RecordingServer) -> Any:
    client = openai.AsyncOpenAI(
        api_key="sk-user-openai-key", http_client=loopback_http_client(openai_server, is_async=True), max_retries=0
    )
    yield client
    await client.close()


@pytest.fixture(autouse=True)
def clean_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends uninstrumented, with no context and no Prysm/OpenAI env settings."""
    import prysmai

    for name in ("PRYSM_API_KEY", "PRYSM_BASE_URL", "PRYSM_AUTO", "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-openai-key")
    for name in ("PRYSM_FALLBACK", "PRYSM_FALLBACK_COOLDOWN"):
        monkeypatch.delenv(name, raising=False)
    from prysmai import _breaker

    _breaker.reset()  # each test meets every proxy with a closed breaker and zero counters
    prysmai.uninstrument()
    prysmai.prysm_context.clear()
    yield
    prysmai.uninstrument()
    prysmai.prysm_context.clear()


def prysm_headers(recorded: Recorded) -> dict[str, str]:
    """The X-Prysm-* headers of a recorded request, names lower-cased."""
    return {k: v for k, v in recorded.headers.items() if k.startswith("x-prysm-")}
