"""Issue 7, CLI rows: captured control characters never reach the terminal raw; ``--limit`` ranges."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from prysmai._cli import main
from prysmai._proxy.config.keys import key_id

from ..conftest import KEY, FakeUpstream

HOSTILE_MODEL = "x\u001b]0;PWNED\u0007\u202e"


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def hostile_db(fake: FakeUpstream, start_proxy: Any) -> str:
    proxy = start_proxy(fake.url)  # type: ignore[attr-defined]
    headers = {
        "Authorization": f"Bearer {KEY}",
        "X-Prysm-User-Id": "eve%1B%5B2J",
        "X-Prysm-Session-Id": "s%1B%5B31m",
        "X-Prysm-Metadata": '{"k":"\\u001b[5m","lone":"\\ud800"}',
    }
    body = {"model": HOSTILE_MODEL, "messages": [{"role": "user", "content": "\u001b]52;c;Zm9v\u0007"}]}
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers).status_code == 200
    proxy.stop()
    return str(proxy.db_path)


def _no_raw_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]
    assert not bad, bad


def test_human_output_escapes_control_characters(capsys: Any, hostile_db: str) -> None:
    code, out, _ = run_cli(capsys, "traces", "--db", hostile_db)
    assert code == 0
    _no_raw_controls(out)
    assert "\\x1b" in out and "eve\\x1b[2J" in out and key_id(KEY) in out
    trace_id = json.loads(run_cli(capsys, "traces", "--db", hostile_db, "--json")[1])["data"][0]["id"]
    code, out, _ = run_cli(capsys, "traces", "show", trace_id, "--db", hostile_db)
    assert code == 0
    _no_raw_controls(out)
    assert "x\\x1b]0;PWNED\\x07\\u202e" in out
    assert re.search(rf"^Key +{key_id(KEY)}$", out, re.M)
    code, out, _ = run_cli(capsys, "stats", "--db", hostile_db)
    assert code == 0
    _no_raw_controls(out)


def test_json_output_stays_exact(capsys: Any, hostile_db: str) -> None:
    code, out, _ = run_cli(capsys, "traces", "--db", hostile_db, "--json")
    assert code == 0
    (row,) = json.loads(out)["data"]
    assert row["model"] == HOSTILE_MODEL and row["user_id"] == "eve\u001b[2J"
    code, out, _ = run_cli(capsys, "traces", "show", row["id"], "--db", hostile_db, "--json")
    full = json.loads(out)
    assert full["metadata"] == {"k": "\u001b[5m", "lone": "\ud800"}  # even the unpaired surrogate
    assert full["key_id"] == key_id(KEY)


@pytest.mark.parametrize("limit", [str(10**30), "0", "-1", "1001"])
def test_limit_out_of_range_is_a_one_line_error(capsys: Any, hostile_db: str, limit: str) -> None:
    code, out, err = run_cli(capsys, "traces", "--db", hostile_db, "--limit", limit)
    assert code == 2 and out == ""
    assert err == "prysmai: --limit must be a whole number from 1 to 1000\n"
