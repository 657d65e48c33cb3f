"""The CLI as a contract: pipes, --version, one JSON shape shared with the HTTP API, help text."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from importlib.metadata import version
from typing import Any

import httpx
import pytest

import prysmai
from prysmai._cli import main
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine

from ..conftest import KEY, FakeUpstream

PRYSMAI = [sys.executable, "-m", "prysmai._cli"]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    env.update(extra)
    return env


# -- a store bigger than a pipe's buffer ----------------------------------------------------------
@pytest.fixture(scope="module")
def big_db(tmp_path_factory: Any) -> tuple[str, str]:
    """3000 traces with 3000 models (so even `stats` outgrows a 64 KiB pipe) and one trace with a
    300 KB response body. Returns (path, id of the big trace)."""
    path = str(tmp_path_factory.mktemp("big") / "traces.db")
    conn = SQLiteEngine(path).open_for_writing()
    rows = []
    for i in range(3000):
        row = dict.fromkeys(COLUMNS)
        row.update(
            id=uuid.uuid4().hex,
            created_at=1_750_000_000.0 + i,
            method="POST",
            endpoint="chat/completions",
            model=f"model-{i:05d}",
            stream=0,
            status="success",
            http_status=200,
            latency_ms=12.5,
            total_tokens=10,
            request_body=json.dumps(CHAT),
            response_body='{"ok": true}',
            project="default",
        )
        rows.append(row)
    rows[-1]["response_body"] = json.dumps({"text": "x" * 300_000})
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [tuple(r[c] for c in COLUMNS) for r in rows],
        )
    conn.close()
    return path, str(rows[-1]["id"])


def _through_head(args: list[str], head: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``prysmai ARGS | head ...`` in a real shell pipeline; the shell's stderr is prysmai's."""
    command = " ".join(map(_quote, [*PRYSMAI, *args])) + f" | {head}"
    # PYTHONUNBUFFERED: every print is its own write, so the reader has gone away by the later ones.
    env = cli_env(PYTHONUNBUFFERED="1")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout, env=env)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@pytest.mark.parametrize(
    ("args", "head", "lines"),
    [
        (["traces", "--json", "--limit", "1000"], "head -2", 2),
        (["traces", "--limit", "1000"], "head -3", 3),
        (["stats"], "head", 10),
    ],
)
def test_a_closed_pipe_ends_quietly(big_db: tuple[str, str], args: list[str], head: str, lines: int) -> None:
    done = _through_head([*args, "--db", big_db[0]], head)
    assert len(done.stdout.splitlines()) == lines
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stderr == ""


def test_show_json_into_head(big_db: tuple[str, str]) -> None:
    done = _through_head(["traces", "show", big_db[1], "--json", "--db", big_db[0]], "head -c 100")
    assert done.stdout.startswith("{") and done.stderr == "", done.stderr


