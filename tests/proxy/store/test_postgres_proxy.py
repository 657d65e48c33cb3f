"""``prysmai proxy --db postgresql://…`` end to end against a real PostgreSQL server: every answered
request has exactly one trace there, through an outage of the database and a shutdown with a
backlog; the request path never waits on it."""

from __future__ import annotations

import time
from typing import Any

import httpx

from prysmai._proxy.store import Store, TraceFilter, queries

from ..conftest import KEY, FakeUpstream, Proxy
from ..postgres import PASSWORD, PostgresServer

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def send(base: str, n: int, *, stream_every: int = 3) -> list[str]:
    """``n`` calls (every ``stream_every``-th streamed), each answered 200; their trace ids."""
    ids = []
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        for i in range(n):
            body = {**CHAT, "stream": i % stream_every == 0}
            r = client.post("/chat/completions", json=body)
            assert r.status_code == 200, r.text
            if body["stream"]:
                assert r.text.rstrip().endswith("data: [DONE]")
            ids.append(r.headers["x-prysm-trace-id"])
    return ids


def stored_ids(url: str) -> list[str]:
    store = Store.existing(url, read_time_limit=None)
    assert store is not None
    with store:
        rows, _ = store.read_sync(queries.list_traces, TraceFilter(), limit=1000)
    return [r["id"] for r in rows]


def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def health(base: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/health", headers=AUTH, timeout=10).json())


def test_a_proxy_on_postgres_stores_each_answer_once_and_reads_it_back(
    pg_url: str, fake: FakeUpstream, tmp_path: Any
) -> None:
    proxy = Proxy("--db", pg_url, "--outbox", str(tmp_path / "outbox.db"), "--upstream", fake.url, "--key", KEY)
    proxy.start()
    try:
        ids = send(proxy.base, 12)
        listed = httpx.get(f"{proxy.base}/traces", params={"limit": "100"}, headers=AUTH).json()  # read your writes
        assert sorted(t["id"] for t in listed["data"]) == sorted(ids)
        one = httpx.get(f"{proxy.base}/traces/{ids[0]}", headers=AUTH).json()
        assert one["response_body"] and one["stream"] is True and one["ttft_ms"] is not None
        doc = health(proxy.base)
        assert doc["status"] == "ok" and doc["store"]["outbox_backlog"] == 0 and doc["store"]["shipped"] == 12
    finally:
        log = proxy.stop()
    assert PASSWORD not in log and "postgres:***@" in log  # the banner names the store, masked
    assert sorted(stored_ids(pg_url)) == sorted(ids)


def test_postgres_down_loses_nothing_and_the_proxy_keeps_answering(fake: FakeUpstream, tmp_path: Any) -> None:
    server = PostgresServer().start()  # a server of this test's own: it is stopped mid-test
    try:
        url = server.database()
        proxy = Proxy("--db", url, "--outbox", str(tmp_path / "outbox.db"), "--upstream", fake.url, "--key", KEY)
        proxy.start()
        try:
            before = send(proxy.base, 10)
            # Shipped, not merely absent from the outbox: a trace the writer has not put there yet
            # (its rows still being built) leaves the backlog at 0 too.
            wait_for(lambda: health(proxy.base)["store"]["shipped"] == 10, 20, "the first traces were not shipped")
            assert health(proxy.base)["store"]["outbox_backlog"] == 0
            server.stop()
            during = send(proxy.base, 25)  # answered while the database is down
            wait_for(lambda: health(proxy.base)["store"]["outbox_backlog"] == 25, 20, "the backlog was not counted")
            doc = health(proxy.base)
            assert doc["status"] == "degraded" and "outbox" in doc["reason"]
            r = httpx.get(f"{proxy.base}/traces", headers=AUTH, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
            assert PASSWORD not in r.text
            server.start()
            after = send(proxy.base, 5)
            wait_for(
                lambda: health(proxy.base)["store"]["shipped"] == 40, 60, "the outbox was not shipped after the outage"
            )
            doc = health(proxy.base)
            assert doc["status"] == "ok" and doc["store"]["outbox_backlog"] == 0
        finally:
            log = proxy.stop()
        assert log.count("cannot ship traces") == 1 and log.count("reachable again") == 1  # once, not per trace
        stored = stored_ids(url)
        assert len(stored) == len(set(stored)) == 40
        assert sorted(stored) == sorted(before + during + after)
    finally:
        server.close()


def test_a_backlog_left_at_shutdown_is_shipped_by_the_next_start(fake: FakeUpstream, tmp_path: Any) -> None:
    server = PostgresServer().start()
    try:
        url = server.database()
        outbox = str(tmp_path / "outbox.db")
        args = ("--db", url, "--outbox", outbox, "--upstream", fake.url, "--key", KEY)
        first = Proxy(*args).start()
        first_ids = send(first.base, 3)
        wait_for(lambda: health(first.base)["store"]["outbox_backlog"] == 0, 20, "not shipped")
        server.stop()
        waiting = send(first.base, 8)
        log = first.stop()
        assert first.proc.returncode == 0 and "cannot ship traces" in log
        server.start()
        second = Proxy(*args).start()
        try:
            wait_for(lambda: health(second.base)["store"]["outbox_backlog"] == 0, 60, "the backlog was not shipped")
        finally:
            second.stop()
        stored = stored_ids(url)
        assert sorted(stored) == sorted(first_ids + waiting) and len(stored) == len(set(stored))
    finally:
        server.close()


def test_a_wrong_password_stops_the_start_but_an_unreachable_database_does_not(
    pg_url: str, fake: FakeUpstream, tmp_path: Any
) -> None:
    wrong = pg_url.replace(PASSWORD, "wrong-password")
    refused = Proxy("--db", wrong, "--outbox", str(tmp_path / "a.db"), "--upstream", fake.url, "--key", KEY)
    refused.proc.wait(60)
    log = refused.stop()
    assert refused.proc.returncode == 1 and "password" in log and "wrong-password" not in log
    closed = pg_url.rsplit("@", 1)[0] + "@127.0.0.1:1/x"  # nothing listens on port 1
    proxy = Proxy("--db", closed, "--outbox", str(tmp_path / "b.db"), "--upstream", fake.url, "--key", KEY).start()
    try:
        assert len(send(proxy.base, 2)) == 2
        wait_for(lambda: health(proxy.base)["status"] == "degraded", 20, "not degraded")
    finally:
        log = proxy.stop()
    assert "starting anyway" in log and PASSWORD not in log
