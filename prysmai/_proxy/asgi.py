"""The HTTP vocabulary every part of the proxy speaks: ASGI types, the one error, route tables.

The ``Scope``/``Message``/``Receive``/``Send`` aliases (for annotations only); :class:`HTTPError`,
the one error of the proxy's HTTP surface, answered with OpenAI's error document (the server, the
connection guard, the read API and the dashboard all use it); :class:`Routes`, a declared route
table; :class:`Query`, a query string's parameters; the JSON answers of our own (``respond``,
with the ``X-Prysm-Origin`` marker the SDK's fail-open reads); the ``send`` wrapper that
remembers whether a response has begun and can hold its writes (``send_whole``: head and body in
one write); reading a request body under a size limit; and the latency header. Nothing here
knows about traces.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote

from .. import _wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping

    from .store.capture import Exchange

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json"), (_wire.ORIGIN_HEADER.lower().encode(), b"proxy")]


def error_document(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error document: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """:func:`error_document` as JSON bytes."""
    return json.dumps(error_document(message, type_, code, param)).encode()


class HTTPError(Exception):
    """An answer of ours that is an error: ``status`` and OpenAI's error document (``param``
    names the request parameter at fault, when one is). Raised by handlers; answered by
    :func:`respond_error`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class Query(dict[str, str]):
    """A query string's parameters: a dict of each name's last value, and :meth:`getall` for a
    name given more than once (``meta=env=prod&meta=tier=2``). Empty values are left out."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs = [(k, v) for k, v in pairs if v]
        super().__init__(self.pairs)

    @classmethod
    def of(cls, scope: Scope) -> Query:
        """The query string of ``scope``, percent-decoded as UTF-8."""
        return cls(parse_qsl((scope.get("query_string") or b"").decode("latin-1")))

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]


H = TypeVar("H")


class Routes(Generic[H]):
    """A declared route table: path -> handler. A pattern ending in ``{name}`` matches any path
    that starts with what comes before it and goes on (the rest is the parameter); exact paths
    are matched first, then the patterns in the order given.

    >>> routes = Routes({"traces": "list", "traces/{id}": "one"})
    >>> routes.match("traces/abc")
    ('one', 'abc')
    """

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, table: dict[str, H]) -> None:
        self._exact: dict[str, H] = {}
        self._prefixes: list[tuple[str, H]] = []
        for pattern, handler in table.items():
            if pattern.endswith("}") and "{" in pattern:
                self._prefixes.append((pattern[: pattern.index("{")], handler))
            else:
                self._exact[pattern] = handler

    def match(self, path: str) -> tuple[H, str | None] | None:
        """``(handler, parameter or None)``, or ``None`` when no route matches."""
        handler = self._exact.get(path)
        if handler is not None:
            return handler, None
        for prefix, handler in self._prefixes:
            if path.startswith(prefix) and len(path) > len(prefix):
                return handler, path[len(prefix) :]
        return None


#: The scope key under which the proxy's own server protocol (:mod:`.server.guard`) passes the client's
#: :class:`~.server.guard.ClientConnection`.
CONNECTION_KEY = "prysmai.connection"


class Watch(Protocol):
    """Cancels the current task if the client goes away before ``stop`` (``gone`` then True)."""

    gone: bool

    def stop(self) -> None: ...


class Connection(Protocol):
    """What the server lets the app do with the client's connection (:class:`~.server.guard.ClientConnection`)."""

    #: (status, message) of the server's answer when it refused a request the app had begun.
    refusal: tuple[int, str] | None

    def trust(self) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def watch(self, task: asyncio.Task[Any]) -> Watch: ...


