"""Scores on a PostgreSQL store go through the replica's outbox: with the database up they are
answered as on SQLite (201, 404, 400); with it down they are accepted (202, queued), survive a
restart of the proxy, and are applied in order -- after the traces written before them, deletes
included -- when the database is back: every score once."""

from __future__ import annotations

import time
from typing import Any

import httpx

from ..conftest import KEY, FakeUpstream, Proxy
from ..postgres import PostgresServer
from .test_postgres_proxy import AUTH, health, send, wait_for


def _score(base: str, trace_id: str, name: str, value: Any) -> httpx.Response:
    return httpx.post(f"{base}/traces/{trace_id}/scores", json={"name": name, "value": value}, headers=AUTH, timeout=30)


def _stored_scores(url: str) -> list[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute("SELECT score_id, trace_id, name FROM scores")]


def test_scores_wait_in_the_outbox_while_the_database_is_down_and_arrive_once(
    fake: FakeUpstream, tmp_path: Any
) -> None:
    server = PostgresServer().start()  # a server of this test's own: it is stopped mid-test
    outbox = str(tmp_path / "outbox.db")
    try:
        url = server.database()
        proxy = Proxy("--db", url, "--outbox", outbox, "--upstream", fake.url, "--key", KEY).start()
        try:
            traces = send(proxy.base, 6)
            # Up: the same answers as on a store of the proxy's own.
            first = _score(proxy.base, traces[0], "helpful", True)
            assert first.status_code == 201 and "status" not in first.json(), first.text
            assert _score(proxy.base, "0" * 32, "helpful", True).status_code == 404
            conflict = _score(proxy.base, traces[0], "helpful", "very")
            assert conflict.status_code == 400 and conflict.json()["error"]["param"] == "value"
            gone = _score(proxy.base, traces[1], "helpful", False).json()["id"]
            assert httpx.delete(f"{proxy.base}/scores/{gone}", headers=AUTH).status_code == 200
            assert httpx.delete(f"{proxy.base}/scores/{gone}", headers=AUTH).status_code == 404

            server.stop()  # down: scores are accepted, not refused with a 503
            late = send(proxy.base, 1)[0]  # a trace answered while the database is down
            queued = []
            for i, trace in enumerate([*traces[2:], late]):
                r = _score(proxy.base, trace, "quality", i)
                assert r.status_code == 202 and r.json()["status"] == "queued", r.text
                assert r.json()["trace_id"] == trace and r.json()["value"] == i
                queued.append(r.json()["id"])
            undone = _score(proxy.base, traces[2], "quality", 9).json()["id"]
            r = httpx.delete(f"{proxy.base}/scores/{undone}", headers=AUTH, timeout=30)
            assert r.status_code == 202 and r.json()["status"] == "queued"
            wait_for(lambda: health(proxy.base)["store"]["score_edits_waiting"] == 7, 20, "the edits were not counted")
        finally:
            proxy.stop()  # stopped with the edits queued: they wait in the outbox file
        proxy = Proxy("--db", url, "--outbox", outbox, "--upstream", fake.url, "--key", KEY).start()
        try:
            time.sleep(1)
            assert health(proxy.base)["store"]["score_edits_waiting"] == 7
            server.start()
            wait_for(
                lambda: (
                    (h := health(proxy.base))["store"]["score_edits_waiting"] == 0 and h["store"]["outbox_backlog"] == 0
                ),
                60,
                "the queued scores were not applied",
            )
            listed = httpx.get(f"{proxy.base}/traces/{late}", headers=AUTH).json()
            assert [s["value"] for s in listed["scores"]] == [4]
        finally:
            proxy.stop()
        stored = _stored_scores(url)
        ids = [score_id for score_id, _, _ in stored]
        assert len(ids) == len(set(ids)), "a score stored twice"
        assert sorted(ids) == sorted([first.json()["id"], *queued])  # the deleted ones are not there
        assert {(t, n) for _, t, n in stored} == {
            (traces[0], "helpful"),
            *((t, "quality") for t in [*traces[2:], late]),
        }
    finally:
        server.close()
