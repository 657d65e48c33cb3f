"""The upstream client's pooled connections: each holds a descriptor of our own (for the cheap
``TCP_INFO`` check), which must never keep a connection open after aiohttp closed it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from prysmai._proxy.config import ProxyConfig
from prysmai._proxy.upstream import AiohttpUpstream

_BODY = b'{"id":"x","object":"chat.completion","model":"m","choices":[]}'


class KeepAliveUpstream:
    """A raw keep-alive HTTP/1.1 server on its own thread that records, per connection, how many
    requests it answered and whether the peer closed it (EOF)."""

    def __init__(self) -> None:
        self.answered: list[int] = []
        self.closed_by_peer: list[threading.Event] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        async def start() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.answered)
        self.answered.append(0)
        closed = threading.Event()
        self.closed_by_peer.append(closed)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(_BODY), _BODY)
                )
                await writer.drain()
                self.answered[index] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            closed.set()
        finally:
            writer.close()

    def __enter__(self) -> KeepAliveUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def upstream() -> Iterator[KeepAliveUpstream]:
    with KeepAliveUpstream() as server:
        yield server


def _sockets() -> Counter[str]:
    """This process's open sockets: how many descriptors name each."""
    found: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found[target] += 1
    return found


async def _three_requests_then_close(url: str) -> tuple[list[int], list[str]]:
    client = AiohttpUpstream(ProxyConfig(keys=["sk-prysm-unused-0123456789"], upstream=url))
    before = _sockets()
    for _ in range(3):
        response = await client.send("POST", f"{url}/chat/completions", [(b"content-type", b"application/json")], b"{}")
        assert response.status == 200 and await response.read() == _BODY
        await response.aclose()
    new = {name: n for name, n in _sockets().items() if name not in before}
    await client.aclose()
    await asyncio.sleep(0.05)  # the transports' connection_lost callbacks
    return sorted(new.values()), [name for name in new if name in _sockets()]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc (Linux)")
@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"])
def test_closing_the_pool_closes_each_connection_and_its_own_descriptor(
    upstream: KeepAliveUpstream, loop_factory: Any
) -> None:
    loop = loop_factory()
    try:
        descriptors, left = loop.run_until_complete(_three_requests_then_close(upstream.url))
    finally:
        loop.close()
    assert upstream.answered == [3]  # one pooled connection, reused: the check ran on it
    # One connection: the upstream's end (this process too) once, ours twice (the transport's
    # descriptor and our duplicate for TCP_INFO).
    assert descriptors == [1, 2]
    assert left == []  # all closed
    assert upstream.closed_by_peer[0].wait(5)  # and the upstream saw the connection end
