"""``prysmai proxy | traces | stats | demo`` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from prysmai._cli import main
from prysmai._proxy.store.sqlite import SQLiteEngine

from ..conftest import KEY, FakeUpstream, free_port, read_traces

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def filled_db(fake: FakeUpstream, start_proxy: Any) -> str:
    proxy = start_proxy(fake.url)  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{proxy.base_url}/chat/completions"
    httpx.post(url, json=CHAT, headers={**auth, "X-Prysm-User-Id": "alice", "X-Prysm-Session-Id": "s-1"})
    httpx.post(url, json={**CHAT, "model": "gpt-4.1", "stream": True}, headers={**auth, "X-Prysm-User-Id": "bob"})
    httpx.post(url, json={**CHAT, "model": "mystery"}, headers={**auth, "x-fake-status": "500"})
    proxy.stop()
    return str(proxy.db_path)


def test_missing_and_empty_store(capsys: Any, tmp_path: Any) -> None:
    missing = str(tmp_path / "none.db")
    code, out, _ = run_cli(capsys, "traces", "--db", missing)
    assert code == 1 and f"No trace store at {missing}" in out
    code, out, _ = run_cli(capsys, "stats", "--db", missing)
    assert code == 1 and "No trace store" in out
    assert not os.path.exists(missing)  # reading never creates a store
    empty = str(tmp_path / "empty.db")
    SQLiteEngine(empty).open_for_writing().close()
    assert run_cli(capsys, "traces", "--db", empty)[1].startswith("No traces yet")
    assert run_cli(capsys, "stats", "--db", empty)[1].startswith("No traces yet")
    assert run_cli(capsys, "traces", "--db", empty, "--user", "x")[1] == "No traces match these filters.\n"


def test_traces_table_filters_and_json(capsys: Any, filled_db: str) -> None:
    code, out, _ = run_cli(capsys, "traces", "--db", filled_db)
    assert code == 0
    lines = out.splitlines()
    header = lines[0]
    for column in ("TIME", "MODEL", "STATUS", "LATENCY ms", "TTFT ms", "TOKENS", "COST", "USER", "SESSION"):
        assert column in header
    assert len(lines) == 5 and set(lines[1]) <= {"-", " "}
    # aligned: every row's cells start where the header's do
    time_col, model_col = header.index("TIME"), header.index("MODEL")
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line[time_col:]) for line in lines[2:])
    assert sorted(line[model_col:].split()[0] for line in lines[2:]) == ["gpt-4.1", "gpt-4o-mini", "mystery"]
    assert "alice" in out and "s-1" in out and "error 500" in out and "(stream)" in out
    # The failure reported no usage: said so, never $0 and never "unpriced".
    assert re.search(r"mystery .* error 500 .* no usage ", out)
    code, out, _ = run_cli(capsys, "traces", "--db", filled_db, "--user", "bob", "--json")
    rows = json.loads(out)["data"]
    assert [(r["user_id"], r["model"], r["stream"]) for r in rows] == [("bob", "gpt-4.1", True)]
    assert rows[0]["ttft_ms"] is not None

    def data(*flags: str) -> list[Any]:
        rows: list[Any] = json.loads(run_cli(capsys, "traces", "--db", filled_db, "--json", *flags)[1])["data"]
        return rows

    assert len(data("--limit", "2")) == 2
    assert len(data("--status", "error")) == 1
    assert len(data("--since", "1h")) == 3
    assert data("--since", "2999-01-01") == []
    code, _, err = run_cli(capsys, "traces", "--db", filled_db, "--since", "yesterday-ish")
    assert code == 2 and "--since" in err


def test_traces_show(capsys: Any, filled_db: str) -> None:
    (alice,) = [t for t in read_traces(filled_db) if t["user_id"] == "alice"]
    code, out, _ = run_cli(capsys, "traces", "show", alice["id"][:8], "--db", filled_db)
    assert code == 0
    assert alice["id"] in out and "Request body:" in out and '"content": "hi"' in out
    assert "Hello there!" in out and "User" in out and "alice" in out
    code, out, _ = run_cli(capsys, "traces", "--db", filled_db, "show", alice["id"], "--json")
    assert json.loads(out)["id"] == alice["id"]
    code, _, err = run_cli(capsys, "traces", "show", "ffffffff", "--db", filled_db)
    assert code == 1 and "no trace" in err


def test_stats(capsys: Any, filled_db: str) -> None:
    code, out, _ = run_cli(capsys, "stats", "--db", filled_db)
    assert code == 0
    assert re.search(r"Requests\s+3", out) and re.search(r"Errors\s+1\s+\(33\.3%", out)
    assert "p50" in out and "p95" in out and "1 request(s) reported no usage" in out
    assert "gpt-4.1" in out and "mystery" in out
    stats = json.loads(run_cli(capsys, "stats", "--db", filled_db, "--json", "--model", "gpt-4o-mini")[1])
    assert stats["requests"] == 1 and stats["total_tokens"] == 13


def test_stats_and_traces_tell_unpriced_models_from_failures(capsys: Any, fake: FakeUpstream, start_proxy: Any) -> None:
    """A failure of a priced model reported no usage: it is not "unpriced", and a cost that is
    not zero is never printed as $0."""
    proxy = start_proxy(fake.url)
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{proxy.base_url}/chat/completions"
    assert httpx.post(url, json=CHAT, headers=auth).status_code == 200  # priced: 10 + 3 tokens
    assert httpx.post(url, json=CHAT, headers={**auth, "x-fake-status": "500"}).status_code == 500
    assert httpx.post(url, json={**CHAT, "model": "my-local-model"}, headers=auth).status_code == 200  # no price
    proxy.stop()
    db = str(proxy.db_path)
    stats = json.loads(run_cli(capsys, "stats", "--db", db, "--json")[1])
    assert (stats["unpriced_requests"], stats["no_usage_requests"]) == (1, 1)
    assert stats["by_model"]["gpt-4o-mini"]["unpriced_requests"] == 0
    assert stats["by_model"]["gpt-4o-mini"]["no_usage_requests"] == 1
    code, out, _ = run_cli(capsys, "stats", "--db", db)
    assert code == 0
    cost = (10 * 0.15 + 3 * 0.60) / 1e6  # $0.0000033
    assert re.search(
        r"Cost\s+\$0\.0000033  \(\+ 1 request\(s\) of models without a price; 1 request\(s\) reported no usage\)", out
    ), out
    assert re.search(r"gpt-4o-mini\s+2\s+50\.0%\s+13\s+\$0\.0000033\s", out), out
    assert re.search(r"my-local-model\s+1\s+0\.0%\s+13\s+unpriced\s", out), out
    assert "$0.000000" not in out and "e-" not in out
    code, out, _ = run_cli(capsys, "traces", "--db", db)
    assert re.search(r"gpt-4o-mini\s+error 500 .* no usage ", out), out
    assert re.search(r"my-local-model\s+success .* unpriced ", out), out
    assert re.search(r"gpt-4o-mini\s+success .* \$0\.0000033 ", out), out
    traces = json.loads(run_cli(capsys, "traces", "--db", db, "--json")[1])["data"]
    assert sorted((t["cost_status"], t["cost_usd"]) for t in traces) == sorted(
        [("priced", pytest.approx(cost)), ("no_usage", None), ("unpriced", None)]
    )


def test_traces_pages_and_takes_every_filter_of_the_api(capsys: Any, fake: FakeUpstream, start_proxy: Any) -> None:
    from prysmai._proxy.config.keys import key_id

    from ..conftest import OTHER_KEY

    proxy = start_proxy(fake.url)
    url = proxy.base_url
    sent = [
        ("chat/completions", KEY, {"X-Prysm-User-Id": "Alice", "X-Prysm-Metadata": '{"env": "prod", "tier": 2}'}),
        ("chat/completions", KEY, {"X-Prysm-User-Id": "alfred", "X-Prysm-Metadata": '{"env": "prod", "tier": 1}'}),
        ("chat/completions", OTHER_KEY, {"X-Prysm-User-Id": "bob", "X-Prysm-Metadata": '{"env": "dev", "tier": 2}'}),
        ("embeddings", KEY, {}),
        ("chat/completions", OTHER_KEY, {}),
        ("chat/completions", KEY, {}),
        ("chat/completions", KEY, {}),
    ]
    for i, (endpoint, key, headers) in enumerate(sent):
        body = (
            {"model": "text-embedding-3-small", "input": f"vector number{i}"}
            if endpoint == "embeddings"
            else {
                **CHAT,
                "messages": [
                    {"role": "user", "content": f"question number{i} about quokkas" if i == 2 else f"number{i}"}
                ],
            }
        )
        r = httpx.post(f"{url}/{endpoint}", json=body, headers={"Authorization": f"Bearer {key}", **headers})
        assert r.status_code == 200, r.text
    proxy.stop()
    db = str(proxy.db_path)
    everything = [t["id"] for t in reversed(read_traces(db))]  # newest first

    def ids(*flags: str) -> list[str]:
        code, out, err = run_cli(capsys, "traces", "--db", db, "--json", *flags)
        assert code == 0, err
        return [t["id"] for t in json.loads(out)["data"]]

    # Pages: the table says how to ask for the next one; --cursor gives it; the last says nothing.
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(3):
        code, out, _ = run_cli(capsys, "traces", "--db", db, "--limit", "3", *cursor)
        assert code == 0
        shown = [line.split()[0] for line in out.splitlines()[2:] if re.match(r"[0-9a-f]{12} ", line)]
        seen += shown
        m = re.search(r"the next page: add --cursor (\S+)", out)
        if m is None:
            break
        cursor = ["--cursor", m.group(1)]
    assert seen == [i[:12] for i in everything] and m is None
    code, out, _ = run_cli(capsys, "traces", "--db", db, "--all", "--json", "--limit", "2")
    lines = out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == everything  # JSON Lines, every trace
    code, out, _ = run_cli(capsys, "traces", "--db", db, "--all", "--limit", "2")
    assert code == 0 and all(i[:12] in out for i in everything) and "--cursor" not in out
    # Every filter the API takes.
    t = {r["id"]: r for r in read_traces(db)}
    assert ids("--endpoint", "embeddings") == [i for i in everything if t[i]["endpoint"] == "embeddings"]
    assert ids("--meta", "env=prod") == [everything[-2], everything[-1]]
    assert ids("--meta", "env=prod", "--meta", "tier=2") == [everything[-1]]  # every condition holds
    assert ids("--meta", "tier=2") == [everything[-3], everything[-1]]
    assert ids("--q", "quokkas") == [everything[-3]]
    assert ids("--key", key_id(OTHER_KEY)) == [everything[2], everything[4]]
    assert ids("--user", "alice") == [] and ids("--user", "Alice") == [everything[-1]]  # exact
    assert ids("--user-prefix", "AL") == [everything[-2], everything[-1]]
    assert ids("--model-prefix", "TEXT-embedding") == [everything[3]]
    middle = t[everything[3]]["created_at"]
    assert ids("--until", str(middle)) == everything[4:]
    assert ids("--since", str(middle), "--until", str(t[everything[1]]["created_at"])) == everything[2:4]
    # Equal latencies (kept to the microsecond: it happens) in order of arrival, as documented;
    # the requests were sent one at a time, so ``everything`` is newest arrival first.
    by_latency = sorted(everything, key=lambda i: (t[i]["latency_ms"], -everything.index(i)))
    assert ids("--sort", "latency", "--order", "asc") == by_latency
    assert ids("--sort", "latency") == list(reversed(by_latency))
    code, _, err = run_cli(capsys, "traces", "--db", db, "--meta", "novalue")
    assert code == 2 and "--meta: expected key=value" in err
    code, _, err = run_cli(capsys, "traces", "--db", db, "--cursor", "garbage!")
    assert code == 2 and "--cursor: invalid cursor" in err
    # A project the store has no trace of: said so (exit 2), not "No traces match".
    assert ids("--project", "default") == everything
    for command in (["traces"], ["stats"], ["traces", "show", everything[0]]):
        code, out, err = run_cli(capsys, *command, "--db", db, "--project", "nosuch")
        assert code == 2 and "unknown project 'nosuch': this store has traces of default" in err, (command, out, err)
        assert "No traces" not in out


def test_traces_show_help_has_a_readable_usage_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "prysmai._cli", "traces", "show", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0] == "usage: prysmai traces show TRACE_ID [--json] [--db PATH] [--project NAME]"
    assert "prysmai traces [options]" not in out


def test_proxy_and_demo_need_the_extra(capsys: Any, monkeypatch: Any) -> None:
    import prysmai._proxy.cli.common as proxy_cli

    monkeypatch.setattr(proxy_cli, "has_extra", lambda: False)
    for command in ("proxy", "demo"):
        code, _, err = run_cli(capsys, command)
        assert code == 2 and err.strip() == f"prysmai: {proxy_cli.EXTRA_MESSAGE}"
        assert "uvicorn[standard] and aiohttp" in err and "pip install '.[proxy]'" in err


def test_cli_import_is_light() -> None:
    code = (
        "import sys, prysmai._cli as c; c._build_parser()\n"
        "heavy = [m for m in ('httpx', 'starlette', 'uvicorn', 'sqlite3') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_proxy_command_generates_a_key_and_flushes_on_stop(tmp_path: Any, stop_signal: int) -> None:
    db = str(tmp_path / "cli.db")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PRYSM_PROXY_KEYS", "PRYSM_PROXY_KEYS_FILE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "proxy", "--port", str(port), "--db", db, "--upstream", "demo"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        banner = ""
        while "traces in" not in banner:
            line = proc.stderr.readline()
            assert line, f"proxy exited early: {banner}"
            banner += line
        key = re.search(r"(sk-prysm-\S+)", banner.split("generated key", 1)[1]).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        r = httpx.post(f"{base}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and "prysm-demo" in r.json()["choices"][0]["message"]["content"]
        proc.send_signal(stop_signal)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    (trace,) = read_traces(db)
    assert trace["id"] == r.headers["x-prysm-trace-id"] and trace["total_tokens"]


def test_proxy_command_rejects_bad_configuration(capsys: Any, tmp_path: Any) -> None:
    code, _, err = run_cli(capsys, "proxy", "--key", "sk-wrong-prefix-secret", "--db", str(tmp_path / "x.db"))
    assert code == 2 and "key configuration" in err and "sk-wrong-prefix-secret" not in err
    code, _, err = run_cli(capsys, "proxy", "--key", KEY, "--upstream", "ftp://x", "--db", str(tmp_path / "x.db"))
    assert code == 2 and "--upstream" in err
    bad_pricing = tmp_path / "p.json"
    bad_pricing.write_text("{")
    code, _, err = run_cli(capsys, "proxy", "--key", KEY, "--pricing", str(bad_pricing), "--db", str(tmp_path / "x.db"))
    assert code == 1 and "pricing" in err


def test_demo_runs_offline(capsys: Any, tmp_path: Any) -> None:
    keep = str(tmp_path / "demo.db")
    code, out, _ = run_cli(capsys, "demo", "--keep-db", keep)
    assert code == 0, out
    assert "Captured 8 trace(s)" in out and "plain call" in out and "streamed call" in out and "async call" in out
    assert "tool call      -> search_docs(" in out and "bad request    -> 400" in out
    traces = read_traces(keep)
    assert len(traces) == 8
    assert [t["user_id"] for t in traces][3:7] == ["alice", "bob", "alice", "alice"]
    assert sum(t["stream"] for t in traces) == 1
    assert [t["status"] for t in traces] == ["success"] * 7 + ["error"]
    assert traces[-1]["http_status"] == 400 and "at least one message" in traces[-1]["error"]
    tool_call = json.loads(traces[5]["response_body"])["choices"][0]["message"]["tool_calls"][0]
    assert tool_call["function"]["name"] == "search_docs"
    assert json.loads(traces[6]["request_body"])["messages"][-1]["role"] == "tool"
    assert all(t["total_tokens"] and t["cost_usd"] for t in traces[:7])
    assert "Requests      8" in out and "OPENAI_BASE_URL" not in os.environ


def _serve_demo(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """``prysmai demo --serve ARGS`` in a subprocess, once it serves: (process, URL, key)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "demo", "--serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = ""
    deadline = time.monotonic() + 90
    while "Dashboard:" not in out:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, f"demo --serve ended early:\n{out}"
        out += line
    m = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)/\s+\(log in with the demo's key: (sk-prysm-\S+)\)", out)
    assert m, out
    return proc, m.group(1), m.group(2)


def _stop_demo(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    return rest


def test_demo_serve_keeps_its_url_and_store_and_prints_the_true_totals(tmp_path: Any) -> None:
    """--port and --db: the same URL and the same store from run to run; at the end, every trace
    is counted (not the 100 listed) and every model used is named."""
    db, port = str(tmp_path / "demo.db"), free_port()
    proc, url, key = _serve_demo("--port", str(port), "--db", db)
    try:
        assert url == f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"{url}/api/v1", headers=auth, timeout=30) as client:
            for i in range(120):
                model = ("gpt-4o", "o3-mini", "gpt-4.1-nano")[i % 3]
                r = client.post("/chat/completions", json={**CHAT, "model": model})
                assert r.status_code == 200, r.text
    finally:
        rest = _stop_demo(proc)
    assert "Captured 128 trace(s) (the newest 100 below):" in rest, rest
    assert "Requests      128" in rest
    assert "costs are what each model named in the requests (gpt-4.1-nano, gpt-4o, gpt-4o-mini, o3-mini)" in rest
    assert "Captured 100 trace(s)" not in rest and "what gpt-4o-mini would have cost" not in rest

    # Again, on the same port and store: the same URL; the store keeps the first run's traces.
    proc, again, _ = _serve_demo("--port", str(port), "--db", db)
    rest = _stop_demo(proc)
    assert again == url
    assert "Captured 136 trace(s) (the newest 100 below):" in rest
    assert len(read_traces(db)) == 136


def test_traces_filter_by_score_and_show_their_scores(capsys: Any, filled_db: str) -> None:
    from prysmai._proxy.store import Store, scores

    alice, bob = (next(t for t in read_traces(filled_db) if t["user_id"] == u) for u in ("alice", "bob"))
    store = Store.existing(filled_db)
    assert store is not None
    with store:
        for trace, value in ((alice, 0.9), (bob, 0.2)):
            new = scores.NewScore.parse({"name": "quality", "value": value, "comment": "bell\tand <b>"})
            store.edit_sync(scores.add, trace["id"], new, project=None, author_key="key_cli", source="api")
    code, out, _ = run_cli(capsys, "traces", "--db", filled_db, "--score", "quality", "--score-min", "0.5", "--json")
    rows = json.loads(out)["data"]
    assert code == 0 and [r["id"] for r in rows] == [alice["id"]]
    assert [(s["name"], s["value"]) for s in rows[0]["scores"]] == [("quality", 0.9)]
    code, out, _ = run_cli(capsys, "traces", "show", bob["id"], "--db", filled_db)
    assert code == 0 and 'Score                quality = 0.2  by key_cli  "bell\\x09and <b>"' in out  # the tab escaped
    code, _, err = run_cli(capsys, "stats", "--db", filled_db, "--score-min", "1")
    assert code == 2 and "--score-min needs a score name" in err
