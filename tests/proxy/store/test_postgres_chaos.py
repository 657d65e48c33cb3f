"""Two ``prysmai proxy`` processes on one PostgreSQL under load -- sync, async and streamed calls
of two projects -- while the database is stopped for 10 s and started again, and one proxy is
SIGKILLed and started again on its outbox. In the end every answered request has exactly one
trace in PostgreSQL, of the right project, and none is there twice."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx

from prysmai._proxy.store import Store, TraceFilter, queries

from ..conftest import FakeUpstream, Proxy
from ..postgres import PostgresServer

KEYS = {"web": "sk-prysm-chaos-web-0123456789abcdef", "batch": "sk-prysm-chaos-batch-0123456789abcdef"}
ADMIN = "sk-prysm-chaos-admin-0123456789abcdef"  # sees the whole proxy's counters (the outbox's backlog)
ADMIN_CONFIG = """
[admin]
keys = [{ env = "KEY_ADMIN" }]
"""
CONFIG = """
[[projects]]
name = "{name}"
keys = [{{ env = "KEY_{upper}" }}]
default_provider = "fake"
  [[projects.providers]]
  name = "fake"
  kind = "openai-compatible"
  base_url = "{upstream}"
"""


class Load:
    """Clients of both projects sending through both proxies until stopped: sync, async and
    streamed calls. Records each 200 answer's trace id and project."""

    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self.answered: dict[str, str] = {}  # trace id -> project
        self.by_proxy: dict[str, int] = {}  # trace id -> the index of the proxy that answered
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _record(self, r: httpx.Response, project: str, base_index: int) -> None:
        with self._lock:
            if r.status_code == 200:
                self.answered[r.headers["x-prysm-trace-id"]] = project
                self.by_proxy[r.headers["x-prysm-trace-id"]] = base_index
            else:
                self.failed += 1

    def _sync(self, base_index: int, project: str, stream: bool) -> None:
        headers = {"Authorization": f"Bearer {KEYS[project]}"}
        while not self._stop.is_set():
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            try:
                with httpx.Client(timeout=10) as client:
                    r = client.post(f"{self.bases[base_index]}/chat/completions", json=body, headers=headers)
                    if stream and r.status_code == 200 and not r.text.rstrip().endswith("[DONE]"):
                        continue  # cut off by a kill: not an answered request
                    self._record(r, project, base_index)
            except httpx.HTTPError:
                with self._lock:
                    self.failed += 1  # a killed proxy: the request was not answered
                time.sleep(0.05)

    def _async(self, base_index: int, project: str) -> None:
        async def run() -> None:
            headers = {"Authorization": f"Bearer {KEYS[project]}"}
            async with httpx.AsyncClient(timeout=10) as client:
                while not self._stop.is_set():
                    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                    calls = [client.post(f"{self.bases[base_index]}/chat/completions", json=body, headers=headers)]
                    for result in await asyncio.gather(*calls * 4, return_exceptions=True):
                        if isinstance(result, httpx.Response):
                            self._record(result, project, base_index)
                        else:
                            with self._lock:
                                self.failed += 1
                            await asyncio.sleep(0.05)

        asyncio.run(run())

    def start(self) -> Load:
        for i in range(len(self.bases)):
            for project in KEYS:
                self._threads.append(threading.Thread(target=self._sync, args=(i, project, False)))
                self._threads.append(threading.Thread(target=self._sync, args=(i, project, True)))
            self._threads.append(threading.Thread(target=self._async, args=(i, "web" if i else "batch")))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_two_proxies_through_a_database_outage_and_a_kill(fake: FakeUpstream, tmp_path: Any) -> None:
    server = PostgresServer().start()
    try:
        url = server.database()
        config = tmp_path / "prysm.toml"
        config.write_text(
            ADMIN_CONFIG + "".join(CONFIG.format(name=n, upper=n.upper(), upstream=fake.url) for n in KEYS)
        )
        env = {f"KEY_{n.upper()}": k for n, k in KEYS.items()} | {"KEY_ADMIN": ADMIN}

        def proxy(n: int, port: int = 0) -> Proxy:
            args = ["--config", str(config), "--db", url, "--outbox", str(tmp_path / f"outbox{n}.db")]
            if port:
                args += ["--port", str(port)]
            started = Proxy(*args, **env)
            return started.start()

        first, second = proxy(1), proxy(2)
        bases = [first.base, second.base]
        load = Load(bases).start()
        try:
            time.sleep(2)
            server.stop()  # the database goes away mid-load ...
            time.sleep(10)
            server.start()  # ... and comes back
            time.sleep(2)
            second.proc.send_signal(signal.SIGKILL)  # one proxy dies without a goodbye
            second.proc.wait(10)
            port = int(second.base.rsplit(":", 1)[1].split("/")[0])
            time.sleep(1)
            second = proxy(2, port)  # and is started again on its outbox, on the same port
            time.sleep(3)
        finally:
            load.stop()
        for started in (first, second):
            deadline = time.monotonic() + 60
            while httpx.get(f"{started.base}/health", headers={"Authorization": f"Bearer {ADMIN}"}).json()["store"][
                "outbox_backlog"
            ]:
                assert time.monotonic() < deadline, "an outbox was not shipped"
                time.sleep(0.2)
        first.stop()
        second.stop()
        assert len(load.answered) > 300, "too little load to mean anything"

        store = Store.existing(url, read_time_limit=None)
        assert store is not None
        with store:
            stored: dict[str, str] = {}
            cursor = None
            while True:
                rows, cursor = store.read_sync(queries.list_traces, TraceFilter(), cursor=cursor, limit=1000)
                for row in rows:
                    assert row["id"] not in stored, "a trace stored twice"
                    stored[row["id"]] = row["project"]
                if cursor is None:
                    break
        missing = [i for i in load.answered if i not in stored]
        assert not missing, f"{len(missing)} answered request(s) have no trace"
        assert all(
            stored[i] == project for i, project in load.answered.items() if i in stored
        )  # (each is, by the line above)
    finally:
        server.close()
