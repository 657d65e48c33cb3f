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
    assert re.search(r"mystery .* error 500 .* - ", out)  # unknown cost shown as unknown, not $0
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
    assert "p50" in out and "p95" in out and "unknown cost" in out
    assert "gpt-4.1" in out and "mystery" in out
    stats = json.loads(run_cli(capsys, "stats", "--db", filled_db, "--json", "--model", "gpt-4o-mini")[1])
    assert stats["requests"] == 1 and stats["total_tokens"] == 13


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