class StreamWatch:
    """Cancels the current task when the client disconnects during a long answer (a relayed stream, an export) (``gone``
    then True): one small task waiting on ``receive`` for the answer's length. :meth:`stop` before
    the answer's last part: a client that leaves after it got everything."""

    __slots__ = ("_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._watcher: asyncio.Future[None] | None = asyncio.ensure_future(self._watch(receive, asyncio.current_task()))

    async def _watch(self, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._watcher is not None:  # (not stopped)
            self.gone = True
            if task is not None:
                task.cancel()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


def uncancel() -> None:
    """Take back the cancellation a client's leaving asked for (Python 3.11+): the task goes on
    (to record the trace, to end an export's reading)."""
    undo = getattr(asyncio.current_task(), "uncancel", None)
    if undo is not None:
        undo()


def watch_client(send: Send, receive: Receive) -> Watch:
    """A watch that cancels the current task if the client goes away: the connection's own, where
    the server passes it (it hears of it first), else a :class:`StreamWatch` on ``receive``."""
    connection = connection_of(send)
    if connection is not None:
        task = asyncio.current_task()
        assert task is not None
        return connection.watch(task)
    return StreamWatch(receive)


class Responder:
    """The ASGI ``send`` of one request, remembering whether the response has started (so the
    error path knows whether it can still answer with a JSON error). ``connection``: the
    client's connection, when the server passes it (``CONNECTION_KEY``)."""

    __slots__ = ("_send", "connection", "started")

    def __init__(self, send: Send, connection: Connection | None = None) -> None:
        self._send = send
        self.started = False
        self.connection = connection

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.started = True
        return self._send(message)


def connection_of(send: Send) -> Connection | None:
    return send.connection if isinstance(send, Responder) else None


def trust(scope: Scope) -> None:
    """Tell the server that this request is authenticated (a valid key or session): it then
    gives the request's body and its connection the time an authenticated client gets
    (:mod:`.server.guard`)."""
    connection = scope.get(CONNECTION_KEY)
    if connection is not None:
        connection.trust()


async def send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """A whole response: its head and body leave in one write where the server can hold writes
    (written apart, each wakes the client for half an answer)."""
    connection = connection_of(send)
    if connection is not None:
        connection.hold()
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    finally:
        if connection is not None:
            connection.release()


def internal_error(exc: BaseException) -> HTTPError:
    """The 500 of a bug of ours. The exception's type only: its text may hold request data."""
    return HTTPError(
        500,
        f"Internal error in the Prysm proxy ({type(exc).__name__}); the proxy's log has the details.",
        "internal_error",
        "server_error",
    )


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise TooLarge
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise TooLarge
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


_DOT_SEGMENT = re.compile(r"(?:^|[/\\])\.\.?(?:;[^/\\]*)?(?=$|[/\\])")
_DECODINGS = 4


def dot_segment(path: str) -> bool:
    """Whether ``path`` (ASGI's ``path``: percent-decoded once) has a ``.`` or ``..`` segment, as
    sent or once percent-decoded again (``%2e%2e``, ``%252e%252e``, mixed), with ``/`` or ``\\`` as
    the separator and ``;params`` after the dots (what upstream servers and frameworks normalise:
    such a path would reach another deployment, or leave the provider's base URL, there)."""
    if "." not in path and "%" not in path:  # every ordinary API path: two scans
        return False
    for _ in range(_DECODINGS):
        if _DOT_SEGMENT.search(path):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
    return True  # still percent-encoded after that many rounds: nothing a client needs to send


def client_name(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "an unknown client"


def latency_header(ex: Exchange) -> tuple[bytes, bytes]:
    end = ex.t_end if ex.t_end is not None else time.perf_counter()
    return (_wire.LATENCY_HEADER.lower().encode(), f"{(end - ex.t0) * 1000.0:.2f}".encode())


async def respond_error(send: Send, error: HTTPError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``error`` (its headers, then ``extra``)."""
    await respond(send, error.status, error.body(), [*error.headers, *(extra or ())])


async def respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON answer of ours (``body``), marked with ``X-Prysm-Origin: proxy``."""
    headers = [
        *JSON_HEADERS,  # with the X-Prysm-Origin marker: the SDK's fail-open reads it
        (b"content-length", str(len(body)).encode()),
    ]
    if extra:
        headers += extra
    await send_whole(send, status, headers, body)
