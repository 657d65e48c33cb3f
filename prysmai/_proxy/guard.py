"""Limits on client connections that uvicorn's httptools protocol does not have.

uvicorn holds a connection that never finishes its request headers for as long as the client
likes (its keep-alive timeout only runs between requests), accepts headers of any size, and its
``limit_concurrency`` answers with a plain-text 503. :func:`guarded_protocol` returns its
httptools protocol with three guards, each answered with an OpenAI-style JSON error and
``Connection: close``:

* a header-read timeout (``408``): from a connection's start, or a request's first byte, to the
  end of its headers -- checked by one sweep per second over the open connections, so a request
  pays for two attribute writes, not a timer;
* a header size limit (``431``) on the request line plus headers;
* a cap on concurrent connections (``503``) -- a connection over it is answered and closed at once.

It also answers a request that is not valid HTTP (``400``) in JSON rather than uvicorn's plain text,
and closes a keep-alive connection left idle for ``timeout_keep_alive`` seconds in the same sweep
(to within its period) rather than by uvicorn's libuv timer, which is created after every response
and cancelled by the next request's first bytes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import _wire

_SWEEP_SECONDS = 1.0
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class _HeaderTooLarge(Exception):
    pass


def _error_response(status: int, message: str, code: str) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
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


def guarded_protocol(header_timeout: float, max_header_bytes: int, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the three guards above (a fresh class per server)."""
    sweeper: list[asyncio.TimerHandle | None] = [None]

    class GuardedProtocol(HttpToolsProtocol):
        _head_since: float | None = None  # loop time when the current request's head began
        _head_bytes = 0
        _idle_since: float | None = None  # loop time when the last response ended (keep-alive)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._reject(503, f"Too many connections (more than {max_connections}); retry later", "overloaded")
                return
            self._head_since = self.loop.time()
            if sweeper[0] is None:
                sweeper[0] = self.loop.call_later(_SWEEP_SECONDS, _sweep, self.connections, self.loop)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if not self.connections and sweeper[0] is not None:
                sweeper[0].cancel()
                sweeper[0] = None

        def data_received(self, data: bytes) -> None:
            self._idle_since = None  # (uvicorn's own cancels its keep-alive timer here)
            if self._head_since is not None:
                self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)
            except _HeaderTooLarge:
                return
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, _HeaderTooLarge):
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
            # As uvicorn's own answer (not an application request: no trace), but in JSON.
            self.logger.debug("invalid HTTP request received")
            self._reject(
                400,
                "Invalid HTTP request (malformed request line or headers, e.g. a control character in a header value)",
                "invalid_http_request",
            )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_since is None:
                self._head_since = self.loop.time()
                self._head_bytes = 0

        def on_headers_complete(self) -> None:
            if self._head_bytes > max_header_bytes:  # maybe: this chunk also held body bytes
                size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
                if size > max_header_bytes:
                    self._too_large()
                    raise _HeaderTooLarge
            self._head_since = None
            self._head_bytes = 0
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            if self.pipeline or self.transport.is_closing():
                # uvicorn's own: start the next pipelined request, or nothing; no timer either way.
                super().on_response_complete()
                return
            # As uvicorn's, but the keep-alive timeout is the sweep's: no timer per response.
            self.server_state.total_requests += 1
            self.flow.resume_reading()
            self._idle_since = self.loop.time()

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
            if idle is None or now - idle < self.timeout_keep_alive or self.transport.is_closing():
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

    def _sweep(connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(connections):
            check = getattr(conn, "header_timed_out", None)
            if check is not None and not check(now):
                conn.idle_timed_out(now)
        sweeper[0] = loop.call_later(_SWEEP_SECONDS, _sweep, connections, loop) if connections else None

    return GuardedProtocol
