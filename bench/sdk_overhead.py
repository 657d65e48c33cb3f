"""SDK per-call overhead: raw openai client vs ``monitor()`` vs ``instrument()``, on a mock transport.

Every request is answered in memory by the http library's own mock transport (``httpx2`` for
openai 3.x's default client, ``httpx`` for 1.x/2.x and for 3.x's legacy lane), so only
client-side work is timed: openai's request building and response parsing, plus whatever prysmai
adds. A ``prysm_context`` (user, session, metadata) is in effect throughout, so the routed
clients send their ``X-Prysm-*`` headers; the raw client ignores it.

Rounds interleave the variants in a rotating order, in short blocks, and the ratio to raw is
taken within each round, then the median over rounds: absolute times drift on a shared machine,
ratios measured side by side much less. The figure is this thread's CPU time per call (other
processes preempting us do not count); the wall-clock ratio is reported beside it. One JSON
line per (lane, mode, variant).

    python bench/sdk_overhead.py --rounds 60 --calls 25
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from _common import PRYSM_KEY, emit, percentile

PROXY_URL = "http://127.0.0.1:9/api/v1"
MESSAGES = [{"role": "user", "content": "Say hello."}]
MODEL = "gpt-4o-mini"
VARIANTS = ("raw", "manual", "monitor", "instrument")
#: The control: openai pointed at the proxy by hand (what monitor() sets up, without prysmai's hooks).
MANUAL = {"api_key": PRYSM_KEY, "base_url": PROXY_URL, "timeout": 120.0}
CONTEXT = {"user_id": "user-123", "session_id": "session-456", "metadata": {"feature": "bench", "tier": 2}}


def _completion_body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
            "system_fingerprint": "fp_bench",
        }
    ).encode()


def _stream_events(chunks: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": f"tok{i} "}) for i in range(chunks)]
    events.append(event({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return events


class Lane:
    """One http library (httpx2 or httpx): its mock transport and the clients built on it."""

    def __init__(self, name: str, stream_chunks: int) -> None:
        self.name = name
        self.http: Any = __import__(name)
        self.body = _completion_body()
        self.events = _stream_events(stream_chunks)
        self.seen: dict[str, dict[str, str]] = {}
        self.current = "raw"
        http = self.http

        class Chunks(http.SyncByteStream, http.AsyncByteStream):  # type: ignore[misc,name-defined]
            def __init__(self, events: list[bytes]) -> None:
                self._events = events

            def __iter__(self) -> Iterator[bytes]:
                return iter(self._events)

            async def __aiter__(self) -> Any:
                for ev in self._events:
                    yield ev

        self._chunks = Chunks

    def handler(self, request: Any) -> Any:
        if self.current not in self.seen:
            headers = request.headers
            self.seen[self.current] = {
                "host": request.url.host,
                "authorization": headers.get("authorization", "")[:16],
                "x-prysm-user-id": headers.get("x-prysm-user-id", ""),
            }
        http = self.http
        if b'"stream":true' in request.content:
            return http.Response(200, headers={"content-type": "text/event-stream"}, stream=self._chunks(self.events))
        return http.Response(200, headers={"content-type": "application/json"}, content=self.body)

    def sync_client(self, **kwargs: Any) -> Any:
        import openai

        http_client = self.http.Client(transport=self.http.MockTransport(self.handler))
        kwargs.setdefault("api_key", "sk-openai-bench")
        return openai.OpenAI(http_client=http_client, max_retries=0, **kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        import openai

        http_client = self.http.AsyncClient(transport=self.http.MockTransport(self.handler))
        kwargs.setdefault("api_key", "sk-openai-bench")
        return openai.AsyncOpenAI(http_client=http_client, max_retries=0, **kwargs)


def _call_sync(client: Any, n: int, stream: bool) -> tuple[float, float]:
    """(CPU µs, wall µs) per call for n calls; CPU time is this thread's, immune to preemption."""
    gc.collect()
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    if stream:
        for _ in range(n):
            for _chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                pass
    else:
        for _ in range(n):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    return (time.thread_time_ns() - cpu) / n / 1000.0, (time.perf_counter_ns() - wall) / n / 1000.0


async def _call_async(client: Any, n: int, stream: bool) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    if stream:
        for _ in range(n):
            async for _chunk in await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                pass
    else:
        for _ in range(n):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    return (time.thread_time_ns() - cpu) / n / 1000.0, (time.perf_counter_ns() - wall) / n / 1000.0


def _toggle(variant: str) -> None:
    import prysmai

    if variant == "instrument":
        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=PROXY_URL)
    elif prysmai.is_instrumented():
        prysmai.uninstrument()


