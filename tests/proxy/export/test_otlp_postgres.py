"""OTLP export from a PostgreSQL store: each replica exports the traces it answered from its own
outbox, to the real protobuf-decoding receiver (tests/proxy/otlp.py), with a real PostgreSQL.
Two proxies on one database under load through a collector outage of 10 s: every answered
request is one span, none twice, and every trace is in the database. The export goes on while
the database is down, the shipping while the collector is down, and the outbox lets go of a row
only once both are past it."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest

from prysmai._proxy.store.outbox import OutboxEngine
from prysmai._proxy.store.rows import COLUMNS

from ..conftest import KEY, FakeUpstream, Proxy
from ..otlp import Receiver
from ..postgres import PostgresServer
from .test_otlp import UPSTREAM_ENV, _call, _health


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def _proxy(fake: FakeUpstream, url: str, outbox: str, endpoint: str) -> Proxy:
    args = ("--db", url, "--outbox", outbox, "--upstream", fake.url, "--key", KEY, "--otlp-endpoint", endpoint)
    return Proxy(*args, **UPSTREAM_ENV)


def _wait(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _stored_ids(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM traces")}


def _rows_in(outbox: str) -> int:
    with sqlite3.connect(outbox) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_two_proxies_on_one_database_export_each_trace_once_through_a_collector_outage(
    fake: FakeUpstream, receiver: Receiver, pg_url: str, tmp_path: Any
) -> None:
    proxies = [_proxy(fake, pg_url, str(tmp_path / f"outbox{n}.db"), receiver.url).start() for n in (1, 2)]
    ids: list[list[str]] = [[], []]
    stop = threading.Event()

    def load(n: int) -> None:
        while not stop.is_set():
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": len(ids[n]) % 3 == 0}
            status, headers, _ = _call(proxies[n].base, "chat/completions", body)
            assert status == 200
            ids[n].append(headers["x-prysm-trace-id"])
            time.sleep(0.01)

    threads = [threading.Thread(target=load, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        receiver.stop()  # the collector goes down mid-load ...
        down_at = sum(map(len, ids))
        time.sleep(10)
        for proxy in proxies:
            # (a failing export call retries inside OpenTelemetry's exporter for up to its timeout
            # before the export process reports the failure: on a loaded machine, after the 10 s)
            _wait(
                lambda p=proxy: (
                    (h := _health(p.base))["export"]["failing_since"] is not None and h["export"]["waiting"] > 0
                ),
                30,
                "the collector's outage was not reported",
            )
            assert _health(proxy.base)["store"]["outbox_backlog"] < 100, "shipping waits for the collector"
        receiver.start()  # ... and comes back on the same port
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert sum(map(len, ids)) > down_at + 100, "the load went on while the collector was down"
        answered = set(ids[0]) | set(ids[1])
        got = receiver.wait_for(answered, timeout=90)
        for n, proxy in enumerate(proxies):
            _wait(
                lambda p=proxy, n=n: (
                    (h := _health(p.base))["export"]["waiting"] == 0
                    and h["export"]["exported"] == len(ids[n])
                    and h["store"]["outbox_backlog"] == 0
                ),
                30,
                f"proxy {n + 1} did not report its export and shipping done: {_health(proxy.base)}",
            )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        logs = [proxy.stop() for proxy in proxies]
    assert set(got) == answered
    assert all(len(spans) == 1 for spans in got.values()), "a trace exported twice"
    assert len(receiver.spans) == len(answered)
    assert answered <= _stored_ids(pg_url)
    assert all("failing" in log for log in logs)  # the outage was said, once per proxy
    for n in (1, 2):  # shipped and exported: nothing is kept
        assert _rows_in(str(tmp_path / f"outbox{n}.db")) == 0


def test_the_export_goes_on_while_the_database_is_down(fake: FakeUpstream, receiver: Receiver, tmp_path: Any) -> None:
    server = PostgresServer().start()
    outbox = str(tmp_path / "outbox.db")
    try:
        url = server.database()
        proxy = _proxy(fake, url, outbox, receiver.url).start()
        try:
            server.stop()
            sent = [
                _call(proxy.base, "embeddings", {"model": "e", "input": str(i)})[1]["x-prysm-trace-id"]
                for i in range(20)
            ]
            got = receiver.wait_for(set(sent), timeout=30)  # exported, the database still down
            _wait(lambda: _health(proxy.base)["store"]["outbox_backlog"] == 20, 20, "the backlog was not counted")
            assert _rows_in(outbox) == 20  # kept: exported, not shipped
            server.start()
            _wait(lambda: _health(proxy.base)["store"]["outbox_backlog"] == 0, 60, "not shipped after the outage")
            _wait(lambda: _rows_in(outbox) == 0, 10, "shipped and exported rows were kept")
        finally:
            proxy.stop()
        assert set(got) == set(sent) and all(len(s) == 1 for s in got.values())
        assert set(sent) <= _stored_ids(url)
    finally:
        server.close()


def _row(i: int) -> tuple[Any, ...]:
    values: dict[str, Any] = {"id": f"t{i:04d}", "created_at": 1_700_000_000.0 + i, "endpoint": "embeddings"}
    return tuple(values.get(c) for c in COLUMNS)


def test_an_outbox_row_goes_once_both_the_shipper_and_the_export_are_past_it(tmp_path: Any) -> None:
    engine = OutboxEngine(str(tmp_path / "outbox.db"))
    conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, [_row(i) for i in range(3)])  # written before the export was on
        assert engine.set_export(conn, True) == 0
        engine.insert_rows(conn, [_row(i) for i in range(3, 10)])
        assert engine.backlog(conn) == 10 and engine.export_waiting(conn) == 7
        batch = engine.export_batch(conn, 0, 4)
        assert [row["id"] for _, row in batch if row is not None] == ["t0003", "t0004", "t0005", "t0006"]
        engine.export_done(conn, batch[-1][0])
        assert _count(conn) == 10  # exported, not shipped: kept
        shipped = engine.oldest(conn, 6)
        assert [r[1] for r in shipped] == [f"t{i:04d}" for i in range(6)]
        engine.shipped(conn, shipped[-1][0])
        assert _count(conn) == 4 and engine.backlog(conn) == 4  # t0006 (exported) and t0007-9 left
        assert [r[1] for r in engine.oldest(conn, 10)] == ["t0006", "t0007", "t0008", "t0009"]
        assert engine.export_waiting(conn) == 3
        conn.close()
        conn = engine.open_for_writing()  # positions survive a restart
        assert engine.export_waiting(conn) == 3 and engine.backlog(conn) == 4
        assert engine.set_export(conn, False) == 3  # off: what waited for the export is let go of
        engine.shipped(conn, engine.oldest(conn, 10)[-1][0])
        assert _count(conn) == 0
    finally:
        conn.close()


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
