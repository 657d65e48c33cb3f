"""Issue 26, spend against budget: a real ``prysmai proxy`` with a config file of limits, in front
of the loopback fake upstream where each answer costs exactly $1 (10 prompt tokens at the
provider's price of $100 000 per million). The budgets read (``/api/v1/budgets``) and
``prysmai stats --budgets`` give each project's spend, rate and the 429s its limits gave, exactly;
a project's key sees its own project only."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest

from ..config.test_projects import Proc, auth
from ..conftest import PRYSMAI, FakeUpstream, cli_env, priced_projects

SHOP = "sk-prysm-budget-shop-key-0123456789ab"
LAB = "sk-prysm-budget-lab-key-0123456789abc"
FREE = "sk-prysm-budget-free-key-0123456789ab"
ADMIN = "sk-prysm-budget-admin-key-0123456789a"


def config(fake: FakeUpstream) -> str:
    return priced_projects(
        fake,
        [
            ("shop", SHOP, "monthly_budget_usd = 3\nrequests_per_minute = 100\n"),
            ("lab", LAB, "requests_per_minute = 2\nmonthly_budget_usd = 100\n"),
            ("free", FREE, ""),
        ],
        admin=ADMIN,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def proc(fake: FakeUpstream, tmp_path: Any, request: Any) -> Any:
    """The proxy on each store: a SQLite file, or PostgreSQL (through its outbox)."""
    path = tmp_path / "prysm.toml"
    path.write_text(config(fake))
    if request.param == "sqlite":
        started = Proc(str(path), str(tmp_path / "traces.db"), cli_env())
    else:
        url = request.getfixturevalue("pg_url")
        started = Proc(str(path), url, cli_env(), "--outbox", str(tmp_path / "outbox.db"))
    started.db = started.proc.args[started.proc.args.index("--db") + 1]
    yield started
    started.stop()


def send(client: httpx.Client, key: str, **headers: str) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return client.post("/chat/completions", content=json.dumps(body), headers={**auth(key), **headers}).status_code


def traffic(base: str) -> None:
    """shop: 3 answers ($3, its budget) then 2 budget 429s; lab: 2 answers then 2 rate 429s;
    free: one answer and one 429 of the provider's own (relayed: not a limit's)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        assert [send(client, SHOP) for _ in range(5)] == [200, 200, 200, 429, 429]
        assert [send(client, LAB) for _ in range(4)] == [200, 200, 429, 429]
        assert send(client, FREE) == 200
        assert send(client, FREE, **{"x-fake-status": "429"}) == 429


def by_project(doc: dict[str, Any]) -> dict[str, Any]:
    return {p["project"]: p for p in doc["projects"]}


def check_figures(doc: dict[str, Any], rate: bool = True) -> None:
    """The figures ``traffic`` leaves, read at ``doc["as_of"]`` (``rate``: within the minute)."""
    assert doc["object"] == "budgets"
    assert doc["month_start"] == doc["since"] and doc["month_start"] <= doc["as_of"] < doc["month_end"]
    got = by_project(doc)
    assert sorted(got) == ["free", "lab", "shop"]
    shop, lab, free = got["shop"], got["lab"], got["free"]
    days = max(doc["as_of"] - doc["month_start"], 1.0) / 86400

    assert shop["limited"] and shop["configured"]
    assert shop["spend"] == {
        "month_usd": 3.0,
        "budget_usd": 3.0,
        "remaining_usd": 0.0,
        "used": 1.0,
        "exhausted": True,
        "pace_usd_per_day": pytest.approx(3.0 / days),
        "days_left": 0.0,
        "runs_out_at": None,
    }
    assert shop["rate"]["requests_per_minute"] == 100
    assert not rate or shop["rate"] == {"last_minute": 3, "requests_per_minute": 100, "used": 0.03}
    assert (shop["refusals"]["rate"], shop["refusals"]["budget"]) == (0, 2)

    assert lab["spend"]["month_usd"] == 2.0 and lab["spend"]["remaining_usd"] == 98.0
    assert lab["spend"]["used"] == pytest.approx(0.02) and not lab["spend"]["exhausted"]
    assert lab["spend"]["days_left"] == pytest.approx(98.0 / (2.0 / days))
    assert lab["spend"]["runs_out_at"] == pytest.approx(doc["as_of"] + lab["spend"]["days_left"] * 86400)
    # The limit counts what it admitted: the two refused requests are not in the window.
    assert not rate or lab["rate"] == {"last_minute": 2, "requests_per_minute": 2, "used": 1.0}
    assert (lab["refusals"]["rate"], lab["refusals"]["budget"]) == (2, 0)

    assert free["configured"] and not free["limited"]
    assert free["spend"]["month_usd"] == 1.0 and free["spend"]["budget_usd"] is None
    assert free["spend"]["days_left"] is None and free["spend"]["remaining_usd"] is None
    assert free["rate"]["requests_per_minute"] is None and free["rate"]["used"] is None
    assert not rate or free["rate"]["last_minute"] == 2
    # The provider's own 429 is relayed, not a refusal of the proxy's limits.
    assert (free["refusals"]["rate"], free["refusals"]["budget"]) == (0, 0)

    for p in got.values():  # the series adds up to the totals, in buckets of the range
        series = p["refusals"]["series"]
        assert [b["t"] for b in series] == sorted(b["t"] for b in series)
        assert all(b["t"] % doc["bucket_seconds"] == 0 for b in series)
        assert sum(b["rate"] for b in series) == p["refusals"]["rate"]
        assert sum(b["budget"] for b in series) == p["refusals"]["budget"]
        assert series[-1]["t"] <= doc["as_of"] < series[-1]["t"] + doc["bucket_seconds"]


