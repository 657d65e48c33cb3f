"""Limits on client connections that uvicorn's httptools protocol does not have.

uvicorn holds a connection that never finishes its request headers or its body for as long as
the client likes (its keep-alive timeout only runs between requests), accepts headers of any size,
and its ``limit_concurrency`` answers with a plain-text 503. :func:`guarded_protocol` returns its
httptools protocol with these guards, each answered with an OpenAI-style JSON error and
``Connection: close``:

* a header-read timeout (``408``): from a connection's start, or a request's first byte, to the
  end of its headers;
* a body-read timeout (``408``): no more than ``body_timeout`` between two reads of a request's
  body, and -- for a request the app has not authenticated (:meth:`ClientConnection.trust`: a
  valid key or session) -- its whole body within ``body_timeout`` of its headers;
* a header size limit (``431``) on the request line plus headers;
* a cap on concurrent connections (``503``) -- a connection over it is answered and closed at once;
* request framing (``400``): a ``Transfer-Encoding`` other than exactly ``chunked``, or one beside a
  ``Content-Length`` (the ambiguity request smuggling lives on), refused before the app sees the
  request.

So a request without a valid key or session holds a connection for the header timeout, then the
body timeout, at most; after answering it, the proxy keeps the connection idle for the header
timeout (not the keep-alive timeout), and not at all if its body was left unsent.

The timeouts are checked by one sweep per second over the open connections, so a request pays for
a few attribute writes, not a timer. The sweep also closes a keep-alive connection left idle for
``timeout_keep_alive`` seconds (to within its period) rather than uvicorn's libuv timer, which is
created after every response and cancelled by the next request's first bytes. A request that is
not valid HTTP gets a ``400`` in JSON rather than uvicorn's plain text. When the app had already
begun a request that a guard then refuses (a body that stalls, or breaks the HTTP syntax), the
connection says so (:attr:`ClientConnection.refusal`): its trace records the refusal, not a
client that went away.

And it passes the app a :class:`ClientConnection` in the scope: to hold a response's writes
(uvicorn writes a response's head the moment the app sends it, so head and body left as two
segments) and to cancel a request's task the moment its client goes away.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ... import _wire
from ..asgi import CONNECTION_KEY, error_body

_SWEEP_SECONDS = 1.0
#: How long a connection answered before its body was read may go on sending it (discarded).
_LINGER_SECONDS = 1.0
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the guard has already answered."""


