"""The upstream client's pooled connections: each holds a descriptor of our own (for the cheap
``TCP_INFO`` check), which must never keep a connection open after aiohttp closed it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from prysmai._proxy.config.settings import ProxyConfig
from prysmai._proxy.server import upstream as upstream_module
from prysmai._proxy.server.upstream import AiohttpUpstream

from ..conftest import KEY, ClosingUpstream, FakeUpstream, RawUpstream, free_port


class KeepAliveUpstream(RawUpstream):
    """A keep-alive server that records, per connection, how many requests it answered and
    whether the peer closed it (EOF)."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[int] = []
        self.closed_by_peer: list[threading.Event] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.answered)
        self.answered.append(0)
        closed = threading.Event()
        self.closed_by_peer.append(closed)
        try:
            while True:
                await self.read_request(reader)
                await self.answer(writer)
                self.answered[index] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            closed.set()
        finally:
            writer.close()


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
        assert response.status == 200 and await response.read() == RawUpstream.BODY
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


async def _posts_through(url: str, count: int) -> list[int]:
    client = AiohttpUpstream(ProxyConfig(keys=["sk-prysm-unused-0123456789"], upstream=url))
    statuses = []
    try:
        for _ in range(count):
            response = await client.send("POST", f"{url}/chat/completions", [], b"{}")
            await response.read()
            await response.aclose()
            statuses.append(response.status)
    finally:
        await client.aclose()
    return statuses


@pytest.mark.parametrize("own_descriptor", [True, False], ids=["duplicate", "no-descriptor-left"])
def test_pooled_connections_the_upstream_closed_are_never_used_with_or_without_our_descriptor(
    own_descriptor: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not own_descriptor:  # as when os.dup fails (EMFILE): the check reads uvloop's pseudo-socket
        monkeypatch.setattr(upstream_module, "_own_socket", lambda transport: None)
    with ClosingUpstream() as server:
        loop = uvloop.new_event_loop()
        try:
            statuses = loop.run_until_complete(_posts_through(server.url, 40))
        finally:
            loop.close()
    assert statuses == [200] * 40
    assert server.requests == 40  # each sent once


def _start_proxy_process(fake: FakeUpstream, tmp_path: Path, **popen: Any) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRYSM_")}
    argv = [
        sys.executable, "-m", "prysmai._cli", "proxy", "--port", str(port), "--key", KEY,
        "--db", str(tmp_path / "traces.db"), "--upstream", fake.url, "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen), port


def _wait(proc: subprocess.Popen[bytes], ready: Any, pause: float = 0.01) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        assert proc.poll() is None, "the proxy exited at start-up"
        assert time.monotonic() < deadline, "the proxy did not come up"
        time.sleep(pause)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _healthy(port: int) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1) as r:
        return bool(r.status == 200)
    return False


@pytest.mark.skipif(not os.path.isfile("/proc/self/limits"), reason="reads /proc/PID/limits (Linux)")
def test_prysmai_proxy_raises_a_low_open_files_limit_to_what_its_connection_caps_need(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1000 + 2 * 1000 + 256  # the default caps: client connections, upstream connections
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard limit ({hard}) is below what the test checks for")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    proc, port = _start_proxy_process(fake, tmp_path, preexec_fn=low_limit)
    try:
        _wait(proc, lambda: _healthy(port))
        assert _open_files_limit(proc.pid) >= want
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.skipif(not os.path.isfile("/proc/self/limits"), reason="reads /proc/PID/limits (Linux)")
def test_sigterm_while_the_proxy_starts_stops_it(fake: FakeUpstream, tmp_path: Path) -> None:
    # The CLI binds the port before uvicorn handles signals: a service manager stopping the proxy
    # in between must not be ignored. The raised open-files limit marks the start of serve(), just
    # before it puts its handlers in place and starts uvicorn.
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit ({hard}) is too low to see the proxy raise its soft one")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    proc, _port = _start_proxy_process(fake, tmp_path, preexec_fn=low_limit)
    try:
        _wait(proc, lambda: _open_files_limit(proc.pid) > 512, pause=0.0005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _open_files_limit(pid: int) -> int:
    with contextlib.suppress(OSError, StopIteration):
        limits = Path(f"/proc/{pid}/limits").read_text()
        return int(next(x for x in limits.splitlines() if x.startswith("Max open files")).split()[3])
    return 0
