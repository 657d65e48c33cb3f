"""A lean HTTP/1.1 load client for chat completions; one run prints one JSON line.

Raw asyncio protocol on keep-alive connections (uvloop when installed): a request costs the
client a few tens of microseconds, which matters because the client shares the machine's two
cores with the proxy and the upstream it measures. Times are taken on the client side.

Modes:
* ``seq``    one connection, requests one after another (not streamed): latency percentiles.
* ``stream`` one connection, streamed requests one after another: time to first content chunk
  (TTFT), the mean gap between content chunks, and the total time.
* ``load``   ``--concurrency`` connections each sending requests back to back until ``--requests``
  have been sent or ``--max-seconds`` have passed: requests per second and latency percentiles.

    python bench/client.py --url http://127.0.0.1:8000/v1/chat/completions --mode seq --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from _common import emit, percentile, run_async

_perf = time.perf_counter


class HTTPError(Exception):
    pass


class _Result:
    __slots__ = ("body", "chunks", "status", "t_done", "t_head", "t_start")

    def __init__(self, t_start: float) -> None:
        self.t_start = t_start
        self.t_head = 0.0
        self.t_done = 0.0
        self.status = 0
        self.body = bytearray()
        # (arrival time, bytes) of each read that carried body bytes: SSE events are split later.
        self.chunks: list[tuple[float, bytes]] = []


class ClientConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.result: _Result | None = None
        self.waiter: asyncio.Future[_Result] | None = None
        self.record_chunks = False
        self.state = "idle"  # idle | head | length | chunked | close
        self.remaining = 0
        self.keep_alive = True
        self.closed = False

    # -- protocol callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's class is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == "close" and self.result is not None:
            self._finish(_perf())
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HTTPError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = _perf()
        self.buf += data
        try:
            self._parse(now)
        except Exception as exc:  # a malformed answer fails the request, not the run
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(HTTPError(f"bad response: {exc!r}"))
            if self.transport is not None:
                self.transport.close()

    # -- request / response ----------------------------------------------------------------
    def send(self, payload: bytes, record_chunks: bool) -> asyncio.Future[_Result]:
        assert self.transport is not None and self.state == "idle"
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.result = _Result(_perf())
        self.record_chunks = record_chunks
        self.state = "head"
        self.transport.write(payload)
        return self.waiter

    def _body_bytes(self, data: bytes, now: float) -> None:
        assert self.result is not None
        self.result.body += data
        if self.record_chunks and data:
            self.result.chunks.append((now, data))

    def _finish(self, now: float) -> None:
        result = self.result
        assert result is not None
        result.t_done = now
        self.state = "idle"
        self.result = None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(result)

    def _parse(self, now: float) -> None:
        buf = self.buf
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                status = int(lines[0].split(" ", 2)[1])
                if status == 100:
                    continue
                assert self.result is not None
                self.result.status = status
                self.result.t_head = now
                length = -1
                chunked = False
                self.keep_alive = not lines[0].startswith("HTTP/1.0")
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    lname = name.strip().lower()
                    if lname == "content-length":
                        length = int(value.strip())
                    elif lname == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                    elif lname == "connection":
                        self.keep_alive = "close" not in value.lower()
                if chunked:
                    self.state = "chunked"
                elif length >= 0:
                    self.state = "length"
                    self.remaining = length
                else:
                    self.state = "close"
                    self.keep_alive = False
            elif self.state == "length":
                take = min(self.remaining, len(buf))
                if take:
                    self._body_bytes(bytes(buf[:take]), now)
                    del buf[:take]
                    self.remaining -= take
                if self.remaining == 0:
                    self._finish(now)
                return
            elif self.state == "chunked":
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                if size == 0:
                    end = buf.find(b"\r\n\r\n", eol)
                    if eol + 2 <= len(buf) and buf[eol + 2 : eol + 4] == b"\r\n":
                        del buf[: eol + 4]
                    elif end >= 0:
                        del buf[: end + 4]
                    else:
                        return
                    self._finish(now)
                    return
                if len(buf) < eol + 2 + size + 2:
                    return
                self._body_bytes(bytes(buf[eol + 2 : eol + 2 + size]), now)
                del buf[: eol + 2 + size + 2]
            elif self.state == "close":
                if buf:
                    self._body_bytes(bytes(buf), now)
                    buf.clear()
                return
            else:  # idle: unexpected bytes
                buf.clear()
                return


class Target:
    """Where requests go: URL, headers and the request bodies."""

    def __init__(self, url: str, api_key: str, model: str, extra_headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.path = path
        self.api_key = api_key
        self.model = model
        self.extra_headers = extra_headers

    def request(self, stream: bool, model: str | None = None) -> bytes:
        body: dict[str, Any] = {
            "model": model or self.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
        }
        if stream:
            body["stream"] = True
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"authorization: Bearer {self.api_key}\r\ncontent-type: application/json\r\n"
            f"accept: application/json\r\nuser-agent: prysmai-bench/1\r\n"
        )
        for name, value in self.extra_headers.items():
            head += f"{name}: {value}\r\n"
        head += f"content-length: {len(data)}\r\n\r\n"
        return head.encode("latin-1") + data

    async def connect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(ClientConnection, self.host, self.port)
        return proto


def _sse_content_times(result: _Result) -> list[float]:
    """Arrival times of the SSE events that carry non-empty delta content, in order."""
    times: list[float] = []
    pending = b""
    for when, data in result.chunks:
        pending += data
        while True:
            sep = pending.find(b"\n\n")
            if sep < 0:
                break
            event, pending = pending[:sep], pending[sep + 2 :]
            for line in event.split(b"\n"):
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]" or b'"content"' not in payload:
                    continue
                try:
                    choices = json.loads(payload).get("choices") or []
                except ValueError:
                    continue
                if choices and (choices[0].get("delta") or {}).get("content"):
                    times.append(when)
    return times


class Runner:
    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.sent = 0
        self.errors = 0
        self.error_samples: list[str] = []

    def _error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(message[:300])

    async def one(
        self, conn: ClientConnection | None, payload: bytes, stream: bool
    ) -> tuple[ClientConnection | None, _Result | None]:
        """Send one request on conn (reconnecting if needed); (connection to reuse, result or None)."""
        if conn is None or conn.closed:
            conn = await self.target.connect()
        self.sent += 1
        try:
            result = await asyncio.wait_for(conn.send(payload, stream), self.timeout)
        except (HTTPError, asyncio.TimeoutError, OSError) as exc:
            self._error(repr(exc))
            if conn.transport is not None:
                conn.transport.close()
            return None, None
        if result.status != 200:
            self._error(f"HTTP {result.status}: {bytes(result.body[:200])!r}")
            return (None if conn.closed else conn), None
        return (None if conn.closed else conn), result

    async def sequential(self, n: int, warmup: int, stream: bool, model: str | None) -> list[_Result]:
        payload = self.target.request(stream, model)
        conn: ClientConnection | None = None
        results: list[_Result] = []
        for i in range(warmup + n):
            conn, result = await self.one(conn, payload, stream)
            if result is not None and i >= warmup:
                results.append(result)
        if conn is not None and conn.transport is not None:
            conn.transport.close()
        return results

    async def load(self, n: int, concurrency: int, max_seconds: float) -> tuple[list[float], float]:
        payload = self.target.request(False)
        latencies: list[float] = []
        remaining = [n]
        deadline = _perf() + max_seconds

        async def worker(conn: ClientConnection | None) -> None:
            while remaining[0] > 0 and _perf() < deadline:
                remaining[0] -= 1
                conn, result = await self.one(conn, payload, False)
                if result is not None:
                    latencies.append(result.t_done - result.t_start)
            if conn is not None and conn.transport is not None:
                conn.transport.close()

        # Open the connections (one warm-up request each) first, so set-up is not timed.
        opened = await asyncio.gather(*(self.one(None, payload, False) for _ in range(concurrency)))
        start = _perf()
        await asyncio.gather(*(worker(conn) for conn, _ in opened))
        return latencies, _perf() - start


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000.0, 4)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = dict(h.split(":", 1) for h in args.header)
    target = Target(args.url, args.api_key, args.model, {k.strip(): v.strip() for k, v in headers.items()})
    runner = Runner(target, args.timeout)
    record: dict[str, Any] = {"mode": args.mode}
    if args.mode == "seq":
        results = await runner.sequential(args.requests, args.warmup, False, None)
        lat = [r.t_done - r.t_start for r in results]
        record.update(
            n=len(lat),
            p50_ms=_ms(lat, 50),
            p95_ms=_ms(lat, 95),
            p99_ms=_ms(lat, 99),
            p999_ms=_ms(lat, 99.9),
            max_ms=_ms(lat, 100),
            mean_ms=round(sum(lat) / len(lat) * 1000.0, 4) if lat else None,
        )
    elif args.mode == "stream":
        results = await runner.sequential(args.requests, args.warmup, True, args.stream_model)
        ttft: list[float] = []
        gaps: list[float] = []
        totals: list[float] = []
        content_counts: list[int] = []
        for r in results:
            times = _sse_content_times(r)
            content_counts.append(len(times))
            if not times:
                runner._error("stream without content chunks")
                continue
            ttft.append(times[0] - r.t_start)
            totals.append(r.t_done - r.t_start)
            if len(times) > 1:
                gaps.append((times[-1] - times[0]) / (len(times) - 1))
        record.update(
            n=len(ttft),
            ttft_p50_ms=_ms(ttft, 50),
            ttft_p95_ms=_ms(ttft, 95),
            ttft_p99_ms=_ms(ttft, 99),
            ttft_p999_ms=_ms(ttft, 99.9),
            gap_p50_ms=_ms(gaps, 50),
            total_p50_ms=_ms(totals, 50),
            total_p99_ms=_ms(totals, 99),
            total_p999_ms=_ms(totals, 99.9),
            content_chunks=min(content_counts) if content_counts else 0,
        )
    else:
        lat, elapsed = await runner.load(args.requests, args.concurrency, args.max_seconds)
        record.update(
            concurrency=args.concurrency,
            n=len(lat),
            seconds=round(elapsed, 4),
            rps=round(len(lat) / elapsed, 2) if elapsed > 0 else 0.0,
            p50_ms=_ms(lat, 50),
            p99_ms=_ms(lat, 99),
        )
    record.update(sent=runner.sent, errors=runner.errors)
    if runner.error_samples:
        record["error_samples"] = runner.error_samples
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="One benchmark run against a chat completions URL.")
    parser.add_argument("--url", required=True, help="full URL of the chat completions endpoint")
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--header", action="append", default=[], help="extra header, NAME:VALUE")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--stream-model", default=None, help="model name for streamed requests")
    parser.add_argument("--mode", choices=["seq", "stream", "load"], default="seq")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time bound of a load run")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE copied into the JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    record: dict[str, Any] = dict(label.split("=", 1) for label in args.label)
    cpu0 = time.process_time()
    record.update(run_async(run(args)))
    record["client_cpu_s"] = round(time.process_time() - cpu0, 4)
    emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
