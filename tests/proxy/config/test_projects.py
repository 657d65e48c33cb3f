"""Projects and providers on one proxy (issue 10): each project's keys reach only its own
providers with only its own credentials, read only its own traces (read API, dashboard, CLI),
and are held to its limits; routing by exact name, prefix and default, Azure's URL and header
shape; reloads that revoke a key while a stream started before it completes; no secret in any
trace, log line, error, dashboard answer or ``prysmai doctor`` output.

Every provider here is a real HTTP server on 127.0.0.1 that records what it receives.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

import prysmai
from prysmai._proxy.config.settings import ProxyConfig
from prysmai._proxy.server.serve import BackgroundServer

from ..conftest import FakeUpstream, ProxyHandle, ThreadedServer, read_traces, sha

ALPHA_KEY = "sk-prysm-alpha-project-key-0123456789"
BETA_KEY = "sk-prysm-beta-project-key-9876543210ab"
GAMMA_KEY = "sk-prysm-gamma-project-key-abcdefghijkl"
ADMIN_KEY = "sk-prysm-admin-reads-all-0123456789xyz"
ALPHA_CRED = "sk-alpha-provider-credential-111111"
BETA_CRED = "sk-beta-compat-credential-2222222222"
AZURE_CRED = "azure-beta-credential-3333333333333"
GAMMA_CRED = "sk-gamma-provider-credential-44444444"
SECRETS = (ALPHA_KEY, BETA_KEY, GAMMA_KEY, ADMIN_KEY, ALPHA_CRED, BETA_CRED, AZURE_CRED, GAMMA_CRED)
PRYSMAI = [sys.executable, "-m", "prysmai._cli"]


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Providers:
    """Three recording providers on loopback: alpha's OpenAI, beta's OpenAI-compatible server
    and beta's Azure resource; plus gamma's."""

    def __init__(self) -> None:
        self.fakes = {name: FakeUpstream() for name in ("alpha", "compat", "azure", "gamma")}
        self.servers = {name: ThreadedServer(app).start() for name, app in self.fakes.items()}

    def url(self, name: str) -> str:
        return self.servers[name].url

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def all_seen(self) -> list[tuple[str, Any]]:
        return [(name, seen) for name, fake in self.fakes.items() for seen in fake.seen]


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    try:
        yield p
    finally:
        p.stop()


def config_text(p: Providers, cred_dir: str, *, alpha: str = "", beta_keys: str | None = None) -> str:
    """The test config: alpha (hashed key, one OpenAI provider, default), beta (key from the
    environment; an OpenAI-compatible default with a prefix and free local prices, and Azure by
    exact name), gamma (exact names only, no default), and an admin key."""
    with open(os.path.join(cred_dir, "compat.key"), "w") as fh:
        fh.write(BETA_CRED + "\n")
    beta_keys = beta_keys if beta_keys is not None else '[{ env = "BETA_PRYSM_KEY" }]'
    return f"""
[admin]
keys = ["{sha(ADMIN_KEY)}"]

[[projects]]
name = "alpha"
keys = ["{sha(ALPHA_KEY)}"]
default_provider = "main"
{alpha}

  [[projects.providers]]
  name = "main"
  kind = "openai"
  base_url = "{p.url("alpha")}/v1"
  api_key = {{ env = "ALPHA_PROVIDER_KEY" }}

[[projects]]
name = "beta"
keys = {beta_keys}
default_provider = "compat"

  [[projects.providers]]
  name = "compat"
  kind = "openai-compatible"
  base_url = "{p.url("compat")}/v1"
  api_key = {{ file = "{os.path.join(cred_dir, "compat.key")}" }}
  prefix = "local/"
  prices = {{ "llama3.1" = {{ input = 0, output = 0 }} }}

  [[projects.providers]]
  name = "azure"
  kind = "azure"
  base_url = "{p.url("azure")}"
  api_version = "2024-10-21"
  api_key = {{ env = "BETA_AZURE_KEY" }}
  models = ["gpt-4.1"]
  deployments = {{ "gpt-4.1" = "gpt41-prod" }}

[[projects]]
name = "gamma"
keys = ["{sha(GAMMA_KEY)}"]

  [[projects.providers]]
  name = "only"
  kind = "openai"
  base_url = "{p.url("gamma")}/v1"
  api_key = {{ env = "GAMMA_PROVIDER_KEY" }}
  models = ["gpt-4o-mini"]
