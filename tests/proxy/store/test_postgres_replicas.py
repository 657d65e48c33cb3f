"""Issue 23, across replicas: two real ``prysmai proxy`` processes on one real PostgreSQL share a
project's limits and the dashboard's log-ins, and fall back to their own counts while the
database is down.

The documented bound (server/limits.py, docs/operations.md): what the replicas admit beyond a
limit is at most about one second of their traffic. The tests send at a known pace, so that
second is a known number of requests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from ..cli.test_doctor import by_name, doctor
from ..config.test_projects import auth
from ..conftest import FakeUpstream, Proxy, priced_projects
from ..postgres import PASSWORD, PostgresServer

KEY = "sk-prysm-replicas-test-key-0123456789ab"
OTHER = "sk-prysm-replicas-other-key-0123456789"
ADMIN = "sk-prysm-replicas-admin-key-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def config(
    fake: FakeUpstream, *, rpm: int | None = None, budget: float | None = None, keys: tuple[str, ...] = (KEY,)
) -> str:
    limits = (f"requests_per_minute = {rpm}\n" if rpm else "") + (f"monthly_budget_usd = {budget}\n" if budget else "")
    return priced_projects(fake, [("p", keys, limits)], admin=ADMIN)


def replicas(tmp_path: Path, url: str, text: str) -> tuple[Proxy, Proxy, Path]:
    """Two proxies on the database at ``url``, each with its own outbox, one config file."""
    path = tmp_path / "prysm.toml"
    path.write_text(text)
    started = []
    for name in ("a", "b"):
        started.append(Proxy("--config", str(path), "--db", url, "--outbox", str(tmp_path / f"{name}.db")).start())
    return started[0], started[1], path


def paced(bases: list[str], n: int, per_second: float) -> list[int]:
    """``n`` chat calls, one every ``1 / per_second`` s, to each of ``bases`` in turn; their statuses."""
    statuses = []
    clients = [httpx.Client(base_url=b, headers=auth(KEY), timeout=30) for b in bases]
    try:
        start = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, start + i / per_second - time.monotonic()))
            r = clients[i % len(clients)].post("/chat/completions", json=CHAT)
            assert r.status_code in (200, 429), r.text
            if r.status_code == 429:
                code = r.json()["error"]["code"]
                assert code in ("project_rate_limit_exceeded", "project_budget_exceeded"), r.text
            statuses.append(r.status_code)
    finally:
        for c in clients:
            c.close()
    return statuses


def health(base: str, key: str = KEY) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/health", headers=auth(key), timeout=10).json())


def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_requests_per_minute_hold_across_two_replicas(pg_url: str, fake: FakeUpstream, tmp_path: Path) -> None:
    """60 per minute, 300 requests at 20 a second spread over both: 60 pass, plus at most one
    second of traffic (20). Counted per replica, 120 would pass."""
    a, b, _ = replicas(tmp_path, pg_url, config(fake, rpm=60))
    try:
        statuses = paced([a.base, b.base], 300, per_second=20)
        passed = statuses.count(200)
        assert 60 <= passed <= 60 + 20, passed
        assert statuses[-100:] == [429] * 100  # once the minute is used, both refuse
        r = httpx.post(f"{a.base}/chat/completions", json=CHAT, headers=auth(KEY))
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert health(a.base)["replicas"]["exchanges"] > 0
        code, out, err = doctor("--json", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=a.base, OPENAI_API_KEY="sk-app")
        store = by_name(out)["trace store"]
        assert code == 0 and store["status"] == "ok", out + err
        assert store["detail"] == (
            "PostgreSQL (an admin key sees where); outbox: 0 trace(s) waiting; "
            "limits and log-ins shared with the other replicas"
        )
    finally:
        logs = a.stop() + b.stop()
    assert PASSWORD not in logs


def test_the_monthly_budget_holds_across_two_replicas(pg_url: str, fake: FakeUpstream, tmp_path: Path) -> None:
    """A $10 budget, each answer $1, 40 requests at 4 a second over both: 10 pass, plus at most
    one second of traffic (4). Counted per replica, 20 would pass."""
    a, b, _ = replicas(tmp_path, pg_url, config(fake, budget=10))
    try:
        statuses = paced([a.base, b.base], 40, per_second=4)
        assert 10 <= statuses.count(200) <= 10 + 4, statuses
        assert statuses[-10:] == [429] * 10
    finally:
        a.stop()
        b.stop()
    # A replica started again resumes from what it and the others counted: nothing more passes.
    c = Proxy("--config", str(tmp_path / "prysm.toml"), "--db", pg_url, "--outbox", str(tmp_path / "c.db")).start()
    try:
        assert paced([c.base], 3, per_second=10) == [429] * 3
    finally:
        c.stop()


def login(base: str, key: str = KEY) -> tuple[str, str]:
    """Log in on the dashboard at ``base``: the session cookie's (name, value)."""
    origin = base[: -len("/api/v1")]
    r = httpx.post(f"{origin}/ui/login", data={"key": key}, headers={"Origin": origin}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    name, _, rest = r.headers["set-cookie"].partition("=")
    return name, rest.split(";", 1)[0]


def me(base: str, cookie: tuple[str, str]) -> int:
    origin = base[: -len("/api/v1")]
    return httpx.get(f"{origin}/ui/api/me", headers={"Cookie": f"{cookie[0]}={cookie[1]}"}).status_code


def test_a_log_in_on_one_replica_holds_on_the_other_and_ends_on_both(
    pg_url: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    a, b, path = replicas(tmp_path, pg_url, config(fake, keys=(KEY, OTHER)))
    try:
        cookie = login(a.base)
        assert me(b.base, cookie) == 200  # at once: before B heard of it, on its signature
        time.sleep(2)
        assert me(b.base, cookie) == 200  # and after, as a session B knows
        origin = a.base[: -len("/api/v1")]
        out = httpx.post(f"{origin}/ui/logout", headers={"Origin": origin, "Cookie": f"{cookie[0]}={cookie[1]}"})
        assert out.status_code == 303
        assert me(a.base, cookie) == 401
        wait_for(lambda: me(b.base, cookie) == 401, 3, "logged out on A, still in on B")
        # A key removed from the config (each replica reloads its file) ends its sessions on both.
        other = login(b.base, OTHER)
        assert me(a.base, other) == 200
        path.write_text(config(fake, keys=(KEY,)))
        for base in (a.base, b.base):
            wait_for(lambda base=base: me(base, other) == 401, 5, "a revoked key's session goes on")
        # A replica started again keeps the log-ins of the others (the secret is the database's).
        fresh = login(a.base)
        b.stop()
        b = Proxy("--config", str(path), "--db", pg_url, "--outbox", str(tmp_path / "b.db")).start()
        assert me(b.base, fresh) == 200
    finally:
        a.stop()
        b.stop()


def test_postgres_down_each_replica_counts_its_own_and_catches_up(fake: FakeUpstream, tmp_path: Path) -> None:
    server = PostgresServer().start()  # of this test's own: stopped mid-test
    try:
        a, b, _ = replicas(tmp_path, server.database(), config(fake, rpm=20))
        try:
            assert health(a.base)["status"] == "ok"
            server.stop()
            wait_for(lambda: health(a.base)["status"] == "degraded", 10, "health says nothing of the outage")
            doc = health(a.base)
            assert "not shared" in doc["reason"] or "unreachable" in doc["reason"]
            wait_for(lambda: health(b.base)["replicas"]["error"] is not None, 10, "B did not notice")
            # Alone, each replica enforces the limit on its own counts.
            assert paced([a.base], 15, per_second=50) == [200] * 15
            assert paced([b.base], 25, per_second=50) == [200] * 20 + [429] * 5
            # prysmai doctor names the store (masked) and how far behind its outbox is, once the
            # writer has put B's traces there (answered is not yet in the outbox).
            wait_for(lambda: health(b.base)["store"]["outbox_backlog"] == 25, 20, "B's backlog was not counted")
            _, out, err = doctor("--json", PRYSM_API_KEY=ADMIN, PRYSM_BASE_URL=b.base, OPENAI_API_KEY="sk-app")
            store = by_name(out)["trace store"]
            assert store["status"] == "warning", out + err
            assert store["detail"].startswith("PostgreSQL postgresql://***@127.0.0.1:")
            assert "outbox: 25 trace(s) waiting, the oldest " in store["detail"]  # 429s are traces too
            assert PASSWORD not in out + err
            server.start()
            for base in (a.base, b.base):
                wait_for(lambda base=base: health(base)["status"] == "ok", 30, "not shared again")
            time.sleep(1.5)  # an exchange or two: each sees the other's minute again
            assert paced([a.base], 3, per_second=10) == [429] * 3  # 35 in the minute: over 20
        finally:
            logs = a.stop() + b.stop()
        assert logs.count("cannot share limits and log-ins") == 2  # once per replica, not per try
        assert logs.count("shared with the other replicas again") == 2
    finally:
        server.close()