def _error_response(status: int, message: str, code: str) -> bytes:
    body = error_body(message, "invalid_request_error", code)
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            _wire.ORIGIN_HEADER.lower().encode() + b": proxy\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class ClientConnection:
    """What the app may ask of the client's connection, passed in the scope (``CONNECTION_KEY``):
    to hold a burst of writes so that they leave as one, and to cancel a task when the client goes
    away. uvicorn's request cycle writes through it (it stands in for the transport).

    Writes: uvicorn writes a response's head as soon as the app sends ``http.response.start``,
    and the body (or a stream's first chunk) in a write of its own. On loopback or a LAN each
    write is a segment that wakes the client for half an answer, and on a busy machine that wakeup
    can take the proxy's CPU before the rest is written; one write wakes it once, for all of it.

    Leaving: the protocol hears of it first (``connection_lost``); learning it through ASGI's
    ``receive`` takes a task per request that waits on it."""

    __slots__ = ("_held", "_task", "_transport", "body_pending", "gone", "lost", "refusal", "trusted")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] | None = None
        self._task: asyncio.Task[Any] | None = None
        self.lost = False  # the connection is gone
        self.gone = False  # ... and that cancelled the watched task
        #: The current request was authenticated (a valid key or dashboard session): see trust().
        self.trusted = False
        #: (status, message) of the guard's answer when it refused a request the app had begun.
        self.refusal: tuple[int, str] | None = None
        #: The current request's body has not all arrived (set by the protocol).
        self.body_pending = False

    def trust(self) -> None:
        """The app authenticated the current request: its body then gets the time between reads
        (the body timeout) but no total, and its connection the keep-alive timeout afterwards."""
        self.trusted = True

    # -- writes ------------------------------------------------------------------------------------
    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if held:
                # One system call for all (uvloop gathers them), without joining: an answer's body
                # may be megabytes.
                self._transport.writelines(held)

    def write(self, data: bytes) -> None:
        if self.body_pending and not self.trusted and data.startswith(b"HTTP/1.1 "):
            # Answered before its body came and without a key (a 401, a cross-site 403): the
            # connection ends after this answer (see the protocol's _linger); saying so keeps a
            # keep-alive client from sending its next request on it.
            data = _closing(data)
        held = self._held
        if held is None:
            self._transport.write(data)
        else:
            held.append(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else uvicorn's cycle may ask of its transport (none of it on the hot path).
        if name.startswith("_"):  # (our own slots, unset: never recurse)
            raise AttributeError(name)
        return getattr(self._transport, name)

    # -- the client leaving ---------------------------------------------------------------------
    def watch(self, task: asyncio.Task[Any]) -> ClientConnection:
        """Cancel ``task`` if the client goes away before :meth:`stop` (at once if it has gone);
        ``gone`` then says so. Returns itself: the watch."""
        self._task = task
        if self.lost:
            self._cancel()
        return self

    def stop(self) -> None:
        self._task = None

    def connection_lost(self) -> None:
        self.lost = True
        self._cancel()

    def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self.gone = True
            task.cancel()


def _closing(head: bytes) -> bytes:
    """A response's head with ``connection: close`` (unless it has a ``connection`` header)."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or b"\r\nconnection:" in head[:end].lower():
        return head
    return head[: end + 2] + b"connection: close\r\n" + head[end + 2 :]


def guarded_protocol(
    header_timeout: float, max_header_bytes: int, max_connections: int, body_timeout: float
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the guards above (a fresh class per server)."""
    sweeper: list[asyncio.TimerHandle | None] = [None]

    class GuardedProtocol(HttpToolsProtocol):
        _head_since: float | None = None  # loop time when the current request's head began
        _head_bytes = 0
        _idle_since: float | None = None  # loop time when the last response ended (keep-alive)
        _body_since: float | None = None  # loop time when the current request's head ended, its body due
        _body_last = 0.0  # loop time of the last bytes received while its body was due
        _idle_for = 0.0  # how long the connection may stay idle after the last response
        _draining = False  # answered without its body: what still comes is discarded (see _linger)
        _client: ClientConnection

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._client = ClientConnection(transport)
            if len(self.connections) > max_connections:
                self._reject(503, f"Too many connections (more than {max_connections}); retry later", "overloaded")
                return
            self._head_since = self.loop.time()
            if sweeper[0] is None:
                sweeper[0] = self.loop.call_later(_SWEEP_SECONDS, _sweep, self.connections, self.loop)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self._client.connection_lost()
            if not self.connections and sweeper[0] is not None:
                sweeper[0].cancel()
                sweeper[0] = None

        def data_received(self, data: bytes) -> None:
            if self._draining:
                return
            self._idle_since = None  # (uvicorn's own cancels its keep-alive timer here)
            if self._head_since is not None:
                self._head_bytes += len(data)
            elif self._body_since is not None:
                self._body_last = self.loop.time()
            try:
                self.parser.feed_data(data)
            except _Refused:
                return
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, _Refused):
                    return
                self._bad_request()
                return
            except httptools.HttpParserError:
                self._bad_request()
                return
            except httptools.HttpParserUpgrade:  # as uvicorn does
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if self._head_since is not None and self._head_bytes > max_header_bytes:
                self._too_large()

        def _bad_request(self) -> None:
            # As uvicorn's own answer, but in JSON. Not an application request, no trace -- unless
            # the app had begun it (its body broke the syntax): then the connection says so.
            self.logger.debug("invalid HTTP request received")
            message = (
                "Invalid HTTP request (malformed request line, headers or body framing, e.g. a control "
                "character in a header value)"
            )
            if self._body_since is not None:
                self._client.refusal = (400, message)
            self._reject(400, message, "invalid_http_request")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[CONNECTION_KEY] = self._client  # type: ignore[literal-required]
            self._client.trusted = False  # every request earns it
            self._client.body_pending = False
            if self._head_since is None:
                self._head_since = self.loop.time()
                self._head_bytes = 0

        def on_headers_complete(self) -> None:
            if self._head_bytes > max_header_bytes:  # maybe: this chunk also held body bytes
                size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
                if size > max_header_bytes:
                    self._too_large()
                    raise _Refused
            if _ambiguous_framing(self.headers):
                self._reject(
                    400,
                    "Unsupported request framing: Transfer-Encoding must be exactly 'chunked', and not sent "
                    "together with Content-Length",
                    "invalid_http_request",
                )
                raise _Refused
            self._head_since = None
            self._head_bytes = 0
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # (this request's: not an upgrade)
                # Its writes go through ours (the app's task has not run yet).
                cycle.transport = self._client  # type: ignore[assignment]
            self._body_since = self._body_last = self.loop.time()
            self._client.body_pending = True

        def on_message_complete(self) -> None:
            self._body_since = None
            self._client.body_pending = False
            super().on_message_complete()

        def on_response_complete(self) -> None:
            if self.pipeline or self.transport.is_closing():
                # uvicorn's own: start the next pipelined request, or nothing; no timer either way.
                super().on_response_complete()
                return
            # As uvicorn's, but the keep-alive timeout is the sweep's: no timer per response.
            self.server_state.total_requests += 1
            client = self._client
            if not client.trusted and self._body_since is not None:
                self._linger()  # answered (a 401) without reading its body: not worth waiting for
                return
            self.flow.resume_reading()
            self._idle_since = self.loop.time()
            # A client that has not shown a key keeps its connection idle for the header timeout,
            # not the keep-alive timeout.
            self._idle_for = self.timeout_keep_alive if client.trusted else header_timeout

        def _linger(self) -> None:
            """End a connection whose request was answered before its body was read. Closing at
            once, with body bytes unread, makes the kernel send a reset, which can destroy the
            answer before the client has read it; so the proxy ends its side (FIN after the
            answer), discards what still comes, and closes when the client does or after
            :data:`_LINGER_SECONDS` (the sweep): no longer than an idle unauthenticated client."""
            self._body_since = None
            self._draining = True
            self._client.release()  # the answer first
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.resume_reading()
            self._idle_since = self.loop.time()
            self._idle_for = _LINGER_SECONDS

        def _too_large(self) -> None:
            self._reject(
                431,
                f"Request headers larger than {max_header_bytes} bytes",
                "request_header_fields_too_large",
            )

        def _reject(self, status: int, message: str, code: str) -> None:
            self._head_since = None
            if not self.transport.is_closing():
                self.transport.write(_error_response(status, message, code))
                self.transport.close()

        def idle_timed_out(self, now: float) -> bool:
            idle = self._idle_since
            if idle is None or now - idle < self._idle_for or self.transport.is_closing():
                return False
            self._idle_since = None
            self.timeout_keep_alive_handler()  # uvicorn's: closes the connection
            return True

        def header_timed_out(self, now: float) -> bool:
            since = self._head_since
            if since is None or now - since < header_timeout or self.transport.is_closing():
                return False
            if self.cycle is not None and not self.cycle.response_complete:
                return False  # a response is being sent on this connection: not ours to cut
            self._reject(408, f"Request headers not received within {header_timeout:g} s", "request_timeout")
            return True

        def body_timed_out(self, now: float) -> bool:
            since = self._body_since
            if since is None or self.transport.is_closing():
                return False
            if self.flow.read_paused:  # we stopped reading (the app is behind): not the client's delay
                self._body_last = now
            stalled = now - self._body_last >= body_timeout
            if not stalled and (self._client.trusted or now - since < body_timeout):
                return False
            self._body_since = None
            if self._client.trusted or now - since < body_timeout:
                message = f"Request body stalled: nothing received for {body_timeout:g} s"
            else:
                message = (
                    f"Request body not received within {body_timeout:g} s of its headers (a request without "
                    "a valid key or session must send its whole body in that time)"
                )
            cycle = self.cycle
            if cycle is not None and cycle.response_started:  # answered already: only the connection is left
                self._client.close()
                return True
            self._client.refusal = (408, message)
            self._reject(408, message, "request_timeout")
            return True

    def _sweep(connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(connections):
            check = getattr(conn, "header_timed_out", None)
            if check is not None and not check(now) and not conn.body_timed_out(now):
                conn.idle_timed_out(now)
        sweeper[0] = loop.call_later(_SWEEP_SECONDS, _sweep, connections, loop) if connections else None

    return GuardedProtocol


def _ambiguous_framing(headers: list[tuple[bytes, bytes]]) -> bool:
    """A ``Transfer-Encoding`` other than exactly one ``chunked``, or one beside a ``Content-Length``
    (names are lower-case here: uvicorn's parser callbacks make them so)."""
    coding = None
    length = False
    for name, value in headers:
        if name == b"transfer-encoding":
            if coding is not None:
                return True
            coding = value
        elif name == b"content-length":
            length = True
    return coding is not None and (length or coding.strip().lower() != b"chunked")
