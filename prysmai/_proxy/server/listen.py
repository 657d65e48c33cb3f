"""Binding the proxy's listening socket before anything is announced or created.

``prysmai proxy`` binds first, then opens the store and prints its banner, and hands the bound
socket to uvicorn: a busy port is a one-line error with nothing left behind, and ``--port 0``
names the port it really got.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """The address is taken (another proxy, another server)."""


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restart can reuse the port while old connections sit in TIME_WAIT
        # (this never lets two live servers share it on Linux).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(exc.errno, exc.strerror) from None
        raise
    return sock


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host
