"""The connection to the provider: one pooled HTTP client behind a small interface, and header
filtering.

The app sees only :class:`Upstream` (``send`` / ``aclose``), :class:`UpstreamResponse`
(``status``, ``raw_headers``, ``read``, ``chunks``, ``aclose``) and the two exception tuples
:data:`TIMEOUT_ERRORS` (→ 504) and :data:`TRANSPORT_ERRORS` (→ 502), so the HTTP library is a
detail of this module (and of ``demo_model``, the offline upstream).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import socket
import struct
import sys
from typing import Any, Protocol

import aiohttp
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from ..config.settings import ProxyConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

#: Hop-by-hop and framing headers that must not cross the proxy, plus everything that carries
#: credentials or Prysm's own metadata (the upstream gets its own Authorization).
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"authorization",
        b"accept-encoding",
        b"cookie",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
        b"set-cookie",
    }
)

#: Raised by ``send``, ``read`` and ``chunks`` when the upstream is too slow (connect or read).
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)
#: Raised by ``send``, ``read`` and ``chunks`` when the upstream cannot be reached or breaks off.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError)
#: Either (a timeout first, where one class is both: asyncio's ``TimeoutError`` is an ``OSError``).
UPSTREAM_ERRORS = TIMEOUT_ERRORS + TRANSPORT_ERRORS


class UpstreamResponse(Protocol):
    """An upstream answer whose headers have arrived; the body is read with ``read`` or
    ``chunks`` (raw bytes as they arrive, transfer-decoded, not content-decoded)."""

    @property
    def status(self) -> int: ...

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def buffered(self) -> bytes:
        """The body's bytes already received (taken: ``chunks`` continues after them), without
        waiting; ``b""`` if none."""

    async def aclose(self) -> None:
        """Give the connection back (or close it, if the body was not read to the end)."""


class Upstream(Protocol):
    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_r", "raw_headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._r = response
        self.status = response.status
        self.raw_headers = response.raw_headers

    async def read(self) -> bytes:
        return await self._r.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._r.content.iter_any()

    def buffered(self) -> bytes:
        return self._r.content.read_nowait()

    async def aclose(self) -> None:
        # After the body's end the connection is back in the pool and this does nothing; before
        # it (a client that went away, an error) it closes the connection, which ends the
        # upstream request.
        self._r.close()


#: Offsets in Linux's ``struct tcp_info``: ``tcpi_state`` (u8) and ``tcpi_bytes_acked`` (u64,
#: since Linux 4.1).
_STATE, _BYTES_ACKED = 0, 120
_ESTABLISHED = 1
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_INFO = struct.Struct(f"=B{_BYTES_ACKED - 1}xQ")  # tcpi_state ... tcpi_bytes_acked


def _tcp_info(sock: Any) -> tuple[int, int] | None:
    """(state, bytes the peer acknowledged) of a TCP socket; None where unknown."""
    if _TCP_INFO is None or sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO.size)  # only the fields we read
    except (OSError, ValueError):
        return None
    if len(raw) < _INFO.size:
        return None
    state, acked = _INFO.unpack_from(raw)
    return state, acked


def _own_socket(transport: Any) -> socket.socket | None:
    """A socket object of our own on the transport's connection, for ``TCP_INFO``.

    uvloop exposes only a pseudo-socket whose ``getsockopt`` builds and detaches a
    ``socket.socket`` on every call (~3 µs idle, ~10 µs on a loaded machine, against ~1 µs on a
    real one), and a socket wrapped around the transport's own descriptor would close it, or a
    reused number, when collected. A duplicate descriptor is ours to close and names the same
    connection; it is closed when the connection is lost (until then it keeps the connection
    open, so it must be closed then: see :meth:`_Handler.connection_lost`). Without one (no
    descriptor left, not Linux) the check reads the transport's pseudo-socket, as before."""
    if _TCP_INFO is None:
        return None
    try:
        fd = transport.get_extra_info("socket").fileno()
        if fd < 0:
            return None
        return socket.socket(fileno=os.dup(fd))
    except (AttributeError, OSError, ValueError):
        return None


