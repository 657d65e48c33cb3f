"""``prysmai traces`` / ``stats`` take every filter the read API takes: provider, stream, HTTP
status and the cost, latency, TTFT and token ranges (a store written by a real proxy)."""

from __future__ import annotations

import json
from typing import Any

from .test_cli import filled_db, run_cli

__all__ = ["filled_db"]  # the fixture, used here


def test_the_new_filter_flags(capsys: Any, filled_db: str) -> None:
    def ids(*flags: str) -> list[str]:
        code, out, err = run_cli(capsys, "traces", "--db", filled_db, "--json", *flags)
        assert code == 0, err
        return [r["model"] for r in json.loads(out)["data"]]

    assert sorted(ids()) == ["gpt-4.1", "gpt-4o-mini", "mystery"]
    assert ids("--stream", "true") == ["gpt-4.1"]
    assert sorted(ids("--stream", "false")) == ["gpt-4o-mini", "mystery"]
    assert ids("--http-status", "500") == ["mystery"]
    assert sorted(ids("--tokens-min", "1", "--latency-min", "0")) == ["gpt-4.1", "gpt-4o-mini"]
    assert ids("--cost-max", "0") == []
    code, out, _ = run_cli(capsys, "stats", "--db", filled_db, "--json", "--stream", "true")
    assert code == 0 and json.loads(out)["requests"] == 1


def test_a_bad_range_names_the_flag(capsys: Any, filled_db: str) -> None:
    code, _, err = run_cli(capsys, "traces", "--db", filled_db, "--latency-min", "9", "--latency-max", "1")
    assert code == 2 and "--latency-min must not be larger than --latency-max" in err
    code, _, err = run_cli(capsys, "stats", "--db", filled_db, "--cost-min", "free")
    assert code == 2 and "--cost-min must be a number" in err
    code, _, err = run_cli(capsys, "traces", "--db", filled_db, "--http-status", "99")
    assert code == 2 and "--http-status must be an HTTP status" in err