"""


ENV = {
    "ALPHA_PROVIDER_KEY": ALPHA_CRED,
    "BETA_AZURE_KEY": AZURE_CRED,
    "GAMMA_PROVIDER_KEY": GAMMA_CRED,
    "BETA_PRYSM_KEY": BETA_KEY,
}


@pytest.fixture
def start(providers: Providers, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``start(alpha="requests_per_minute = 3")`` -> a proxy (in this process) on the test config."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    started: list[ProxyHandle] = []

    def run(**kw: Any) -> ProxyHandle:
        path = tmp_path / "prysm.toml"
        path.write_text(config_text(providers, str(tmp_path), **kw))
        config = ProxyConfig(keys=[], db_path=str(tmp_path / "traces.db"), port=0, config_file=str(path))
        handle = ProxyHandle(BackgroundServer(config).start())
        started.append(handle)
        return handle

    try:
        yield run
    finally:
        for handle in started:
            handle.stop()


# -- each project reaches only its providers, with only its credentials ----------------------------
def test_each_project_reaches_only_its_provider_with_its_credentials(start: Any, providers: Providers) -> None:
    proxy = start()
    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:
        a = client.post("/chat/completions", json=chat("gpt-4o-mini"), headers=auth(ALPHA_KEY))
        b = client.post("/chat/completions", json=chat("gpt-4o-mini"), headers=auth(BETA_KEY))
    assert a.status_code == 200 and b.status_code == 200
    alpha, compat = providers.fakes["alpha"], providers.fakes["compat"]
    assert len(alpha.seen) == 1 and len(compat.seen) == 1
    assert not providers.fakes["azure"].seen and not providers.fakes["gamma"].seen
    assert alpha.last().headers["authorization"] == f"Bearer {ALPHA_CRED}"
    assert compat.last().headers["authorization"] == f"Bearer {BETA_CRED}"  # read from its file
    for _, seen in providers.all_seen():  # no Prysm key ever goes upstream
        assert "sk-prysm" not in json.dumps(seen.headers)
    traces = {t["project"]: t for t in proxy.traces()}
    assert set(traces) == {"alpha", "beta"}
    assert traces["alpha"]["provider"] == "main" and traces["alpha"]["key_id"] == key_id(ALPHA_KEY)
    assert traces["beta"]["provider"] == "compat" and traces["beta"]["key_id"] == key_id(BETA_KEY)


def test_routing_exact_prefix_default_and_azure_shape(start: Any, providers: Providers) -> None:
    proxy = start()
    with httpx.Client(base_url=proxy.base_url, timeout=10, headers=auth(BETA_KEY)) as client:
        az = client.post("/chat/completions", json=chat("gpt-4.1"))
        local = client.post("/chat/completions", json=chat("local/llama3.1"))
        other = client.post("/chat/completions", json=chat("mistral-small"))
    assert az.status_code == local.status_code == other.status_code == 200
    azure = providers.fakes["azure"].last()
    assert azure.path == "/openai/deployments/gpt41-prod/chat/completions"
    assert azure.query == "api-version=2024-10-21"
    assert azure.headers["api-key"] == AZURE_CRED and "authorization" not in azure.headers
    compat = providers.fakes["compat"].seen
    assert [s.json()["model"] for s in compat] == ["llama3.1", "mistral-small"]  # prefix stripped; default as sent
    assert "api-key" not in compat[0].headers
    # A provider's own error is relayed unchanged (status, body), without the proxy's marker.
    with httpx.Client(base_url=proxy.base_url, timeout=10, headers=auth(BETA_KEY)) as client:
        refused = client.post("/chat/completions", json=chat("gpt-4.1"), headers={"x-fake-status": "429"})
    assert refused.status_code == 429 and refused.json()["error"]["message"] == "planned 429"
    assert "x-prysm-origin" not in refused.headers
    rows = {t["model"]: t for t in proxy.traces() if t["http_status"] == 200}
    assert rows["gpt-4.1"]["provider"] == "azure"
    assert rows["local/llama3.1"]["provider"] == "compat"
    assert rows["local/llama3.1"]["response_model"] == "llama3.1"  # as the provider reported it
    assert rows["mistral-small"]["provider"] == "compat"
    # Prices per provider: llama3.1 is free on purpose (0.0); mistral-small is unknown (NULL, not 0).
    assert rows["local/llama3.1"]["cost_usd"] == 0.0
    assert rows["mistral-small"]["cost_usd"] is None


def test_azure_keeps_the_clients_query_and_adds_api_version(start: Any, providers: Providers) -> None:
    proxy = start()
    r = httpx.post(
        f"{proxy.base_url}/chat/completions?extra=1", json=chat("gpt-4.1"), headers=auth(BETA_KEY), timeout=10
    )
    assert r.status_code == 200
    seen = providers.fakes["azure"].last()
    assert seen.path == "/openai/deployments/gpt41-prod/chat/completions"
    assert seen.query == "extra=1&api-version=2024-10-21"


def test_unrouted_model_is_a_400_of_the_proxy_and_a_trace(start: Any, providers: Providers) -> None:
    proxy = start()
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=chat("gpt-5"), headers=auth(GAMMA_KEY), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_routed"
    assert r.headers["x-prysm-origin"] == "proxy"
    assert "gamma" in r.json()["error"]["message"]
    assert not providers.fakes["gamma"].seen
    (trace,) = proxy.traces()
    assert trace["project"] == "gamma" and trace["http_status"] == 400 and trace["status"] == "error"


def test_admin_key_reads_but_cannot_send(start: Any, providers: Providers) -> None:
    proxy = start()
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=chat("gpt-4o-mini"), headers=auth(ADMIN_KEY))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_cannot_send"
    assert not any(f.seen for f in providers.fakes.values())


# -- read isolation ---------------------------------------------------------------------------------
def _send_both(proxy: ProxyHandle) -> dict[str, str]:
    ids = {}
    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:
        for project, key in (("alpha", ALPHA_KEY), ("beta", BETA_KEY)):
            r = client.post("/chat/completions", json=chat("gpt-4o-mini"), headers=auth(key))
            assert r.status_code == 200
            ids[project] = r.headers["x-prysm-trace-id"]
    proxy.traces()  # written
    return ids


def test_a_project_key_sees_its_own_counters_an_admin_key_the_whole_proxy(start: Any) -> None:
    proxy = start()
    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:
        for _ in range(3):
            assert (
                client.post("/chat/completions", json=chat("gpt-4o-mini"), headers=auth(ALPHA_KEY)).status_code == 200
            )
        assert client.post("/chat/completions", json=chat("x"), headers=auth(BETA_KEY)).status_code == 200
        proxy.traces()
        beta = client.get("/health", headers=auth(BETA_KEY)).json()
        # Only beta's own: nothing that tells alpha's volume (no queue, no written count, no total in flight).
        assert beta["store"] == {"submitted": 1, "dropped": 0} and beta["inflight"] == 0, beta
        stats = client.get("/stats", headers=auth(BETA_KEY)).json()
        assert stats["store"] == {"submitted": 1, "dropped": 0} and stats["requests"] == 1
        alpha = client.get("/health", headers=auth(ALPHA_KEY)).json()
        assert alpha["store"] == {"submitted": 3, "dropped": 0}
        admin = client.get("/health", headers=auth(ADMIN_KEY)).json()
        assert admin["store"]["written"] == 4 and admin["store"]["queued"] == 0 and admin["inflight"] == 0
        assert client.get("/stats", headers=auth(ADMIN_KEY)).json()["store"]["written"] == 4


def test_read_api_shows_a_key_only_its_projects_traces(start: Any) -> None:
    proxy = start()
    ids = _send_both(proxy)
    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:

        def listed(key: str, query: str = "") -> set[str]:
            r = client.get(f"/traces{query}", headers=auth(key))
            assert r.status_code == 200, r.text
            return {t["project"] for t in r.json()["data"]}

        assert listed(ALPHA_KEY) == {"alpha"}
        assert listed(BETA_KEY) == {"beta"}
        assert listed(BETA_KEY, "?project=beta") == {"beta"}
        # A key cannot widen its scope, and asking for another project is said so, not answered
        # with its own project's traces.
        for route in ("/traces", "/stats", "/overview", "/sessions", "/users"):
            r = client.get(f"{route}?project=alpha", headers=auth(BETA_KEY))
            assert r.status_code == 403, (route, r.text)
            assert r.json()["error"]["code"] == "project_forbidden" and r.json()["error"]["param"] == "project"
            assert "reads project 'beta' only" in r.json()["error"]["message"]
        assert listed(ADMIN_KEY) == {"alpha", "beta"}
        assert listed(ADMIN_KEY, "?project=beta") == {"beta"}
        assert listed(ADMIN_KEY, "?project=gamma") == set()  # configured, no trace yet: an empty list
        r = client.get("/traces?project=nosuch", headers=auth(ADMIN_KEY))
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_project"
        assert "unknown project 'nosuch' (projects: alpha, beta, gamma)" in r.json()["error"]["message"]
        assert client.get(f"/traces/{ids['beta']}", headers=auth(ALPHA_KEY)).status_code == 404
        assert client.get(f"/traces/{ids['beta']}", headers=auth(BETA_KEY)).json()["project"] == "beta"
        assert client.get(f"/traces/{ids['beta']}", headers=auth(ADMIN_KEY)).status_code == 200
        assert client.get("/stats", headers=auth(ALPHA_KEY)).json()["requests"] == 1
        assert client.get("/stats", headers=auth(ADMIN_KEY)).json()["requests"] == 2
        health = client.get("/health", headers=auth(ALPHA_KEY)).json()
        assert health["project"] == "alpha" and set(health["providers"]) == {"main"}


def _dashboard_login(client: httpx.Client, key: str) -> None:
    r = client.post("/ui/login", data={"key": key, "next": "/"}, headers={"Origin": str(client.base_url).rstrip("/")})
    assert r.status_code == 303 and r.headers["location"] == "/", r.headers
    assert client.cookies, "no session cookie"


def test_dashboard_shows_a_key_only_its_projects_traces(start: Any) -> None:
    proxy = start()
    ids = _send_both(proxy)
    root = proxy.server.url
    for key, expected in ((ALPHA_KEY, {"alpha"}), (BETA_KEY, {"beta"}), (ADMIN_KEY, {"alpha", "beta"})):
        with httpx.Client(base_url=root, timeout=10) as client:
            _dashboard_login(client, key)
            me = client.get("/ui/api/me").json()
            assert me["admin"] is (key == ADMIN_KEY)
            rows = client.get("/ui/api/traces?since=all").json()["data"]
            assert {r["project"] for r in rows} == expected
            overview = client.get("/ui/api/overview?since=all").json()["overview"]
            assert overview["requests"] == len(expected)
            other = ids["beta"] if key == ALPHA_KEY else ids["alpha"]
            status = client.get(f"/ui/api/traces/{other}").status_code
            assert status == (200 if key == ADMIN_KEY else 404)


def test_cli_project_filter(start: Any) -> None:
    proxy = start()
    _send_both(proxy)
    out = subprocess.run(
        [*PRYSMAI, "traces", "--db", proxy.db_path, "--project", "beta", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["data"]
    assert rows and {r["project"] for r in rows} == {"beta"}


# -- limits -----------------------------------------------------------------------------------------
def test_rate_limit_answers_429_with_the_proxy_marker_and_records_it(start: Any, providers: Providers) -> None:
    proxy = start(alpha="requests_per_minute = 3")
    with httpx.Client(base_url=proxy.base_url, timeout=10, headers=auth(ALPHA_KEY)) as client:
        codes = [client.post("/chat/completions", json=chat("gpt-4o-mini")).status_code for _ in range(3)]
        refused = client.post("/chat/completions", json=chat("gpt-4o-mini"))
        beta = client.post("/chat/completions", json=chat("gpt-4o-mini"), headers=auth(BETA_KEY))
    assert codes == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "project_rate_limit_exceeded"
    assert refused.headers["x-prysm-origin"] == "proxy"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert beta.status_code == 200  # another project's limit is its own
    assert len(providers.fakes["alpha"].seen) == 3
    rows = [t for t in proxy.traces() if t["project"] == "alpha"]
    assert [t["http_status"] for t in rows] == [200, 200, 200, 429]


def test_sdk_fallback_does_not_treat_a_429_of_the_proxy_as_a_proxy_failure(
    start: Any, providers: Providers, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = start(alpha="requests_per_minute = 1")
    direct = providers.url("gamma") + "/v1"  # where a fallback would go
    client = prysmai.monitor(
        openai.OpenAI(api_key="sk-direct-provider-key", base_url=direct, max_retries=0),
        prysm_key=ALPHA_KEY,
        base_url=proxy.base_url,
        fallback=True,
    )
    client.chat.completions.create(**chat("gpt-4o-mini"))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(**chat("gpt-4o-mini"))
    assert info.value.code == "project_rate_limit_exceeded"
    assert not providers.fakes["gamma"].seen  # no request went around the proxy


def test_monthly_budget_refuses_once_spent_and_survives_a_restart(start: Any, providers: Providers) -> None:
    proxy = start(alpha="monthly_budget_usd = 0.000001")
    with httpx.Client(base_url=proxy.base_url, timeout=10, headers=auth(ALPHA_KEY)) as client:
        first = client.post("/chat/completions", json=chat("gpt-4o-mini"))  # priced: 10 + 3 tokens
        assert first.status_code == 200
        proxy.traces()  # the writer priced it: the spend is counted
        refused = client.post("/chat/completions", json=chat("gpt-4o-mini"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "project_budget_exceeded"
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert refused.headers["x-should-retry"] == "false" and refused.headers["x-prysm-origin"] == "proxy"
    assert len(providers.fakes["alpha"].seen) == 1
    proxy.stop()
    again = start(alpha="monthly_budget_usd = 0.000001")  # same store: the month's spend is read back
    r = httpx.post(f"{again.base_url}/chat/completions", json=chat("gpt-4o-mini"), headers=auth(ALPHA_KEY))
    assert r.status_code == 429 and r.json()["error"]["code"] == "project_budget_exceeded"
    r = httpx.post(f"{again.base_url}/chat/completions", json=chat("gpt-4o-mini"), headers=auth(BETA_KEY))
    assert r.status_code == 200  # beta has no budget


# -- reload: a real process, SIGHUP and file changes ------------------------------------------------
class Proc:
    def __init__(self, config: str | None, db: str, env: dict[str, str], *args: str) -> None:
        where = ["--config", config] if config else []
        self.proc = subprocess.Popen(
            [*PRYSMAI, "proxy", "--port", "0", *where, "--db", db, *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.base = ""
        self._cond = threading.Condition()
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(r"serving (http://\S+/api/v1)")
        m = re.search(r"serving (http://\S+/api/v1)", "".join(self.lines))
        assert m
        self.base = m.group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no {pattern!r} in:\n" + "".join(self.lines)
                self._cond.wait(left)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.1)
        return "".join(self.lines)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    env.update(ENV)
    return env


def test_sighup_revokes_a_key_while_a_stream_started_before_completes(providers: Providers, tmp_path: Any) -> None:
    path = tmp_path / "prysm.toml"
    path.write_text(config_text(providers, str(tmp_path), beta_keys=f'["{sha(BETA_KEY)}"]'))
    proc = Proc(str(path), str(tmp_path / "traces.db"), _env())
    try:
        chunks: list[str] = []
        started = threading.Event()
        stream_done = threading.Event()

        def stream() -> None:
            headers = {**auth(BETA_KEY), "x-fake-chunks": "15", "x-fake-gap-ms": "100"}
            with httpx.stream(
                "POST",
                f"{proc.base}/chat/completions",
                json=chat("mistral-small", stream=True),
                headers=headers,
                timeout=30,
            ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        chunks.append(line)
                        started.set()
            stream_done.set()

        worker = threading.Thread(target=stream, daemon=True)
        worker.start()
        assert started.wait(10), "the stream did not start"
        # Remove beta's key and reload by SIGHUP while the stream is under way.
        mark = len(proc.lines)
        path.write_text(config_text(providers, str(tmp_path), beta_keys="[]"))
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("config reloaded", after=mark)
        r = httpx.post(f"{proc.base}/chat/completions", json=chat("mistral-small"), headers=auth(BETA_KEY))
        assert r.status_code == 401
        assert not stream_done.is_set(), "the stream ended before the reload: make it longer"
        worker.join(20)
        assert stream_done.is_set()
        assert chunks[-1] == "data: [DONE]" and sum("tok" in c for c in chunks) == 15
        # Alpha's key still works under the new config.
        ok = httpx.post(f"{proc.base}/chat/completions", json=chat("gpt-4o-mini"), headers=auth(ALPHA_KEY))
        assert ok.status_code == 200
    finally:
        log = proc.stop()
    rows = read_traces(str(tmp_path / "traces.db"))
    streamed = [t for t in rows if t["stream"]]
    assert len(streamed) == 1 and streamed[0]["status"] == "success" and streamed[0]["project"] == "beta"
    for secret in SECRETS:
        assert secret not in log


def test_a_changed_file_is_reloaded_and_a_broken_one_refused(providers: Providers, tmp_path: Any) -> None:
    path = tmp_path / "prysm.toml"
    path.write_text(config_text(providers, str(tmp_path), beta_keys="[]"))
    proc = Proc(str(path), str(tmp_path / "traces.db"), _env())
    try:
        url = f"{proc.base}/chat/completions"
        assert httpx.post(url, json=chat("x"), headers=auth(BETA_KEY)).status_code == 401
        mark = len(proc.lines)
        path.write_text(config_text(providers, str(tmp_path), beta_keys=f'["{sha(BETA_KEY)}"]'))
        proc.wait_for("config reloaded", after=mark)  # no signal: the change itself
        assert httpx.post(url, json=chat("x"), headers=auth(BETA_KEY)).status_code == 200
        mark = len(proc.lines)
        path.write_text("[[projects]]\nname = 'broken'\nkeys = [\n")  # a TOML syntax error
        line = proc.wait_for("config reload refused", after=mark)
        assert "prysm.toml" in line
        assert httpx.post(url, json=chat("x"), headers=auth(BETA_KEY)).status_code == 200  # old config kept
    finally:
        log = proc.stop()
    for secret in SECRETS:
        assert secret not in log


def test_sighup_without_a_config_is_logged_and_the_proxy_keeps_serving(tmp_path: Any) -> None:
    # systemctl reload (the unit's ExecReload) on a proxy started with --key: SIGHUP's default
    # action would stop it.
    proc = Proc(None, str(tmp_path / "traces.db"), _env(), "--upstream", "demo", "--key", ALPHA_KEY)
    try:
        assert httpx.get(f"{proc.base}/health").status_code == 200  # started (a SIGHUP before is ignored)
        mark = len(proc.lines)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("nothing to reload", after=mark)
        r = httpx.post(f"{proc.base}/chat/completions", json=chat("gpt-4o-mini"), headers=auth(ALPHA_KEY))
        assert r.status_code == 200 and proc.proc.poll() is None
    finally:
        proc.stop()
    assert proc.proc.returncode == 0


# -- secrets ---------------------------------------------------------------------------------------
def test_no_secret_in_traces_logs_errors_dashboard_or_doctor(providers: Providers, tmp_path: Any) -> None:
    path = tmp_path / "prysm.toml"
    path.write_text(config_text(providers, str(tmp_path), alpha="requests_per_minute = 2"))
    db = str(tmp_path / "traces.db")
    proc = Proc(str(path), db, _env())
    seen_text: list[str] = []
    try:
        with httpx.Client(base_url=proc.base, timeout=10) as client:
            for key in (ALPHA_KEY, BETA_KEY, GAMMA_KEY):
                for model in ("gpt-4o-mini", "gpt-4.1", "local/llama3.1", "unrouted-model"):
                    r = client.post("/chat/completions", json=chat(model), headers=auth(key))
                    seen_text.append(r.text + json.dumps(dict(r.headers)))
            for key in (ALPHA_KEY, ADMIN_KEY, "sk-prysm-not-a-key-0123456789abcdef"):
                for route in ("/health", "/traces", "/stats"):
                    r = client.get(route, headers=auth(key))
                    seen_text.append(r.text)
            r = client.post("/chat/completions", json=chat("x"), headers=auth(ADMIN_KEY))
            seen_text.append(r.text)
        root = proc.base[: -len("/api/v1")]
        for key in (ALPHA_KEY, ADMIN_KEY):
            with httpx.Client(base_url=root, timeout=10) as web:
                _dashboard_login(web, key)
                for route in ("me", "traces?since=all", "overview?since=all", "sessions", "users"):
                    seen_text.append(web.get(f"/ui/api/{route}").text)
                for row in web.get("/ui/api/traces?since=all").json()["data"]:
                    seen_text.append(web.get(f"/ui/api/traces/{row['id']}").text)
        for key in (ALPHA_KEY, BETA_KEY):
            doctor = subprocess.run(
                [*PRYSMAI, "doctor", "--json", "--base-url", proc.base],
                capture_output=True,
                text=True,
                timeout=60,
                env={**_env(), "PRYSM_API_KEY": key},
            )
            seen_text.append(doctor.stdout + doctor.stderr)
    finally:
        log = proc.stop()
    conn = sqlite3.connect(db)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert "chat/completions" in dump and len(seen_text) > 20  # there is something to search
    for secret in SECRETS:
        assert secret not in dump, "a secret in the store"
        assert secret not in log, "a secret in the log"
        for text in seen_text:
            assert secret not in text, "a secret in an answer"


# -- the dashboard in a real browser -----------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from .. import browser

    yield from browser.launch()


def test_dashboard_in_a_browser_shows_each_key_its_own_project(start: Any, chromium: Any) -> None:
    from .. import browser as b

    proxy = start()
    ids = _send_both(proxy)
    base = proxy.server.url
    for key, sees in ((ALPHA_KEY, ["alpha"]), (ADMIN_KEY, ["alpha", "beta"])):
        admin = key == ADMIN_KEY
        page = chromium.new_context(viewport=b.DESKTOP).new_page()
        b.login(page, base, key, "/traces?since=all")
        assert ("all projects" if admin else "project alpha") in page.inner_text(".brand")
        assert page.locator("#traces-table tbody tr").count() == len(sees)
        assert page.locator("#f-project").count() == (1 if admin else 0)  # the filter: admin keys only
        if admin:
            cells = page.locator("#traces-table tbody tr td:nth-child(2)").all_inner_texts()
            assert sorted(cells) == sees
        b.goto(page, f"{base}/?since=all")
        assert page.locator("section[data-breakdown='project']").count() == (1 if admin else 0)
        b.goto(page, f"{base}/traces?since=all&project=beta")  # a project's key cannot widen its view
        if admin:
            assert page.locator("#traces-table tbody tr").count() == 1
            link = page.locator("#traces-table tbody tr a").first.get_attribute("href") or ""
            assert link.split("?")[0].endswith(ids["beta"])  # (the link carries the list's query)
        else:  # said so, instead of its own project's traces under another's name
            assert page.locator("#traces-table").count() == 0
            assert "this key reads project 'alpha' only, not 'beta'" in page.inner_text("#traces-body .error")
        page.context.close()


# -- the command line ------------------------------------------------------------------------------
def test_a_bad_config_stops_the_start_up_naming_file_and_line_never_a_key(tmp_path: Any) -> None:
    path = tmp_path / "prysm.toml"
    path.write_text(
        f'[[projects]]\nname = "alpha"\nkeys = ["{ALPHA_KEY}", "{ALPHA_KEY[:-4]}"]\n'
        'default_provider = "main"\n\n  [[projects.providers]]\n  name = "main"\n  kind = "openai"\n'
        f'  api_key = "{ALPHA_CRED}"\n'  # a literal credential: refused
    )
    db = tmp_path / "store" / "traces.db"
    done = subprocess.run(
        [*PRYSMAI, "proxy", "--port", "0", "--config", str(path), "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 2, done.stderr
    assert re.search(r"prysm\.toml:\d+", done.stderr), done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stderr
    for secret in SECRETS:
        assert secret not in done.stderr and secret[:-4] not in done.stderr
    assert not db.parent.exists()


def test_ui_with_a_config_scopes_each_key_to_its_project(start: Any, providers: Providers, tmp_path: Any) -> None:
    proxy = start()
    _send_both(proxy)
    proxy.stop()
    env = _env()
    port = str(_free_port())
    ui = subprocess.Popen(
        [*PRYSMAI, "ui", "--db", proxy.db_path, "--config", str(tmp_path / "prysm.toml"), "--port", port],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(root + "/login", timeout=1)
                break
            except httpx.TransportError:
                assert ui.poll() is None and time.monotonic() < deadline, "prysmai ui did not start"
                time.sleep(0.1)
        for key, expected in ((BETA_KEY, {"beta"}), (ADMIN_KEY, {"alpha", "beta"})):
            with httpx.Client(base_url=root, timeout=10) as client:
                _dashboard_login(client, key)
                rows = client.get("/ui/api/traces?since=all").json()["data"]
                assert {r["project"] for r in rows} == expected
    finally:
        ui.terminate()
        ui.communicate(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
