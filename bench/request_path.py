"""The proxy's request path alone: CPU per request of its ASGI app, in-process, no network.

Each run is a fresh process that imports ``prysmai`` from one checkout, starts its ``ProxyApp`` on
a new store and calls it directly with a chat/completions request whose upstream is a stub that
answers at once (a one-chunk stream, or a small JSON answer). It reports microseconds per request
(the best of 7 passes of 1 000 after 300 warm-up requests), so what it compares is the Python the
proxy runs for a request -- authentication, routing, limits, parsing, usage injection, relaying,
queueing the trace -- without the network, the upstream, uvicorn or other processes' noise,
which make 0.05 ms differences invisible in ``proxy_overhead.py``. The default asyncio loop
(not uvloop) and the trace writer's thread (not its process) are used, in both checkouts.

    python bench/request_path.py --baseline DIR      # DIR holds another checkout's prysmai/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import PRYSM_KEY, REPO_DIR, emit, median

_RUN = r"""
import asyncio, json, sys, tempfile, time
source, kind = sys.argv[1], sys.argv[2]
sys.path.insert(0, source)
import prysmai
assert prysmai.__file__.startswith(source), prysmai.__file__
try:
    from prysmai._proxy.server.app import ProxyApp
    from prysmai._proxy.config.settings import ProxyConfig
except ImportError:  # a checkout from before the proxy's rooms
    from prysmai._proxy.app import ProxyApp
    from prysmai._proxy.config import ProxyConfig

KEY = sys.argv[3]
STREAM = kind == "stream"
settings = dict(keys=[KEY], db_path=tempfile.mkdtemp() + "/t.db", upstream="http://127.0.0.1:9/v1", port=0,
                upstream_api_key="sk-upstream")
try:
    config = ProxyConfig(trace_writer="thread", **settings)
except TypeError:  # a checkout from before the writer process
    config = ProxyConfig(**settings)
app = ProxyApp(config)
CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
         b'"delta":{"role":"assistant","content":"hi"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n')
BODY = (b'{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":'
        b'"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}')


class Answer:
    status = 200
    raw_headers = [(b"Content-Type", b"text/event-stream" if STREAM else b"application/json"), (b"x-request-id", b"r")]

    async def read(self):
        return BODY

    async def _chunks(self):
        yield CHUNK
        yield b"data: [DONE]\n\n"

    def chunks(self):
        return self._chunks()

    def buffered(self):
        return b""

    async def aclose(self):
        pass


class Upstream:
    async def send(self, method, url, headers, body):
        return Answer()

    async def aclose(self):
        pass


request = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "stream": STREAM})
request = request.encode()
try:  # the client's connection, as the proxy's own server protocol passes it
    from prysmai._proxy.asgi import CONNECTION_KEY
    from prysmai._proxy.server.guard import ClientConnection
except ImportError:  # a checkout from before it did
    CONNECTION_KEY = ClientConnection = None


class Transport:
    def write(self, data):
        pass

    def writelines(self, data):
        pass

    def is_closing(self):
        return False


scope = {
    "type": "http", "method": "POST", "path": "/api/v1/chat/completions", "raw_path": b"/api/v1/chat/completions",
    "query_string": b"", "scheme": "http", "http_version": "1.1", "asgi": {"version": "3.0"},
    "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 3000),
    "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + KEY.encode()),
                (b"content-type", b"application/json"), (b"content-length", str(len(request)).encode())],
}
if CONNECTION_KEY is not None:
    scope[CONNECTION_KEY] = ClientConnection(Transport())  # one kept-alive connection


async def one():
    sent = [False]
    never = asyncio.get_running_loop().create_future()

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": request, "more_body": False}
        await never  # the client stays connected

    async def send(message):
        pass

    await app(scope, receive, send)


async def main():
    await app.startup()
    getattr(app, "forwarder", app).client = Upstream()  # (before the rooms: the app itself)
    for _ in range(300):
        await one()
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(1000):
            await one()
        best = min(best, (time.perf_counter() - start) / 1000)
    await app.shutdown()
    print(json.dumps({"us_per_request": round(best * 1e6, 2)}))


asyncio.run(main())
"""


def run(source: Path, kind: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(source), kind, PRYSM_KEY],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_request"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR", help="another checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", default="stream,plain")
    args = parser.parse_args(argv)
    targets = {"this": REPO_DIR, **{f"baseline{i or ''}": Path(d) for i, d in enumerate(args.baseline)}}
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        names = list(targets)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate the order each round
        for kind in args.kinds.split(","):
            for name in names:
                us = run(targets[name], kind)
                results.setdefault((name, kind), []).append(us)
                emit({"bench": "request_path", "round": r, "target": name, "kind": kind, "us_per_request": us})
    for (name, kind), values in sorted(results.items()):
        spread = f"[{min(values):.1f}-{max(values):.1f}]"
        print(f"  {name} {kind}: {median(values):.1f} us/request {spread}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