async def _measure_lane(lane: Lane, rounds: int, calls: int, stream_calls: int) -> list[dict[str, Any]]:
    import prysmai

    sync_clients = {
        "raw": lane.sync_client(),
        "manual": lane.sync_client(**MANUAL),
        "monitor": prysmai.monitor(lane.sync_client(), prysm_key=PRYSM_KEY, base_url=PROXY_URL),
        "instrument": lane.sync_client(),
    }
    async_clients = {
        "raw": lane.async_client(),
        "manual": lane.async_client(**MANUAL),
        "monitor": prysmai.monitor(lane.async_client(), prysm_key=PRYSM_KEY, base_url=PROXY_URL),
        "instrument": lane.async_client(),
    }
    modes = [("sync", False), ("sync", True), ("async", False), ("async", True)]
    times: dict[tuple[str, bool, str], list[float]] = {}
    walls: dict[tuple[str, bool, str], list[float]] = {}

    async def run_block(kind: str, stream: bool, variant: str, n: int) -> tuple[float, float]:
        _toggle(variant)
        lane.current = variant
        try:
            if kind == "sync":
                _call_sync(sync_clients[variant], 3, stream)  # untimed: caches after (un)patching
                return _call_sync(sync_clients[variant], n, stream)
            await _call_async(async_clients[variant], 3, stream)
            return await _call_async(async_clients[variant], n, stream)
        finally:
            _toggle("raw")

    # Warm-up: every path once (imports, lazy resources, caches), and record what was sent.
    for kind, stream in modes:
        for variant in VARIANTS:
            await run_block(kind, stream, variant, 5)
    for r in range(rounds):
        for kind, stream in modes:
            shift = r % len(VARIANTS)
            order = VARIANTS[shift:] + VARIANTS[:shift]  # rotate, so no variant always goes first
            n = stream_calls if stream else calls
            for variant in order:
                cpu, wall = await run_block(kind, stream, variant, n)
                times.setdefault((kind, stream, variant), []).append(cpu)
                walls.setdefault((kind, stream, variant), []).append(wall)

    import openai

    records = []
    for kind, stream in modes:
        raw = times[(kind, stream, "raw")]
        manual = times[(kind, stream, "manual")]
        for variant in VARIANTS:
            series = times[(kind, stream, variant)]
            ratios = [v / b for v, b in zip(series, raw)]
            vs_manual = [v / b for v, b in zip(series, manual)]
            wall_ratios = [v / b for v, b in zip(walls[(kind, stream, variant)], walls[(kind, stream, "raw")])]
            records.append(
                {
                    "bench": "sdk",
                    "openai": openai.__version__,
                    "lane": lane.name,
                    "mode": kind,
                    "stream": stream,
                    "variant": variant,
                    "rounds": len(series),
                    "calls": stream_calls if stream else calls,
                    "us_per_call": round(percentile(series, 50), 2),
                    "wall_us_per_call": round(percentile(walls[(kind, stream, variant)], 50), 2),
                    "ratio": round(percentile(ratios, 50), 4),
                    "ratio_p25": round(percentile(ratios, 25), 4),
                    "ratio_p75": round(percentile(ratios, 75), 4),
                    "added_pct": round((percentile(ratios, 50) - 1.0) * 100.0, 2),
                    "added_vs_manual_pct": round((percentile(vs_manual, 50) - 1.0) * 100.0, 2),
                    "wall_added_pct": round((percentile(wall_ratios, 50) - 1.0) * 100.0, 2),
                    "sent_to": lane.seen.get(variant, {}),
                }
            )
    return records


def _check_routing(lane: Lane) -> list[str]:
    """What went wrong with the routing (empty when each variant was sent where it should be)."""
    problems = []
    raw = lane.seen.get("raw", {})
    if raw.get("host") != "api.openai.com" or raw.get("x-prysm-user-id"):
        problems.append(f"raw client was altered: {raw}")
    for variant in ("monitor", "instrument"):
        seen = lane.seen.get(variant, {})
        if seen.get("host") != "127.0.0.1" or not seen.get("authorization", "").startswith("Bearer sk-prysm"):
            problems.append(f"{variant} client was not routed to the proxy: {seen}")
        elif seen.get("x-prysm-user-id") != CONTEXT["user_id"]:
            problems.append(f"{variant} client sent no X-Prysm-User-Id: {seen}")
    return problems


def available_lanes() -> list[str]:
    import openai

    major = int(openai.__version__.split(".")[0])
    lanes = ["httpx2"] if major >= 3 else []
    try:
        import httpx  # noqa: F401  # only probed: the legacy lane needs it
    except ImportError:
        pass
    else:
        lanes.append("httpx")
    return lanes


async def main_async(args: argparse.Namespace) -> int:
    import prysmai

    lanes = args.lane or available_lanes()
    failed = False
    with prysmai.prysm_context(**CONTEXT):
        for name in lanes:
            lane = Lane(name, args.chunks)
            for record in await _measure_lane(lane, args.rounds, args.calls, args.stream_calls):
                emit(record)
            problems = _check_routing(lane)
            if problems:
                failed = True
                for problem in problems:
                    print(f"sdk_overhead: {name}: {problem}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SDK per-call overhead on an in-memory transport.")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--calls", type=int, default=25, help="calls per block, not streamed")
    parser.add_argument("--stream-calls", type=int, default=6, help="calls per block, streamed")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--lane", action="append", choices=["httpx2", "httpx"], help="default: all available")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
