"""The trace writer: batches, drops, repairs, refusals, and yielding the GIL (store/writer.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest

from prysmai._proxy.config.pricing import PriceTable
from prysmai._proxy.store import StoreError, TraceFilter
from prysmai._proxy.store.queries import stats
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SCHEMA_VERSION, SQLiteEngine, insert_rows
from prysmai._proxy.store.writer import TraceWriter

PRICES = PriceTable.load()


# -- store ---------------------------------------------------------------------------------------
def _row(i: int, **kw: Any) -> dict[str, Any]:
    return {
        "id": f"{i:032x}",
        "created_at": 1000.0 + i,
        "method": "POST",
        "endpoint": "chat/completions",
        "model": "m",
        "stream": 0,
        "status": "success",
        "latency_ms": float(i),
        **kw,
    }


def test_store_writes_in_background_and_flushes_on_close(tmp_path: Any) -> None:
    path = str(tmp_path / "sub" / "t.db")
    store = TraceWriter(SQLiteEngine(path), lambda item: item, queue_size=1000)
    store.open()
    for i in range(1, 101):
        assert store.submit(_row(i, model="a" if i % 2 else "b", status="error" if i % 10 == 0 else "success"))
    store.close()
    assert store.written == 100 and store.dropped == 0
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    totals = stats(conn, TraceFilter())
    assert totals["requests"] == 100 and totals["errors"] == 10 and totals["error_rate"] == 0.1
    # Percentiles come from a histogram: within 3.2 % of the exact nearest-rank value (queries.py).
    assert totals["latency_p50_ms"] == pytest.approx(50.0, rel=0.033)
    assert totals["latency_p95_ms"] == pytest.approx(95.0, rel=0.033)
    assert totals["by_model"]["a"]["requests"] == 50 and totals["no_usage_requests"] == 100
    assert stats(conn, TraceFilter(since=1090.5))["requests"] == 10


def test_full_queue_drops_are_counted_and_logged(tmp_path: Any, caplog: Any) -> None:
    gate = threading.Event()

    def slow(item: Any) -> dict[str, Any]:
        gate.wait(10)
        return dict(item)

    store = TraceWriter(SQLiteEngine(str(tmp_path / "t.db")), slow, queue_size=2, when_behind="drop")
    store.open()
    results = [store.submit(_row(i)) for i in range(10)]
    assert results.count(False) >= 5 and store.dropped == results.count(False)
    assert store.counters()["dropped"] == store.dropped
    assert "dropped" in caplog.text
    gate.set()
    store.close()
    assert store.written == results.count(True)


def test_bad_row_does_not_lose_the_batch(tmp_path: Any) -> None:
    store = TraceWriter(SQLiteEngine(str(tmp_path / "t.db")), lambda item: item)
    store.open()
    store.submit(_row(1))
    store.submit({"id": "no-required-columns"})  # NOT NULL violations
    store.submit(_row(2))
    assert store.flush(10)
    store.close()
    assert (store.written, store.failed) == (2, 1)


def test_newer_schema_or_garbage_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        TraceWriter(SQLiteEngine(str(path)), dict).open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        TraceWriter(SQLiteEngine(str(garbage)), dict).open()


@pytest.mark.parametrize("n", [1, 3, 511, 513, 777])
def test_batches_of_any_size_are_written_exactly(tmp_path: Any, n: int) -> None:
    path = str(tmp_path / "t.db")
    store = TraceWriter(SQLiteEngine(path), lambda item: item)
    store.open()
    assert store._conn is not None
    assert insert_rows(store._conn, [tuple(_row(i).get(c) for c in COLUMNS) for i in range(n)]) == (n, 0, 0)
    store.close()
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    assert [r[0] for r in conn.execute("SELECT id FROM traces ORDER BY latency_ms")] == [
        _row(i)["id"] for i in range(n)
    ]


def test_writer_yields_the_gil_between_rows_once_its_slice_is_used(monkeypatch: Any, tmp_path: Any) -> None:
    from prysmai._proxy.store import writer as store_module

    yields = 0
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        nonlocal yields
        if seconds == 0 and threading.current_thread().name == "prysmai-trace-writer":
            yields += 1
        real_sleep(seconds)

    monkeypatch.setattr(store_module.time, "sleep", sleep)
    monkeypatch.setattr(store_module, "GIL_SLICE", 0.0)  # every row is a whole slice
    store = TraceWriter(SQLiteEngine(str(tmp_path / "t.db")), lambda item: item, queue_size=1000)
    store.open()
    for i in range(1, 41):
        store.submit(_row(i))
    store.close()
    assert store.written == 40 and yields == 40
