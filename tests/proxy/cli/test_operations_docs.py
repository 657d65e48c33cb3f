"""The operator docs are checked, not just written: the systemd unit passes `systemd-analyze verify`
and its command really starts the proxy; every `prysmai` command line in README.md and docs/ parses,
and every key they pass to the proxy is one it accepts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prysmai._cli import _build_parser
from prysmai._proxy.config.keys import collect_keys, generate_key

from ..system_tools import require

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "docs" / "systemd" / "prysmai-proxy.service"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = require("systemd-analyze", "systemd")
    return subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def _unit_for_here(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at this environment's `prysmai` (verify checks it exists)."""
    here = shutil.which("prysmai", path=os.path.dirname(sys.executable))
    assert here, "the prysmai console script is not installed next to this Python"
    path = tmp_path / UNIT.name
    path.write_text(text.replace("/opt/prysmai/bin/prysmai", here))
    return path


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    done = _verify(_unit_for_here(tmp_path, UNIT.read_text()))
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr


def test_systemd_verify_catches_mistakes(tmp_path: Path) -> None:
    bad = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes").replace("NoNewPrivileges=", "NoNewPriv=")
    done = _verify(_unit_for_here(tmp_path, bad))
    assert "sometimes" in done.stderr and "NoNewPriv" in done.stderr


def _exec_start() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart=") :])


def test_systemd_command_starts_the_proxy(tmp_path: Path) -> None:
    """The unit's ExecStart, with the credential and state paths systemd would provide, serves."""
    keys = tmp_path / "credentials" / "keys"
    keys.parent.mkdir()
    keys.write_text(generate_key() + "\n")
    db = tmp_path / "state" / "traces.db"
    argv = [a.replace("%d", str(keys.parent)).replace("/var/lib/prysmai/traces.db", str(db)) for a in _exec_start()[1:]]
    argv[argv.index("--port") + 1] = "0"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    env["OPENAI_API_KEY"] = "sk-unused-in-this-test"
    proc = subprocess.Popen([sys.executable, "-m", "prysmai._cli", *argv], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "serving" not in line:
            line = proc.stderr.readline()
        m = re.search(r'"message": "serving (http://127\.0\.0\.1:\d+/api/v1)', line)  # --log-format json
        assert m, line
        assert db.exists()
        deadline = time.monotonic() + 15
        while True:  # up: the health endpoint answers
            try:
                if httpx.get(f"{m.group(1)}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        if proc.stderr:
            proc.stderr.close()


def _command_lines() -> list[tuple[str, str]]:
    """(doc, command) for every `prysmai ...` line in a code block of the docs."""
    found = []
    for doc in DOCS:
        in_block = console = False
        lines = doc.read_text().replace("\\\n", " ").splitlines()
        for line in lines:
            if line.lstrip().startswith("```"):
                in_block = not in_block
                console = line.strip() == "```console"  # there, only `$ ` lines are commands
                continue
            if console and not line.startswith("$ "):
                continue
            command = line.strip().removeprefix("$ ")
            synopsis = "[--" in command  # a usage line, not a command
            if in_block and not synopsis and re.match(r"(\S+=\S+ )*prysmai (proxy|traces|stats|demo|keys)\b", command):
                # Without a comment or a redirection of standard input (`prysmai keys hash < keys.txt`)
                # or output (`prysmai traces --format csv > week.csv`).
                command = command.split("#", 1)[0].split(" < ", 1)[0].split(" > ", 1)[0]
                found.append((doc.name, command.strip()))
    return found


@pytest.mark.parametrize(("doc", "command"), _command_lines())
def test_documented_commands_parse(doc: str, command: str, capsys: Any) -> None:
    words = shlex.split(command)
    words = words[words.index("prysmai") + 1 :]
    # Shell variables and placeholders a reader fills in.
    key = generate_key()
    words = [key if "PRYSM_API_KEY" in w or "PRYSM_KEY" in w else w for w in words]
    try:
        args = _build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse: {capsys.readouterr().err} ({exc})")
    if getattr(args, "key", None):
        collect_keys(args.key, None, {})  # raises on a key the proxy would refuse


def _normalised(line: str, db: str) -> str:
    """A banner line without what differs between runs: the time stamp, the port, the store's path."""
    line = re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", "TIME ", line.strip())
    line = re.sub(r"http://127\.0\.0\.1:\d+/", "http://127.0.0.1:PORT/", line)
    return line.replace(db, "DB")


def test_the_dashboards_banner_in_the_docs_is_what_the_programs_print(tmp_path: Path) -> None:
    from ..conftest import Proxy

    text = (ROOT / "docs" / "proxy.md").read_text()
    section = text[text.index("## The dashboard") :]
    block = section[
        section.index("```console") + len("```console") : section.index("```\n", section.index("```console") + 10)
    ]
    shown = [line for line in block.strip().splitlines() if not line.startswith("$")]
    assert len(shown) == 3, shown
    key = generate_key()
    db = str(tmp_path / "traces.db")
    proxy = Proxy("--key", key, "--db", db, OPENAI_API_KEY="sk-upstream-unused").start()
    try:
        assert proxy.proc.stderr is not None
        printed = [proxy.lines[-1], proxy.proc.stderr.readline()]
    finally:
        proxy.stop()
    docs_db = "/home/me/.local/share/prysmai/traces.db"
    assert [_normalised(line, db) for line in printed] == [_normalised(line, docs_db) for line in shown[:2]]
    ui = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "ui", "--db", db, "--key", key, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert ui.stderr is not None
        line = ui.stderr.readline()
        url = re.search(r"http://\S+/", line)
        assert url, line
        deadline = time.monotonic() + 30
        while True:  # serving: it stops on SIGTERM from here on
            try:
                httpx.get(url.group(0) + "login", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prysmai ui did not serve"
                time.sleep(0.05)
    finally:
        ui.terminate()
        ui.wait(30)
    assert _normalised(line, db) == _normalised(shown[2], "traces.db")


def test_the_limits_table_gives_the_limit_the_api_and_the_cli_take() -> None:
    from prysmai._proxy.api.reads import MAX_LIMIT
    from prysmai._proxy.store import queries

    text = (ROOT / "docs" / "proxy.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| `limit` of every list")]
    low, high = re.findall(r"\| (\d[\d,]*) … (\d[\d,]*) \|", row)[0]
    assert (int(low), int(high.replace(",", ""))) == (1, MAX_LIMIT) == (1, queries.MAX_LIMIT)
    parser = _build_parser()
    args = parser.parse_args(["traces", "--limit", str(MAX_LIMIT)])
    assert args.limit == MAX_LIMIT
