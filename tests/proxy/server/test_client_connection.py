"""The client's connection as the proxy's server protocol hands it to the app
(``guard.ClientConnection``).

Writes: a response's head leaves with its body (or a stream's head with the events the upstream
sent with its own head) in one segment, and a stream's head at once when the upstream sent it
alone. Leaving: a client that goes away cancels its request at once, told by the protocol, and
through ASGI's ``receive`` where the server has no such protocol (uvicorn's h11).

Segments are counted where the client receives them: Linux's ``tcpi_data_segs_in`` (the data
segments a socket has received, whatever the reads) on the client's own socket. uvloop sends
every write at once (``TCP_NODELAY``), so two writes of the proxy are two segments.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from prysmai._proxy.server import serve as server
from prysmai._proxy.server.guard import ClientConnection

from ..conftest import KEY, FakeUpstream, ProxyHandle, RawUpstream

#: ``struct tcp_info``: ``tcpi_data_segs_in`` (u32, Linux 4.6+).
_DATA_SEGS_IN = 152
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts segments with Linux's TCP_INFO")


def _data_segs_in(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _DATA_SEGS_IN + 4)
    return int(struct.unpack_from("=I", raw, _DATA_SEGS_IN)[0])


def _request(path: str, body: dict[str, Any], key: str = KEY) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    ).encode() + data


def _connect(proxy: ProxyHandle) -> socket.socket:
    host, port = proxy.base_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _read_answer(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


# -- ClientConnection: writes ----------------------------------------------------------------------
class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gathered: list[list[bytes]] = []  # what each writelines got
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(b"".join(data))
        self.gathered.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_held_writes_leave_as_one_write_on_release_and_pass_through_otherwise() -> None:
    transport = _Transport()
    writes = ClientConnection(transport)  # type: ignore[arg-type]
    writes.write(b"a")
    assert transport.writes == [b"a"]
    writes.hold()
    writes.write(b"head")
    writes.write(b"body")
    assert transport.writes == [b"a"]
    writes.release()
    assert transport.writes == [b"a", b"headbody"]
    assert transport.gathered == [[b"head", b"body"]]  # one call, nothing joined (a body may be large)
    writes.release()  # again: nothing held, nothing written
    writes.hold()
    writes.release()  # held nothing: no empty write
    writes.write(b"z")
    assert transport.writes == [b"a", b"headbody", b"z"]


def test_held_writes_are_written_before_the_transport_closes() -> None:
    transport = _Transport()
    writes = ClientConnection(transport)  # type: ignore[arg-type]
    writes.hold()
    writes.write(b"head")
    writes.close()
    assert transport.writes == [b"head"] and transport.closed
    assert writes.is_closing()


# -- the proxy, end to end -------------------------------------------------------------------------
@linux_only
def test_a_json_answer_and_an_error_of_ours_each_reach_the_client_as_one_segment(proxy: ProxyHandle) -> None:
    with _connect(proxy) as sock:
        for request, status in (
            (_request("/api/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []}), b"200"),
            (_request("/api/v1/chat/completions", {"model": "gpt-4o-mini"}, key="sk-prysm-not-a-key-000000"), b"401"),
            (_request("/api/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []}), b"200"),
        ):
            before = _data_segs_in(sock)
            sock.sendall(request)
            answer = _read_answer(sock)
            assert answer.split(b" ", 2)[1] == status
            assert _data_segs_in(sock) - before == 1, answer[:200]


class _StreamingUpstream(RawUpstream):
    """Answers a streamed chat completion: its head (with the first event, or alone), then the
    rest once the test says so (``go``), so what the client holds in between is what the proxy
    sent on its own."""

    FIRST = b'data: {"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    REST = b"data: [DONE]\n\n"

    def __init__(self, first_with_head: bool) -> None:
        super().__init__()
        self.first_with_head = first_with_head
        self.go = threading.Event()

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.read_request(reader)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(head + self._chunk(self.FIRST) if self.first_with_head else head)
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait, 10)
        writer.write((b"" if self.first_with_head else self._chunk(self.FIRST)) + self._chunk(self.REST) + b"0\r\n\r\n")
        await writer.drain()
        writer.close()


def _read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        more = sock.recv(65536)
        assert more, f"connection closed before {marker!r}: {data!r}"
        data += more
    return data


@linux_only
def test_a_stream_s_head_leaves_with_the_event_the_upstream_sent_with_its_own(start_proxy: Any) -> None:
    with _StreamingUpstream(first_with_head=True) as upstream:
        proxy = start_proxy(upstream.url)
        with _connect(proxy) as sock:
            before = _data_segs_in(sock)
            sock.sendall(_request("/api/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, "messages": []}))
            data = _read_until(sock, b'"content":"hi"')
            assert data.startswith(b"HTTP/1.1 200 ")
            assert _data_segs_in(sock) - before == 1, data
            upstream.go.set()
            _read_until(sock, b"[DONE]", data)
    (trace,) = proxy.traces()
    assert trace["status"] == "success"
    assert json.loads(trace["response_body"])["choices"][0]["message"]["content"] == "hi"


@linux_only
def test_a_stream_s_head_is_not_held_back_when_the_upstream_sent_it_alone(start_proxy: Any) -> None:
    with _StreamingUpstream(first_with_head=False) as upstream:
        proxy = start_proxy(upstream.url)
        with _connect(proxy) as sock:
            sock.sendall(_request("/api/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, "messages": []}))
            sock.settimeout(5)  # the upstream sends nothing more until the client has the head
            data = _read_until(sock, b"\r\n\r\n")
            assert data.startswith(b"HTTP/1.1 200 ") and b"hi" not in data
            upstream.go.set()
            _read_until(sock, b"[DONE]", data)
    (trace,) = proxy.traces()
    assert trace["status"] == "success"
    assert json.loads(trace["response_body"])["choices"][0]["message"]["content"] == "hi"


# -- ClientConnection: the client leaving ----------------------------------------------------------
async def test_a_watched_task_is_cancelled_when_the_connection_is_lost_and_not_after_stop() -> None:
    connection = ClientConnection(_Transport())  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(asyncio.sleep(10))
    watch = connection.watch(waiting)  # type: ignore[arg-type]
    assert watch is connection and not watch.gone
    connection.connection_lost()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert watch.gone

    other = ClientConnection(_Transport())  # type: ignore[arg-type]
    kept = asyncio.ensure_future(asyncio.sleep(0.01))
    other.watch(kept).stop()  # type: ignore[arg-type]
    other.connection_lost()
    await kept  # not cancelled: the watch had stopped
    assert not other.gone and other.lost


async def test_watching_after_the_connection_was_lost_cancels_at_once() -> None:
    connection = ClientConnection(_Transport())  # type: ignore[arg-type]
    connection.connection_lost()
    waiting = asyncio.ensure_future(asyncio.sleep(10))
    assert connection.watch(waiting).gone  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await waiting


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(params=["guarded", "h11"])
def server_protocol(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The proxy's own protocol (the default), or uvicorn's h11 as where httptools is missing."""
    if request.param == "h11":
        monkeypatch.setattr(server, "guard_options", lambda *args: {"http": "h11"})
    return str(request.param)


