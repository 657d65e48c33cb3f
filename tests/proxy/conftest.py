"""Peers for the proxy's tests: a loopback fake upstream on uvicorn and a proxy factory.

The fake upstream speaks enough of the OpenAI API (chat completions, completions, embeddings,
responses, models) and is steered per request by ``x-fake-*`` headers, which the proxy forwards:

* ``x-fake-status: 429``        -- answer with that status and an OpenAI-style error body;
* ``x-fake-first-delay-ms: 200`` -- streams: send the role-only frame at once, hold the first token;
* ``x-fake-chunks: 3`` / ``x-fake-gap-ms: 0`` -- streams: number of content chunks and the gap;
* ``x-fake-hang: 1``            -- never answer.
* ``x-fake-delay-ms: 3000``     -- answer after this long (and count it in ``finished`` if the
  answer is completed, in ``abandoned`` if the proxy went away first);
* ``x-fake-deep: 5000``         -- answer 200 with valid JSON nested that deep;
* ``x-fake-break-after: 2``     -- streams: send that many content chunks, then cut the connection
  (no terminating chunk);
* ``x-fake-echo: 1``            -- chat completions: answer with the last message's content (streams:
  cut into ``x-fake-chunks`` pieces);
* ``x-fake-tool-call: 1``       -- chat completions: answer with a call of the tool ``get_weather``.
* ``x-fake-answer-headers: [["name", "value"], ...]`` -- JSON answers: add these headers;
* ``x-fake-echo-key: 1``        -- with ``x-fake-status``: the error message echoes the credential
  the proxy sent (``Authorization`` or Azure's ``api-key``), as some providers' 401s do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import uvicorn

from prysmai._proxy.config.settings import ProxyConfig
from prysmai._proxy.server.serve import BackgroundServer
from prysmai._proxy.store.sqlite import SQLiteEngine

KEY = "sk-prysm-proxytest-0123456789abcdef"
OTHER_KEY = "sk-prysm-second-key-0123456789"
UPSTREAM_KEY = "sk-stored-upstream-credential"
CREATED = 1_700_000_000


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def _echo(headers: dict[str, str], doc: Any) -> str | None:
    """``x-fake-echo``: the content of the request's last message."""
    if not headers.get("x-fake-echo") or not doc.get("messages"):
        return None
    content = doc["messages"][-1].get("content")
    return content if isinstance(content, str) else None


