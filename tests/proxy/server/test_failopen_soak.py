"""Fail-open end to end: a ``PRYSM_AUTO`` application makes 500 calls (sync, async, streamed) while
a real ``prysmai proxy`` process is stopped and restarted five times under it.

Every call must succeed, and each must be either traced by the proxy or counted by
``prysmai.status()`` as sent direct, the two adding up to 500; the provider (the loopback fake that
stands in for api.openai.com, reached by the app through a transport that only swaps the host)
must receive each call exactly once, never with a Prysm key, and the proxy never the app's key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..conftest import KEY, UPSTREAM_KEY, FakeUpstream, free_port, read_traces

APP_KEY = "sk-app-provider-key-0123456789"
CALLS = 500
RESTARTS = 5

APP = r"""
import asyncio, json, os, sys, time
import openai
import prysmai

MAJOR = int(openai.__version__.split(".")[0])
if MAJOR >= 3:
    import httpx2 as hx
else:
    import httpx as hx

PORT = int(os.environ["FAKE_PORT"])
CONTROL = os.environ["CONTROL_DIR"]
CALLS, RESTARTS = int(sys.argv[1]), int(sys.argv[2])


def to_loopback(request):
    if request.url.host == "api.openai.com":
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=PORT)


class Loopback(hx.BaseTransport):
    def __init__(self):
        self.inner = hx.HTTPTransport()

    def handle_request(self, request):
        to_loopback(request)
        return self.inner.handle_request(request)


class AsyncLoopback(hx.AsyncBaseTransport):
    def __init__(self):
        self.inner = hx.AsyncHTTPTransport()

    async def handle_async_request(self, request):
        to_loopback(request)
        return await self.inner.handle_async_request(request)


client = openai.OpenAI(http_client=hx.Client(transport=Loopback()))
aclient = openai.AsyncOpenAI(http_client=hx.AsyncClient(transport=AsyncLoopback()))
MESSAGES = [{"role": "user", "content": "hi"}]
loop = asyncio.new_event_loop()


async def async_call(i):
    if i % 2:
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    r = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return r.choices[0].message.content


def call(i):
    kind = i % 4
    if kind == 0:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content
    if kind == 1:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    return loop.run_until_complete(async_call(i))


errors = []
segment = CALLS // (RESTARTS + 1)
for i in range(CALLS):
    k = i // segment
    if i % segment == segment // 2 and 1 <= k <= RESTARTS:
        # Half-way through a segment, wait until the test has restarted the proxy it stopped at the
        # segment's start: the calls before this point ran while the proxy was going down.
        while not os.path.exists(os.path.join(CONTROL, f"up-{k}")):
            time.sleep(0.005)
    try:
        text = call(i)
        if text not in ("Hello there!", "tok0 tok1 tok2 "):
            errors.append(f"call {i}: unexpected answer {text!r}")
    except Exception as exc:
        errors.append(f"call {i}: {type(exc).__name__}: {exc}")
    print(i + 1, flush=True)
    time.sleep(0.002)
print(json.dumps({"errors": errors, "status": prysmai.status().as_dict()}), flush=True)
"""


class ProxyProcess:
    def __init__(self, port: int, db: str, upstream: str) -> None:
        self.port = port
        self.argv = [
            sys.executable, "-m", "prysmai._cli", "proxy", "--port", str(port), "--key", KEY,
            "--db", db, "--upstream", upstream, "--log-level", "warning",
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PRYSM_")}
        self.env["OPENAI_API_KEY"] = UPSTREAM_KEY  # the proxy's stored provider credential
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, "the proxy exited at start-up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the proxy did not come up"
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: stop accepting, finish the requests in flight, write every pending trace."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def test_500_calls_while_the_proxy_restarts_five_times(fake: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    db = str(tmp_path / "traces.db")
    control = tmp_path / "control"
    control.mkdir()
    proxy = ProxyProcess(port, db, fake.url)  # type: ignore[attr-defined]
    proxy.start()
    fake_port = int(fake.url.rsplit(":", 1)[1].split("/")[0])  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    env.update(
        PRYSM_API_KEY=KEY,
        PRYSM_BASE_URL=f"http://127.0.0.1:{port}/api/v1",
        PRYSM_FALLBACK_COOLDOWN="0.1",  # the default 30 s would keep the test waiting
        OPENAI_API_KEY=APP_KEY,
        FAKE_PORT=str(fake_port),
        CONTROL_DIR=str(control),
    )
    app = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "run", "--", sys.executable, "-c", APP, str(CALLS), str(RESTARTS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    segment = CALLS // (RESTARTS + 1)
    try:
        assert app.stdout is not None
        done = 0
        for k in range(1, RESTARTS + 1):
            while done < k * segment:  # the app is at the start of segment k: stop the proxy under it
                line = app.stdout.readline()
                assert line, f"the app ended early: {app.stderr.read() if app.stderr else ''}"
                done = int(line)
            proxy.stop()
            time.sleep(0.05)
            proxy.start()
            (control / f"up-{k}").touch()
        out, err = app.communicate(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        proxy.stop()
    assert app.returncode == 0, err
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    status = report["status"]
    print(f"routed {status['routed']}, sent direct {status['sent_direct']}, traces {len(read_traces(db))}")
    assert report["errors"] == []
    assert status["mode"] == "instrument" and status["failed"] == 0
    traces = read_traces(db)
    direct = [s for s in fake.seen if s.headers.get("authorization") == f"Bearer {APP_KEY}"]
    via_proxy = [s for s in fake.seen if s.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"]
    # Every call either traced by the proxy or counted as sent direct, adding up to 500 ...
    assert len(traces) == status["routed"]
    assert status["sent_direct"] == len(direct)
    assert status["routed"] + status["sent_direct"] == CALLS
    assert status["sent_direct"] >= RESTARTS  # the proxy really was down under the app
    # ... and the provider got each call once, through the proxy or directly, never anything else.
    assert len(fake.seen) == CALLS
    assert len(via_proxy) == len(traces)
    assert not [s for s in fake.seen if "sk-prysm-" in json.dumps(s.headers)]
    assert not [s for s in via_proxy if APP_KEY in json.dumps(s.headers)]
    assert APP_KEY.encode() not in Path(db).read_bytes()
    assert all(t["http_status"] == 200 for t in traces)