def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_leaving_a_slow_call_cancels_it_at_once_with_either_protocol(
    server_protocol: str, fake: FakeUpstream, start_proxy: Any
) -> None:
    from prysmai._proxy.server.disconnect import DisconnectWatches

    proxy = start_proxy(fake.url)  # type: ignore[attr-defined]
    if server_protocol == "guarded":  # told by the protocol: a receive-based watch would never arm
        proxy.app.forwarder._watches = DisconnectWatches(delay=600.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{proxy.base_url}/chat/completions",
            json=CHAT,
            headers={**AUTH, "x-fake-delay-ms": "5000"},
            timeout=httpx.Timeout(30, read=0.2),
        )
    _wait_for(lambda: fake.abandoned, 3.0)  # well before the upstream's 5 s answer
    assert (fake.abandoned, fake.finished) == (1, 0)
    (trace,) = proxy.traces()
    assert trace["status"] == "cancelled" and trace["http_status"] is None
    assert "disconnected before the answer" in trace["error"]


def test_a_client_leaving_mid_stream_cancels_it_with_either_protocol(
    server_protocol: str, fake: FakeUpstream, start_proxy: Any
) -> None:
    proxy = start_proxy(fake.url)  # type: ignore[attr-defined]
    headers = {**AUTH, "x-fake-chunks": "200", "x-fake-gap-ms": "20"}
    got = b""
    with httpx.stream(
        "POST", f"{proxy.base_url}/chat/completions", json={**CHAT, "stream": True}, headers=headers, timeout=30
    ) as r:
        for chunk in r.iter_raw():
            got += chunk
            if got.count(b"tok") >= 3:
                break  # leaving the block closes the connection mid-stream
    assert fake.disconnected.wait(5), "the proxy did not close its upstream request"
    (trace,) = proxy.traces()
    assert trace["status"] == "cancelled" and "disconnected mid-stream" in trace["error"]
    content = json.loads(trace["response_body"])["choices"][0]["message"]["content"]
    assert content.startswith("tok0 tok1 tok2 ") and "tok199" not in content


def test_a_stream_read_to_its_end_is_a_success_with_either_protocol(
    server_protocol: str, fake: FakeUpstream, start_proxy: Any
) -> None:
    proxy = start_proxy(fake.url)  # type: ignore[attr-defined]
    with httpx.stream(
        "POST", f"{proxy.base_url}/chat/completions", json={**CHAT, "stream": True}, headers=AUTH, timeout=30
    ) as r:
        body = b"".join(r.iter_raw())
    assert body.rstrip().endswith(b"data: [DONE]")
    (trace,) = proxy.traces()
    assert trace["status"] == "success" and trace["error"] is None


def test_what_the_connection_does_not_define_is_the_transport_s() -> None:
    transport = _Transport()
    connection = ClientConnection(transport)  # type: ignore[arg-type]
    assert connection.gathered is transport.gathered  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        connection.no_such_attribute  # type: ignore[attr-defined]  # noqa: B018