class _Handler(ResponseHandler):
    """aiohttp's connection protocol, remembering how many bytes the peer had acknowledged when
    a request went out and when the connection was lost.

    That is the proof that the upstream accepted no byte of a request: a server that had
    already closed its end answers our bytes with a reset, never an acknowledgement; a server
    that may have read them has acknowledged them."""

    acked_before = -1
    acked_at_loss = -1
    _sock: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sock = _own_socket(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        info = self.info()  # (without a duplicate, the transport's socket is still open here)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # our duplicate: the connection really closes once uvloop's is closed too
        if info is not None:
            self.acked_at_loss = info[1]
        super().connection_lost(exc)

    def info(self) -> tuple[int, int] | None:
        """(state, bytes acknowledged) now; None once lost or where unknown."""
        sock = self._sock
        if sock is None:  # the slow way, through the transport (see _own_socket)
            transport = self.transport
            return _tcp_info(transport.get_extra_info("socket")) if transport is not None else None
        return _tcp_info(sock)

    def nothing_accepted(self) -> bool:
        if self.acked_at_loss < 0:  # failed before the loss was seen
            info = self.info()
            if info is not None:
                self.acked_at_loss = info[1]
        return self.acked_before >= 0 and self.acked_at_loss == self.acked_before


#: The protocol of the connection the current task's request went out on.
_sent_on: contextvars.ContextVar[list[_Handler]] = contextvars.ContextVar("prysmai_sent_on")


class _CheckedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that never hands out a pooled connection the server already closed.

    The kernel knows before the event loop does: a server that closes an idle keep-alive
    connection just as we pick it has sent a FIN our loop has not processed yet, and aiohttp
    retries only idempotent methods on such a connection (a POST fails with
    ``ServerDisconnectedError``). One ``TCP_INFO`` call on the socket we are about to write to
    tells us first (its state is no longer ESTABLISHED) and records the acknowledged bytes for
    :meth:`_Handler.nothing_accepted`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp's protocol factory (an attribute since 3.0): ours, for the acknowledged bytes.
        self._factory = functools.partial(_Handler, loop=self._loop)  # type: ignore[assignment]

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        for _ in range(8):  # each round discards one dead pooled connection; then a fresh one
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            info = proto.info() if isinstance(proto, _Handler) else None
            if info is None or info[0] == _ESTABLISHED:
                break
            conn.close()
        else:
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            info = None
        if isinstance(proto, _Handler):
            proto.acked_before = info[1] if info is not None else -1
            proto.acked_at_loss = -1
            holder = _sent_on.get(None)
            if holder is not None:
                holder.append(proto)
        return conn


class AiohttpUpstream:
    """The upstream on one pooled ``aiohttp.ClientSession``: HTTP/1.1 keep-alive, no redirects,
    no cookie jar, no environment proxies, no automatic headers beyond ``Host`` and
    ``Content-Length``, bodies relayed as received (no decompression)."""

    def __init__(self, config: ProxyConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the event loop that serves the proxy.
        config = self._config
        connector = _CheckedConnector(
            limit=config.max_connections,
            limit_per_host=0,
            keepalive_timeout=60.0,
            enable_cleanup_closed=False,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.connect_timeout,  # waiting for a pooled connection and connecting
            sock_connect=config.connect_timeout,
            sock_read=config.upstream_timeout,  # between two reads, as the config documents
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            version=aiohttp.HttpVersion11,
            raise_for_status=False,
        )
        return self._session

    async def send(self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> _AiohttpResponse:
        session = self._session or self._open()
        target = URL(url, encoded=True)  # already percent-encoded: sent as the client wrote it
        header_list = [(k.decode("latin-1"), v.decode("latin-1") if v.isascii() else _text(v)) for k, v in headers]
        for attempt in (0, 1):
            sent_on: list[_Handler] = []
            token = _sent_on.set(sent_on)
            try:
                response = await session.request(
                    method, target, data=body or None, headers=header_list, allow_redirects=False
                )
                return _AiohttpResponse(response)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # The connection died before any answer. Send again -- once, on another
                # connection -- only when the upstream provably accepted no byte of the request.
                if attempt or not sent_on or not sent_on[-1].nothing_accepted():
                    raise
            finally:
                _sent_on.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _text(value: bytes) -> str:
    """A non-ASCII header value as aiohttp will write it back (UTF-8): exact for UTF-8 values."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def request_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream should see them (the caller adds the provider's
    credential: ``Provider.auth_header``)."""
    out = [(k, v) for k, v in headers if k not in _DROP_REQUEST and not k.startswith(b"x-prysm-")]
    out.append((b"accept-encoding", b"identity"))  # the proxy must read what it forwards
    return out


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bytes, bytes | None]:
    """The upstream's response headers as the client should see them (lower-cased names), with
    the content type and ``x-request-id`` picked out on the way.

    Never relayed: hop-by-hop headers, ``Set-Cookie`` (the upstream's cookie would be set for the
    proxy's origin, the dashboard's) and every ``X-Prysm-*`` header -- those are the proxy's own
    word: an upstream's ``X-Prysm-Origin: proxy`` on a 503 would make the SDK's fail-open send the
    request again, direct and uncaptured."""
    out = []
    ctype = b""
    request_id = None
    for k, v in raw:
        name = k.lower()
        if name in _DROP_RESPONSE or name.startswith(b"x-prysm-"):
            continue
        out.append((name, v))
        if name == b"content-type":
            ctype = v
        elif name == b"x-request-id":
            request_id = v
    return out, ctype, request_id