def _chunk(obj: dict[str, Any], include_usage: bool) -> bytes:
    if include_usage:
        obj = {**obj, "usage": None}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class FakeUpstream:
    """A pure-ASGI fake of the OpenAI API that records every request."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.finished = 0
        self.abandoned = 0

    def last(self) -> Seen:
        assert self.seen, "the upstream received nothing"
        return self.seen[-1]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        self.seen.append(Seen(scope["method"], path, headers, body, scope.get("query_string", b"").decode("latin-1")))
        if headers.get("x-fake-hang"):
            await asyncio.sleep(60)
        if headers.get("x-fake-delay-ms"):
            waiter = asyncio.ensure_future(receive())  # after the body, only a disconnect arrives
            done, _ = await asyncio.wait({waiter}, timeout=float(headers["x-fake-delay-ms"]) / 1000)
            if waiter in done and waiter.result()["type"] == "http.disconnect":
                self.abandoned += 1
                return
            waiter.cancel()
            self.finished += 1
        if headers.get("x-fake-deep"):
            depth = int(headers["x-fake-deep"])
            deep = b'{"id":"deep","usage":{"prompt_tokens":1},"x":' + b"[" * depth + b"]" * depth + b"}"
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": deep})
            return
        status = int(headers.get("x-fake-status", "200"))
        extra = [(k.encode(), v.encode()) for k, v in json.loads(headers.get("x-fake-answer-headers", "[]"))]
        if status >= 400:
            message = f"planned {status}"
            if headers.get("x-fake-echo-key"):
                sent = headers.get("authorization", "").removeprefix("Bearer ") or headers.get("api-key", "")
                message = f"Incorrect API key provided: {sent}. You can find your API key at https://example."
            code = headers.get("x-fake-error-code")  # the provider's own code, when a test gives one
            await self._json(send, status, {"error": {"message": message, "type": "fake", "code": code}}, extra)
            return
        endpoint = path.split("/v1/", 1)[-1]
        if path.startswith("/openai/deployments/"):  # Azure OpenAI: /openai/deployments/{name}/{endpoint}
            endpoint = path.split("/", 4)[-1]
        doc = json.loads(body) if body[:1] == b"{" else {}
        model = doc.get("model", "gpt-4o-mini")
        if endpoint == "models":
            await self._json(send, 200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        elif endpoint == "embeddings":
            usage = {"prompt_tokens": 5, "total_tokens": 5}
            data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]
            await self._json(send, 200, {"object": "list", "data": data, "model": model, "usage": usage})
        elif endpoint in ("chat/completions", "completions") and doc.get("stream"):
            await self._stream_chat(send, receive, headers, doc, endpoint == "completions")
        elif endpoint == "chat/completions":
            message: dict[str, Any] = {
                "role": "assistant",
                "content": _echo(headers, doc) or "Hello there!",
                "refusal": None,
            }
            finish = "stop"
            if headers.get("x-fake-tool-call"):
                function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
                message = {
                    **message,
                    "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": function}],
                }
                finish = "tool_calls"
            await self._json(
                send,
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
                },
                extra,
            )
        elif endpoint == "completions":
            await self._json(
                send,
                200,
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [{"index": 0, "text": "Hi", "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
                },
            )
        elif endpoint == "responses":
            await self._responses(send, doc, model)
        else:
            await self._json(send, 404, {"error": {"message": f"no route {path}", "type": "fake", "code": None}})

    @staticmethod
    async def _json(send: Any, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps(obj).encode()
        headers = [(b"content-type", b"application/json"), (b"x-request-id", b"req_fake123"), *(extra or ())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream_chat(self, send: Any, receive: Any, headers: dict[str, str], doc: Any, legacy: bool) -> None:
        include_usage = bool((doc.get("stream_options") or {}).get("include_usage"))
        first_delay = float(headers.get("x-fake-first-delay-ms", "0")) / 1000
        gap = float(headers.get("x-fake-gap-ms", "0")) / 1000
        n = int(headers.get("x-fake-chunks", "3"))
        obj = "text_completion" if legacy else "chat.completion.chunk"
        base = {"id": "chatcmpl-fake", "object": obj, "created": CREATED, "model": doc.get("model")}
        done = False

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect" and not done:
                self.disconnects += 1
                self.disconnected.set()

        watcher = asyncio.ensure_future(watch())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if not legacy:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            await send(
                {
                    "type": "http.response.body",
                    "body": _chunk({**base, "choices": [role]}, include_usage),
                    "more_body": True,
                }
            )
        await asyncio.sleep(first_delay)
        break_after = int(headers.get("x-fake-break-after", "-1"))
        echo = _echo(headers, doc)
        pieces = [echo[i * len(echo) // n : (i + 1) * len(echo) // n] for i in range(n)] if echo else None
        for i in range(n):
            if i == break_after:
                raise ConnectionResetError("x-fake-break-after: cutting the stream")  # uvicorn drops the connection
            if self.disconnected.is_set() and watcher.done():
                return
            choice: dict[str, Any] = (
                {"index": 0, "text": f"tok{i} ", "finish_reason": None}
                if legacy
                else {"index": 0, "delta": {"content": pieces[i] if pieces else f"tok{i} "}, "finish_reason": None}
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": _chunk({**base, "choices": [choice]}, include_usage),
                    "more_body": True,
                }
            )
            if gap:
                await asyncio.sleep(gap)
        end = (
            {"index": 0, "text": "", "finish_reason": "stop"}
            if legacy
            else {"index": 0, "delta": {}, "finish_reason": "stop"}
        )
        tail = _chunk({**base, "choices": [end]}, include_usage)
        if include_usage:
            usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
            tail += b"data: " + json.dumps({**base, "choices": [], "usage": usage}, separators=(",", ":")).encode()
            tail += b"\n\n"
        tail += b"data: [DONE]\n\n"
        done = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        watcher.cancel()

    async def _responses(self, send: Any, doc: Any, model: str) -> None:
        usage = {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
        message = {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi you", "annotations": []}],
        }
        final = {
            "id": "resp_1",
            "object": "response",
            "created_at": CREATED,
            "status": "completed",
            "model": model,
            "output": [message],
            "usage": usage,
        }
        if not doc.get("stream"):
            await self._json(send, 200, final)
            return
        events = [
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**final, "status": "in_progress", "output": [], "usage": None},
            },
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hi",
            },
            {
                "type": "response.output_text.delta",
                "sequence_number": 2,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": " you",
            },
            {"type": "response.completed", "sequence_number": 3, "response": final},
        ]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ThreadedServer:
    """Any ASGI app on uvicorn, on a daemon thread, on 127.0.0.1 and a free port."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server failed to start"
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    app = FakeUpstream()
    server = ThreadedServer(app).start()
    app.url = server.url + "/v1"  # type: ignore[attr-defined]
    try:
        yield app
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyHandle:
    """A running proxy plus helpers to read what it stored."""

    def __init__(self, server: BackgroundServer) -> None:
        self.server = server
        self.app = server.app
        self.base_url = server.base_url
        self.db_path = server.config.db_path

    def traces(self) -> list[dict[str, Any]]:
        """Every stored trace, oldest first, in full (after writing everything pending)."""
        deadline = time.monotonic() + 10
        while self.app.forwarder.inflight:  # a client may have its answer before the proxy has finished
            assert time.monotonic() < deadline, "requests still in flight"
            time.sleep(0.002)
        assert self.app.store.flush(10), "the trace writer did not catch up"
        return read_traces(self.db_path)

    def stop(self) -> None:
        self.server.stop()