def test_demo_into_head() -> None:
    done = _through_head(["demo"], "head -3")
    assert done.stdout.startswith("Prysm demo: a proxy on http://127.0.0.1:")
    assert len(done.stdout.splitlines()) == 3
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_the_pipe_check_can_fail(big_db: tuple[str, str]) -> None:
    """The same pipeline with a bare print loop does show the traceback: the tests above are real."""
    code = "import sys\nfor i in range(100000): print('x' * 80)"
    done = subprocess.run(
        ["sh", "-c", f"{_quote(sys.executable)} -c {_quote(code)} | head -1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(PYTHONUNBUFFERED="1"),
    )
    assert "BrokenPipeError" in done.stderr


def test_version() -> None:
    done = subprocess.run([*PRYSMAI, "--version"], capture_output=True, text=True, timeout=60, env=cli_env())
    assert done.returncode == 0
    assert done.stdout.strip() == f"prysmai {prysmai.__version__}" == f"prysmai {version('prysmai')}"


# -- one JSON shape ------------------------------------------------------------------------------
@pytest.fixture
def served(fake: FakeUpstream, start_proxy: Any) -> Any:
    proxy = start_proxy(fake.url)  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{proxy.base_url}/chat/completions"
    tags = {"X-Prysm-User-Id": "alice", "X-Prysm-Metadata": '{"feature":"search"}'}
    httpx.post(url, json=CHAT, headers={**auth, **tags})
    httpx.post(url, json={**CHAT, "stream": True}, headers=auth)
    proxy.traces()  # everything written
    return proxy


def test_cli_and_api_print_the_same_documents(capsys: Any, served: Any) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    db = served.db_path
    api_list = httpx.get(f"{served.base_url}/traces", headers=auth).json()
    code, out, _ = run_cli(capsys, "traces", "--db", db, "--json")
    cli_list = json.loads(out)
    assert code == 0 and cli_list == api_list
    assert cli_list["object"] == "list" and len(cli_list["data"]) == 2
    rows = cli_list["data"]
    assert all(r["object"] == "trace" and isinstance(r["stream"], bool) and "request_body" not in r for r in rows)
    tagged = next(r for r in rows if r["user_id"] == "alice")
    assert tagged["metadata"] == {"feature": "search"}  # list rows carry metadata, as an object

    api_one = httpx.get(f"{served.base_url}/traces/{tagged['id']}", headers=auth).json()
    code, out, _ = run_cli(capsys, "traces", "show", tagged["id"], "--db", db, "--json")
    cli_one = json.loads(out)
    assert cli_one == api_one and cli_one["object"] == "trace"
    assert cli_one["request_body"] == CHAT  # an object, not JSON text inside a string
    assert cli_one["response_body"]["object"] == "chat.completion"
    assert cli_one["notes"] == [] and cli_one["metadata"] == {"feature": "search"}

    api_stats = httpx.get(f"{served.base_url}/stats", headers=auth).json()
    code, out, _ = run_cli(capsys, "stats", "--db", db, "--json")
    cli_stats = json.loads(out)
    assert cli_stats["object"] == api_stats["object"] == "stats"
    assert cli_stats["requests"] == api_stats["requests"] == 2
    assert {k: v for k, v in api_stats.items() if k != "store"} == cli_stats


def test_text_bodies_stay_text() -> None:
    from prysmai._proxy.api import jsonshape

    shaped = jsonshape.trace({"id": "x", "request_body": "42", "response_body": "<5 bytes of audio/wav, not stored>"})
    assert shaped["request_body"] == "42" and shaped["response_body"].startswith("<5 bytes")
    assert jsonshape.trace({"id": "x", "response_body": "{broken"})["response_body"] == "{broken"


def test_errors_are_json_on_stderr_with_json(capsys: Any, served: Any, tmp_path: Any) -> None:
    missing = str(tmp_path / "none.db")
    code, out, err = run_cli(capsys, "traces", "--db", missing, "--json")
    assert code == 1 and out == ""
    doc = json.loads(err)
    assert doc["error"]["code"] == "store_not_found" and missing in doc["error"]["message"]
    assert not os.path.exists(missing)

    code, out, err = run_cli(capsys, "traces", "show", "ffffffffff", "--db", served.db_path, "--json")
    assert code == 1 and out == "" and json.loads(err)["error"]["code"] == "not_found"

    code, out, err = run_cli(capsys, "stats", "--db", served.db_path, "--json", "--since", "someday")
    assert code == 2 and out == "" and json.loads(err)["error"]["message"].startswith("--since:")

    # The HTTP API names its query parameter, not the CLI flag.
    r = httpx.get(f"{served.base_url}/traces?since=someday", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("since:") and "--since" not in message


def test_short_prefix_says_so(capsys: Any, served: Any) -> None:
    code, _, err = run_cli(capsys, "traces", "show", "39e8", "--db", served.db_path)
    assert code == 2 and "prefix too short" in err
    trace_id = served.traces()[0]["id"]
    code, _, err = run_cli(capsys, "traces", "show", trace_id[:4], "--db", served.db_path)
    assert code == 2 and "prefix too short" in err  # even when it would match


@pytest.mark.parametrize(("tz", "mark"), [("UTC0", "+00:00"), ("IST-5:30", "+05:30")])
def test_time_shows_its_zone(served: Any, tz: str, mark: str) -> None:
    done = subprocess.run(
        [*PRYSMAI, "traces", "--db", served.db_path],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(TZ=tz),
    )
    assert done.returncode == 0
    rows = done.stdout.splitlines()[2:]
    assert len(rows) == 2 and all(mark in row for row in rows)


def test_help_texts(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["traces", "--help"])
    out = capsys.readouterr().out
    assert "$XDG_DATA_HOME/prysmai/traces.db, else ~/.local/share/prysmai/traces.db" in " ".join(out.split())
    assert "show ..." not in out and "\n    show " not in out  # `show` listed once, not twice
    assert "  show TRACE_ID         one trace in full" in out
    with pytest.raises(SystemExit):
        main(["proxy", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 33554432 = 32 MiB)" in out and "default 10000)" in out
    for essential in ("--ssl-certfile", "--log-format", "--access-log", "GET /api/v1/health", "SIGTERM"):
        assert essential in out
    assert "docs/proxy.md and docs/operations.md" in out and "source tree and sdist" in out


# -- a client needs no OpenAI key when the proxy holds the credentials ----------------------------
def test_prysm_client_needs_no_openai_key(proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(openai.OpenAIError):  # what the README warns about
        openai.OpenAI()
    client = prysmai.PrysmClient(prysm_key=KEY, base_url=proxy.base_url).openai(max_retries=0)
    answer = client.chat.completions.create(**CHAT)
    assert answer.choices[0].message.content
    (trace,) = proxy.traces()
    assert trace["status"] == "success"


def test_store_rows_as_read_by_sqlite_are_unchanged(big_db: tuple[str, str]) -> None:
    """The JSON shape is applied when printing; the store keeps bodies as text."""
    conn = sqlite3.connect(big_db[0])
    (body,) = conn.execute("SELECT request_body FROM traces LIMIT 1").fetchone()
    conn.close()
    assert json.loads(body) == CHAT


def test_monitor_with_a_placeholder_openai_key(fake: FakeUpstream, proxy: Any) -> None:
    """The README's other way: a placeholder key lets openai build the client; it is never sent."""
    import openai

    placeholder = "unused-placeholder-0123"
    client = openai.OpenAI(api_key=placeholder, max_retries=0)
    monitored = prysmai.monitor(client, prysm_key=KEY, base_url=proxy.base_url)
    assert monitored.chat.completions.create(**CHAT).choices[0].message.content  # the proxy took KEY
    seen = fake.last()
    assert all(placeholder not in value for value in seen.headers.values())
    assert placeholder.encode() not in seen.body


def test_the_documented_shape_is_the_printed_one(capsys: Any, served: Any) -> None:
    """docs/proxy.md's "JSON output" table names exactly fields the CLI prints."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "proxy.md").read_text()
    section = doc.split("### JSON output", 1)[1].split("\n#", 1)[0]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in section.splitlines() if line.startswith("| ")}
    # Quoted words are field names, except the values of "object".
    names = {doc: set(re.findall(r'"(\w+)"', shape)) - {"trace", "list", "stats"} for doc, shape in rows.items()}

    trace_id = served.traces()[0]["id"]
    one = json.loads(run_cli(capsys, "traces", "show", trace_id, "--db", served.db_path, "--json")[1])
    listing = json.loads(run_cli(capsys, "traces", "--db", served.db_path, "--json")[1])
    stats = json.loads(run_cli(capsys, "stats", "--db", served.db_path, "--json")[1])
    assert names["trace"] - {"object"} <= set(one) and one["object"] == "trace"
    envelope = {"object", "data", "next_cursor", "total", "total_exact"}
    assert names["list"] == envelope and set(listing) == envelope
    list_fields = names["trace"] - {"request_body", "response_body", "response_model", "provider_request_id"}
    assert list_fields <= set(listing["data"][0])
    assert names["stats"] <= set(stats) | {"store"}
    assert names["error"] == {"error", "message", "type", "param", "code"}


def test_one_list_envelope_for_traces_sessions_and_users() -> None:
    from prysmai._proxy.api import jsonshape

    sessions = [{"session_id": "s-1", "requests": 2}]
    assert jsonshape.page(sessions, None) == {"object": "list", "data": sessions, "next_cursor": None}
    traces = jsonshape.page([jsonshape.trace({"id": "a", "stream": 1})], "c2")
    assert traces == {"object": "list", "data": [{"object": "trace", "id": "a", "stream": True}], "next_cursor": "c2"}