def test_budgets_read_gives_spend_rate_and_refusals_exactly(proc: Any) -> None:
    traffic(proc.base)
    with httpx.Client(base_url=proc.base, timeout=30) as client:
        doc = client.get("/budgets", headers=auth(ADMIN)).json()
        check_figures(doc)
        # The refusals are stored as traces the proxy answered itself, with the limit's code.
        refused = client.get("/traces", params={"project": "lab", "status": "error"}, headers=auth(ADMIN)).json()
        assert [t["http_status"] for t in refused["data"]] == [429, 429]
        narrowed = client.get("/budgets", params={"project": "lab"}, headers=auth(ADMIN)).json()
        assert [p["project"] for p in narrowed["projects"]] == ["lab"]
        assert narrowed["projects"][0]["refusals"] == by_project(doc)["lab"]["refusals"]


def test_a_project_key_sees_its_own_budget_only(proc: Any) -> None:
    traffic(proc.base)
    with httpx.Client(base_url=proc.base, timeout=30) as client:
        own = client.get("/budgets", headers=auth(LAB)).json()
        assert [p["project"] for p in own["projects"]] == ["lab"]
        assert own["projects"][0]["spend"]["month_usd"] == 2.0
        other = client.get("/budgets", params={"project": "shop"}, headers=auth(LAB))
        assert other.status_code == 403 and other.json()["error"]["param"] == "project"
        assert "shop" not in json.dumps(own)
        unknown = client.get("/budgets", params={"project": "nope"}, headers=auth(ADMIN))
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_project"
        bad = client.get("/budgets", params={"since": "yesterday-ish"}, headers=auth(ADMIN))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
        # A filter of the traces would change nothing: refused, not ignored.
        other = client.get("/budgets", params={"model": "m"}, headers=auth(LAB))
        assert other.status_code == 400 and other.json()["error"]["param"] == "model"


def test_refusals_over_time_follow_the_range(proc: Any) -> None:
    traffic(proc.base)
    with httpx.Client(base_url=proc.base, timeout=30) as client:
        hour = client.get("/budgets", params={"since": "1h"}, headers=auth(ADMIN)).json()
        assert hour["bucket_seconds"] < 3600 and len(by_project(hour)["lab"]["refusals"]["series"]) > 1
        assert by_project(hour)["lab"]["refusals"]["rate"] == 2
        later = client.get("/budgets", params={"since": str(int(time.time()) + 60)}, headers=auth(ADMIN)).json()
        assert by_project(later)["shop"]["refusals"]["budget"] == 0
        # The spend is the month's whatever the range of the chart.
        assert by_project(later)["shop"]["spend"]["month_usd"] == 3.0


def test_stats_budgets_prints_the_same_figures(proc: Any, tmp_path: Any) -> None:
    traffic(proc.base)
    proc.stop()
    db, conf = proc.db, str(tmp_path / "prysm.toml")
    env = cli_env()
    out = subprocess.run(
        [*PRYSMAI, "stats", "--budgets", "--db", db, "--config", conf, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # Read a moment after the traffic: its requests may have left the last minute's window.
    check_figures(json.loads(out.stdout), rate=False)

    table = subprocess.run(
        [*PRYSMAI, "stats", "--budgets", "--db", db, "--config", conf],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.split()}
    assert "$3.00 of $3.00" in lines["shop"] and "exhausted" in lines["shop"]
    assert "$2.00 of $100.00" in lines["lab"] and "2 rate" in lines["lab"]
    assert "no limits" in lines["free"] and "$1.00" in lines["free"]
    # Without a config file the limits are unknown: the spend is shown, and said so.
    bare = subprocess.run(
        [*PRYSMAI, "stats", "--budgets", "--db", db], capture_output=True, text=True, env=env, timeout=60
    )
    assert bare.returncode == 0, bare.stderr
    assert "--config" in bare.stdout and "$3.00" in bare.stdout
    wrong = subprocess.run(
        [*PRYSMAI, "stats", "--budgets", "--db", db, "--user", "u"], capture_output=True, text=True, env=env, timeout=60
    )
    assert wrong.returncode == 2 and "--user does not apply to --budgets" in wrong.stderr