def read_traces(db_path: str) -> list[dict[str, Any]]:
    from prysmai._proxy.store.queries import get_trace

    conn = SQLiteEngine(db_path).open_existing()
    assert conn is not None
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM traces ORDER BY created_at, rowid")]
        return [get_trace(conn, i) for i in ids]  # type: ignore[misc]
    finally:
        conn.close()


@pytest.fixture
def start_proxy(tmp_path: Any) -> Iterator[Any]:
    """``start_proxy(upstream_url, **config)`` -> a started :class:`ProxyHandle`; all stopped after."""
    started: list[ProxyHandle] = []

    def start(upstream: str, **overrides: Any) -> ProxyHandle:
        settings: dict[str, Any] = {
            "keys": [KEY, OTHER_KEY],
            "db_path": str(tmp_path / "traces.db"),
            "upstream": upstream,
            "upstream_api_key": UPSTREAM_KEY,
            "port": 0,
        }
        settings.update(overrides)
        handle = ProxyHandle(BackgroundServer(ProxyConfig(**settings)).start())
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in started:
            handle.stop()


@pytest.fixture
def proxy(fake: FakeUpstream, start_proxy: Any) -> ProxyHandle:
    handle: ProxyHandle = start_proxy(fake.url)  # type: ignore[attr-defined]
    return handle


_U = TypeVar("_U", bound="RawUpstream")


class RawUpstream:
    """A raw HTTP/1.1 upstream on its own thread and event loop, on a free port of 127.0.0.1: what
    aiohttp's pooled connections meet, byte by byte. Subclasses serve each connection
    (``_handle``) with :meth:`read_request` and :meth:`answer`."""

    #: The one answer: a chat completion, as JSON.
    BODY = b'{"id":"x","object":"chat.completion","model":"m","choices":[]}'

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @staticmethod
    async def read_request(reader: asyncio.StreamReader) -> None:
        """Read one request, head and body (by its Content-Length)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)

    @classmethod
    async def answer(cls, writer: asyncio.StreamWriter) -> None:
        """Answer 200 with :attr:`BODY`, keep-alive (no ``Connection: close``)."""
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(cls.BODY), cls.BODY)
        )
        await writer.drain()

    def __enter__(self: _U) -> _U:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class ClosingUpstream(RawUpstream):
    """Answers every request as keep-alive (no ``Connection: close``) and then closes the
    connection at once: the next request on that pooled connection is sent to a server that has
    already gone.

    The answer and the close leave in one TCP segment (corked, then ``shutdown``): the client
    can never read the answer before the FIN, so its next request always meets a closed
    server. A close scheduled after the answer could instead land after the next request had
    been acknowledged, unread -- a server that may have the request, which a client must not
    send again (``eat_second`` is that case, on purpose)."""

    def __init__(self, eat_second: bool = False) -> None:
        super().__init__()
        #: Read the second request of each connection fully, then close without answering.
        self.eat_second = eat_second
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.read_request(reader)
        self.requests += 1
        if self.eat_second:
            await self.answer(writer)
            with contextlib.suppress(asyncio.IncompleteReadError):
                await self.read_request(reader)
                self.requests += 1
        else:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            await self.answer(writer)
            sock.shutdown(socket.SHUT_WR)  # the FIN goes out with the corked answer
        writer.close()


# -- a config file of projects with limits, each answer of the fake upstream costing exactly $1 -----
def sha(key: str) -> str:
    """How a config file names a key: its SHA-256."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def priced_projects(
    fake: FakeUpstream, projects: Sequence[tuple[str, str | Sequence[str], str]], admin: str | None = None
) -> str:
    """A config file's text: each of ``projects``, given as (name, its key or keys, its limits as
    TOML lines such as ``"monthly_budget_usd = 3\\n"``), with one provider, ``fake``, whose answers
    for model ``m`` cost exactly $1 (10 prompt tokens at $100 000 per million); ``admin``: a key
    that reads every project."""
    url = fake.url  # type: ignore[attr-defined]

    def listed(keys: str | Sequence[str]) -> str:
        return ", ".join(f'"{sha(key)}"' for key in ((keys,) if isinstance(keys, str) else keys))

    head = f'[admin]\nkeys = ["{sha(admin)}"]\n' if admin is not None else ""
    return head + "".join(
        f"""
[[projects]]
name = "{name}"
keys = [{listed(keys)}]
default_provider = "up"
{limits}
  [[projects.providers]]
  name = "up"
  kind = "openai-compatible"
  base_url = "{url}"
  prices = {{ "m" = {{ input = 100000, output = 0 }} }}
"""
        for name, keys, limits in projects
    )


# -- ``prysmai proxy`` as a subprocess ------------------------------------------------------------
PRYSMAI = [sys.executable, "-m", "prysmai._cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without the ``PRYSM_*``/``OPENAI_*`` variables a developer may have set."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    out.update(extra)
    return out


class Proxy:
    """``prysmai proxy ...`` in a subprocess; ``start()`` returns once it announced itself.
    ``new_session``: in a process group of its own, as under a service manager."""

    def __init__(self, *args: str, new_session: bool = False, **environ: str) -> None:
        self.proc = subprocess.Popen(
            [*PRYSMAI, "proxy", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(**environ),
            start_new_session=new_session,
        )
        self.lines: list[str] = []
        self.base = ""

    def start(self) -> Proxy:
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            assert line, "proxy exited early:\n" + "".join(self.lines)
            self.lines.append(line)
            m = re.search(r"serving (https?://\S+/api/v1)", line)
            if m:
                self.base = m.group(1).replace("0.0.0.0", "127.0.0.1")
                return self

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, rest = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, rest = self.proc.communicate()
        return "".join(self.lines) + (rest or "")


# -- PostgreSQL (a real server, one per test worker; a fresh database per test) ---------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    from .postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    """The URL (with its password) of a new, empty database on the worker's server."""
    return str(postgres_server.database())
