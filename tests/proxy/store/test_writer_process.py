"""The trace writer process (``--trace-writer process``, the default): rows are built and stored by
a child at the lowest CPU priority, exactly as the writer thread builds and stores them; a child
that dies, starves or is stopped (in its transaction too) is replaced and its batch stored by the
proxy, nothing lost or stored twice; budgets and the log still see what it did; a proxy that is
killed leaves no child behind. Real child processes, a real store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.config.policy import REDACTION_SETS, StoragePolicy
from prysmai._proxy.config.pricing import Price, PriceTable
from prysmai._proxy.store.capture import Exchange, fallback_row, finalize
from prysmai._proxy.store.outbox import OutboxEngine
from prysmai._proxy.store.rows import COLUMNS, build_rows
from prysmai._proxy.store.sqlite import SQLiteEngine
from prysmai._proxy.store.writer import TraceWriter
from prysmai._proxy.store.writerproc import WriterProcess

from ..conftest import KEY, FakeUpstream, Proxy, ProxyHandle, read_traces

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PRICES = PriceTable.load()


@pytest.fixture(autouse=True)
def patient(monkeypatch: Any) -> None:
    """The proxy waits for its idle child as long as it takes, unless a test says otherwise: on a
    loaded test machine such a child may starve at any time (and the proxy then rightly builds
    the batch itself), which is not what most tests here look at."""
    from prysmai._proxy.store import writer

    monkeypatch.setattr(writer, "STARVED_AFTER", 60.0, raising=False)  # (raising: run on older code too)


def post(proxy: ProxyHandle, body: Any = CHAT, headers: dict[str, str] | None = None) -> httpx.Response:
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers={**AUTH, **(headers or {})}, timeout=30)
    r.raise_for_status()
    return r


def health(proxy: ProxyHandle) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{proxy.base_url}/health", headers=AUTH).json()
    return doc


def process_store(path: str, on_cost: Any = None) -> TraceWriter:
    """A store (not opened) whose rows a writer process builds with the shipped prices."""
    return TraceWriter(
        SQLiteEngine(path),
        lambda ex: finalize(ex, PRICES),
        fallback=fallback_row,
        process=WriterProcess(PRICES, lambda ex: finalize(ex, PRICES), on_cost=on_cost),
    )


def counting_store(engine: Any, spent: list[float]) -> TraceWriter:
    """A store (not opened) on ``engine`` whose writer process and writer thread each put every
    cost they count towards a budget in ``spent``: by the child's answer, or by the proxy's build
    as the proxy's finalize counts it (not when it was counted as the request was answered)."""

    def counting(ex: Exchange) -> dict[str, Any]:
        row = finalize(ex, PRICES)
        if not ex.spend_counted:
            spent.append(row.get("cost_usd") or 0.0)
        return row

    return TraceWriter(
        engine,
        counting,
        fallback=fallback_row,
        process=WriterProcess(PRICES, counting, on_cost=lambda _project, usd, _at: spent.append(usd)),
    )


def child_of(store: TraceWriter) -> int:
    process = store._process
    assert process is not None and process.pid is not None
    return process.pid


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            raw = fh.read()
    except OSError:
        return "gone"
    return raw[raw.rindex(")") + 2]


# -- in the proxy ----------------------------------------------------------------------------------
def test_rows_are_built_and_written_by_a_child_process(proxy: ProxyHandle) -> None:
    store = proxy.app.store.writer
    assert store.kind == "process"
    pid = child_of(store)
    assert pid != os.getpid() and _state(pid) in "RSD"
    r = post(proxy)
    (trace,) = proxy.traces()
    assert trace["id"] == r.headers["x-prysm-trace-id"]
    assert trace["total_tokens"] == 13 and trace["cost_usd"] and trace["cost_usd"] > 0


def test_a_child_killed_between_batches_is_replaced_and_no_trace_is_lost(proxy: ProxyHandle) -> None:
    store = proxy.app.store.writer
    post(proxy)
    assert store.flush(10)
    pid = child_of(store)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    for _ in range(3):
        post(proxy)
    assert len(proxy.traces()) == 4
    assert child_of(store) != pid
    doc = health(proxy)
    assert doc["store"]["lost"] == 0 and doc["store"]["writer_restarts"] == 1
    assert doc["status"] == "degraded" and "had exited" in doc["reason"] and "no trace lost" in doc["reason"]


def test_a_child_killed_mid_batch_loses_nothing_the_proxy_builds_its_batch(proxy: ProxyHandle, caplog: Any) -> None:
    store = proxy.app.store.writer
    pid = child_of(store)
    os.kill(pid, signal.SIGSTOP)  # the batch goes into its pipe, and the writer waits for an answer
    try:
        answered = post(proxy, {**CHAT, "model": "in-the-killed-batch"})
        deadline = time.monotonic() + 10
        while not store._batch:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.2)  # past the linger: sent
    finally:
        with caplog.at_level(logging.ERROR, logger="prysmai.proxy"):
            os.kill(pid, signal.SIGKILL)
            assert store.flush(10)
    post(proxy)
    traces = proxy.traces()
    assert sorted(t["model"] for t in traces) == ["gpt-4o-mini", "in-the-killed-batch"]  # each once
    assert answered.headers["x-prysm-trace-id"] in {t["id"] for t in traces}
    assert child_of(store) != pid  # a new child built the next batch
    doc = health(proxy)
    assert doc["store"]["lost"] == 0 and doc["store"]["written"] == 2
    assert doc["store"]["writer_restarts"] == 1 and doc["store"]["writer_fallbacks"] == 1
    assert "no trace lost" in doc["reason"]
    assert "trace writer process exited" in caplog.text


def test_the_monthly_spend_counts_what_the_child_costed(proxy: ProxyHandle) -> None:
    for _ in range(3):
        post(proxy)
    traces = proxy.traces()
    total = sum(t["cost_usd"] for t in traces)
    assert total > 0
    assert proxy.app.limits.spent("default") == pytest.approx(total)


def test_what_the_child_logs_is_logged_by_the_proxy(proxy: ProxyHandle, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="prysmai.proxy"):
        post(proxy, headers={"X-Prysm-Metadata": '{"k":"\\ud800"}'})  # stored repaired, with a warning
        (trace,) = proxy.traces()
    assert trace["metadata"] == {"k": "\ud800"}
    records = [r for r in caplog.records if "stored with repairs" in r.getMessage()]
    assert len(records) == 1 and trace["id"] in records[0].getMessage()
    assert records[0].levelno == logging.WARNING


def test_without_a_usable_interpreter_rows_are_built_on_a_thread(
    fake: FakeUpstream, start_proxy: Any, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with caplog.at_level(logging.WARNING, logger="prysmai.proxy"):
        proxy = start_proxy(fake.url)
    assert proxy.app.store.writer.kind == "thread"
    assert "building trace rows on a thread of the proxy instead" in caplog.text
    post(proxy)
    assert len(proxy.traces()) == 1


def test_the_child_imports_prysmai_not_the_working_directorys_modules(tmp_path: Any, monkeypatch: Any) -> None:
    folder = tmp_path / "some-project"
    folder.mkdir()
    (folder / "logging.py").write_text("raise SystemExit('the working directory was imported')\n")
    monkeypatch.chdir(folder)  # where the operator happened to start the proxy
    store = process_store(str(tmp_path / "t.db"))
    store.open()
    store.submit(Exchange("one", time.time(), 1.0, "POST", "chat/completions"))
    store.close()
    assert store.kind == "process" and store.written == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="reads a process's environment from /proc")
def test_the_child_holds_no_key(proxy: ProxyHandle, monkeypatch: Any) -> None:
    secret = "sk-upstream-" + "s3cr3t" * 4
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("PRYSM_PROXY_KEYS", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    store = proxy.app.store.writer
    old = child_of(store)
    os.kill(old, signal.SIGKILL)  # its replacement starts with the environment set above
    wait_gone(old)
    post(proxy)
    assert len(proxy.traces()) == 1
    with open(f"/proc/{child_of(store)}/environ", "rb") as fh:
        environ = fh.read()
    assert secret.encode() not in environ and KEY.encode() not in environ
    assert b"PATH=" in environ


# -- the child builds, the proxy inserts ----------------------------------------------------------------
LINUX_ONLY = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE") or not os.path.exists("/proc/self/fd"), reason="SCHED_IDLE and /proc are Linux's"
)


def _open_files(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def _write_lock_is_free(path: str) -> bool:
    conn = sqlite3.connect(path, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


class _CountingEngine(SQLiteEngine):
    """A SQLite store that counts the rows inserted through it in this process."""

    inserted = 0

    def insert_rows(self, conn: sqlite3.Connection, rows: Any) -> tuple[int, int, int]:
        type(self).inserted += len(rows)
        return super().insert_rows(conn, rows)


@LINUX_ONLY
def test_the_child_builds_and_stores_at_the_lowest_cpu_priority_and_the_proxy_inserts_nothing(tmp_path: Any) -> None:
    """A batch's insert is a burst of SQLite's CPU: in the proxy's process it took a core from the
    event loop (the sequential p99). The child, under SCHED_IDLE, holds the store open and
    inserts; the proxy's process inserts no row."""
    path = str(tmp_path / "t.db")
    _CountingEngine.inserted = 0
    store = TraceWriter(
        _CountingEngine(path),
        lambda ex: finalize(ex, PRICES),
        fallback=fallback_row,
        process=WriterProcess(PRICES, lambda ex: finalize(ex, PRICES)),
    )
    store.open()
    try:
        for ex in _exchanges():
            store.submit(ex)
        assert store.flush(30) and store.written == 40 and store.fallbacks == 0
        pid = child_of(store)
        deadline = time.monotonic() + 10
        while os.sched_getscheduler(pid) != os.SCHED_IDLE:  # it lowers itself once it said it is ready
            assert time.monotonic() < deadline, "the child did not go under SCHED_IDLE"
            time.sleep(0.01)
        assert path in _open_files(pid)
        assert _CountingEngine.inserted == 0
    finally:
        store.close()
    assert len(read_traces(path)) == 40


def _openai_shaped(n: int, prefix: str) -> list[Exchange]:
    """``n`` exchanges with bodies of a few KB (their insert takes the child a while)."""
    out = []
    for i in range(n):
        ex = Exchange(f"{prefix}{i:04d}", time.time(), 1.0, "POST", "chat/completions")
        ex.t_end = 1.2
        ex.project = "default"
        ex.model = "gpt-4o-mini"
        words = " ".join(f"word{i}-{k} lorem ipsum dolor" for k in range(150))
        ex.request_body = json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words}]}
        ).encode()
        ex.request_content_type = ex.response_content_type = "application/json"
        answer = {"id": f"r{i}", "model": "gpt-4o-mini", "choices": [{"message": {"content": words}}]}
        answer["usage"] = {"prompt_tokens": 300, "completion_tokens": 300, "total_tokens": 600}
        ex.response_body = json.dumps(answer).encode()
        ex.http_status, ex.status = 200, "success"
        out.append(ex)
    return out


@LINUX_ONLY
def test_a_child_stopped_inside_its_transaction_is_killed_and_its_batch_stored_once(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A child that gets no CPU while it holds the store's write lock (here: stopped in the middle
    of its insert) holds the traces up for STARVED_AFTER only: the proxy kills it, waits for it to
    exit (its transaction rolls back, the lock goes), and stores the whole batch itself, each
    trace once and its cost counted once; the lock is free again."""
    from prysmai._proxy.store import writer

    path = str(tmp_path / "t.db")
    spent: list[float] = []
    store = counting_store(SQLiteEngine(path), spent)
    store.open()
    expected: list[str] = []
    stopped = None
    monkeypatch.setattr(writer, "STARVED_AFTER", 0.25)  # as shipped
    try:
        # Caught inside its transaction: the write lock held, by the child (the proxy's thread
        # inserts nothing while a child stores). A child that commits before it is stopped, or
        # starves on a busy machine before it is caught, is let go and the next batch tried.
        for attempt in range(8):
            store._here_until = 0.0
            process = store._process
            assert process is not None
            if process.pid is None:
                assert process.ensure_running() is None
            child = child_of(store)
            batch = _openai_shaped(200, f"a{attempt}-")
            expected += [ex.id for ex in batch]
            before = store.starved
            for ex in batch:
                store.submit(ex)
            deadline = time.monotonic() + 30
            while _write_lock_is_free(path) and time.monotonic() < deadline:
                time.sleep(0.001)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
            if store.starved == before and not _write_lock_is_free(path):
                stopped = child
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
            assert store.flush(60)
        assert stopped is not None, "the child was never caught inside its transaction"
        starved = store.starved
        assert store.flush(60)
        assert store.starved == starved + 1
        assert store.written == len(expected) and (store.lost, store.failed) == (0, 0)
        assert _write_lock_is_free(path)
        wait_gone(stopped)
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
        store.close()
    rows = read_traces(path)
    assert sorted(t["id"] for t in rows) == sorted(expected)
    # Each trace's cost counted once: by a child's answer or by the proxy's build.
    assert len(spent) == len(expected)


def _outbox_rows(path: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    try:
        return [{"id": r[0], "cost_usd": r[1]} for r in conn.execute("SELECT id, cost_usd FROM outbox")]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("engine", "rows_of"), [(SQLiteEngine, read_traces), (OutboxEngine, _outbox_rows)], ids=["store", "outbox"]
)
def test_what_a_killed_child_had_committed_is_not_stored_again_and_its_cost_counts_once(
    tmp_path: Any, engine: Any, rows_of: Any
) -> None:
    """A child killed after its commit, before its answer: the writer thread stores only the
    batch's other traces, and counts the cost of those the child stored (its answer, which
    would have, never came). So in a SQLite store and in a PostgreSQL store's outbox."""
    spent: list[float] = []
    path = str(tmp_path / "t.db")
    store = counting_store(engine(path), spent)
    store.open()
    try:
        store.submit(_openai_shaped(1, "first")[0])  # stored by the child, into this engine's file
        assert store.flush(30) and store.written == 1 and store.fallbacks == 0
        batch = _openai_shaped(10, "c")
        batch[0].spend_counted = True  # counted by the proxy as it answered: not again
        committed, _, _ = build_rows(_openai_shaped(6, "c"), lambda ex: finalize(ex, PRICES), fallback_row)
        assert store.engine.insert_rows(store._conn, committed) == (6, 0, 0)
        process = store._process
        assert process is not None
        process.kill()
        assert store._take_over(process, batch) == (10, 0, 0)
    finally:
        store.close()
    rows = rows_of(path)
    assert sorted(t["id"] for t in rows) == sorted(["first0000", *(ex.id for ex in batch)])
    costs = {t["id"]: t["cost_usd"] for t in rows}
    assert all(costs.values())
    assert sorted(spent) == sorted(c for i, c in costs.items() if i != batch[0].id)


@LINUX_ONLY
def test_a_stopped_child_holds_nothing_up_and_nothing_is_lost_or_doubled(tmp_path: Any, monkeypatch: Any) -> None:
    """A child that gets no CPU (here: stopped between two batches, in no transaction) does not
    hold the traces or the store up: after STARVED_AFTER the proxy stores the batch itself, and so
    for CATCH_UP seconds; the store's write lock is free all along; then a new idle child stores
    again."""
    from prysmai._proxy.store import writer

    path = str(tmp_path / "t.db")
    store = process_store(path)
    store.open()
    try:
        store.submit(Exchange("before", time.time(), 1.0, "POST", "chat/completions"))
        assert store.flush(30)
        starved = child_of(store)
        monkeypatch.setattr(writer, "STARVED_AFTER", 0.25)  # as shipped
        os.kill(starved, signal.SIGSTOP)
        for i in range(30):
            store.submit(Exchange(f"t{i:02d}", time.time(), 1.0, "POST", "chat/completions"))
        deadline = time.monotonic() + 10
        while not store._batch:  # the batch is with the stopped child
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert _write_lock_is_free(path)
        assert store.flush(30) and store.written == 31 and store.starved == 1
        assert _write_lock_is_free(path)
        monkeypatch.setattr(writer, "STARVED_AFTER", 60.0)
        wait_gone(starved)  # killed, not waited for
        assert store._process is not None and store._process.pid is None
        store.submit(Exchange("catching-up", time.time(), 1.0, "POST", "chat/completions"))
        assert store.flush(30) and store.written == 32 and store._process.pid is None  # built here
        store._here_until = 0.0  # CATCH_UP has passed
        store.submit(Exchange("after", time.time(), 1.0, "POST", "chat/completions"))
        assert store.flush(30) and store.written == 33
        assert child_of(store) != starved
        assert (store.lost, store.failed, store.restarts, store.fallbacks) == (0, 0, 0, 2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(starved, signal.SIGKILL)
        store.close()
    ids = [t["id"] for t in read_traces(path)]
    assert sorted(ids) == sorted(["before", "catching-up", "after", *(f"t{i:02d}" for i in range(30))])


def test_a_child_killed_at_any_moment_of_a_batch_stores_each_trace_once_and_costs_it_once(tmp_path: Any) -> None:
    """Killed before it is sent its batch, while it builds, or after it answered: every trace is
    stored once, and its cost counted once (by the child's answer, or by the proxy's build)."""
    spent: list[float] = []
    store = counting_store(SQLiteEngine(str(tmp_path / "t.db")), spent)
    store.open()
    expected = []
    try:
        for batch in range(12):
            store._here_until = 0.0  # a child builds each batch (none is thought starved)
            store.submit(Exchange(f"w{batch}", time.time(), 1.0, "POST", "chat/completions"))
            expected.append(f"w{batch}")
            assert store.flush(30)
            process = store._process
            assert process is not None
            # On a busy host that batch may have found no child: killed as starved, or the last
            # one, killed below, only got a core to die on while building it. Start another.
            if process.pid is None:
                assert process.ensure_running() is None
            pid = child_of(store)
            for i, ex in enumerate(_exchanges()):
                ex.id = f"b{batch}-{i:02d}"
                expected.append(ex.id)
                store.submit(ex)
            time.sleep(0.005 * batch)  # from before the batch leaves the queue to after its answer
            os.kill(pid, signal.SIGKILL)
            assert store.flush(30)
        assert store.written == len(expected) and (store.lost, store.failed) == (0, 0)
        assert store.fallbacks >= 1
    finally:
        store.close()
    rows = read_traces(store.engine.location)
    assert sorted(t["id"] for t in rows) == sorted(expected)
    assert sum(spent) == pytest.approx(sum(t["cost_usd"] or 0 for t in rows)) and sum(spent) > 0


def test_a_child_that_cannot_be_started_again_leaves_its_batches_to_the_proxy(tmp_path: Any, monkeypatch: Any) -> None:
    store = process_store(str(tmp_path / "t.db"))
    store.open()
    try:
        store.submit(Exchange("first", time.time(), 1.0, "POST", "chat/completions"))
        assert store.flush(30)
        pid = child_of(store)
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
        store.submit(Exchange("second", time.time(), 1.0, "POST", "chat/completions"))
        assert store.flush(30) and store.written == 2 and store.fallbacks == 1
        monkeypatch.undo()
        store._here_until = 0.0
        store.submit(Exchange("third", time.time(), 1.0, "POST", "chat/completions"))
        assert store.flush(30) and store.written == 3 and child_of(store) != pid
        assert (store.lost, store.failed) == (0, 0)
    finally:
        store.close()
    assert sorted(t["id"] for t in read_traces(store.engine.location)) == ["first", "second", "third"]


# Captured exchanges as hostile as the proxy may see: any bytes, any text (unpaired surrogates
# too), streams cut anywhere, metadata, notes, provider prices, and every redaction setting.
_SECRETS = st.sampled_from(
    [
        "alice@example.com",
        "sk-proj-" + "A1b2" * 10,
        "4111 1111 1111 1111",
        "+1 415 555 0100",
        "192.168.1.20",
        "DE89 3704 0044 0532 0130 00",
        "T-1234",
    ]
)
_TEXT = st.lists(st.one_of(st.text(st.characters(blacklist_categories=()), max_size=20), _SECRETS), max_size=4).map(
    " ".join
)
_POLICIES = st.builds(
    StoragePolicy,
    capture=st.sampled_from(["full", "full", "metadata"]),
    redact=st.lists(st.sampled_from(REDACTION_SETS), unique=True).map(tuple),
    patterns=st.sampled_from([(), (("ticket", r"T-\d+"),)]),
    max_body_bytes=st.sampled_from([0, 40, 1 << 20]),
)


@st.composite
def _captured(draw: Any, n: int) -> Exchange:
    ex = Exchange(f"h{n:03d}", draw(st.floats(1e9, 2e9)), 50.0, "POST", "chat/completions")
    ex.t_end = draw(st.one_of(st.none(), st.floats(50.0, 60.0)))
    ex.model = draw(st.sampled_from(["gpt-4o-mini", "gpt-4o", "local-model", None]))
    content = draw(_TEXT)
    ex.request_body = draw(
        st.one_of(
            st.just(json.dumps({"model": ex.model, "messages": [{"role": "user", "content": content}]}).encode()),
            st.binary(max_size=60),
        )
    )
    ex.request_content_type = "application/json"
    ex.http_status = draw(st.sampled_from([200, 400, 429, None]))
    ex.status = draw(st.sampled_from(["success", "error", "cancelled", "timeout"]))
    ex.error = draw(st.one_of(st.none(), _TEXT))
    ex.user_id = draw(st.one_of(st.none(), _TEXT))
    ex.session_id = draw(st.one_of(st.none(), _TEXT))
    ex.metadata = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.one_of(_TEXT, st.integers()))))
    ex.notes = draw(st.lists(_TEXT, max_size=2))
    ex.project = draw(st.sampled_from(["default", "team-a"]))
    ex.provider = "openai"
    ex.provider_prices = draw(st.sampled_from([None, {"local-model": Price(0.0, 0.0)}]))
    ex.price_ref = draw(st.sampled_from([None, ("openai", None)]))
    ex.policy = draw(_POLICIES)
    answer = draw(_TEXT)
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)), "completion_tokens": draw(st.integers(0, 10**6))}
    if draw(st.booleans()):
        ex.stream = True
        ex.response_content_type = "text/event-stream"
        events = [
            {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": piece}}]}
            for piece in answer.split(" ")
        ] + [{"id": "c", "choices": [], "usage": usage}]
        raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)]) if b > a]
        ex.chunks = [(50.0 + k / 100, piece) for k, piece in enumerate(pieces)]
    else:
        ex.response_content_type = "application/json"
        doc = {"id": "r", "model": "gpt-4o-mini", "choices": [{"message": {"content": answer}}], "usage": usage}
        ex.response_body = draw(st.one_of(st.just(json.dumps(doc).encode()), st.binary(max_size=60)))
    return ex


@pytest.fixture(scope="module")
def builder() -> Iterator[tuple[WriterProcess, list[tuple[str, float, float]]]]:
    costs: list[tuple[str, float, float]] = []
    process = WriterProcess(PRICES, lambda ex: finalize(ex, PRICES), on_cost=lambda *c: costs.append(c))
    process.start()
    yield process, costs
    process.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_proxy_builds_the_rows_the_child_builds_field_for_field(
    builder: tuple[WriterProcess, list[tuple[str, float, float]]], data: Any
) -> None:
    """What the writer thread builds for a batch the child did not build is the very row the
    child would have built (redaction, previews, usage, cost), and costs the same."""
    process, child_costs = builder
    items = [data.draw(_captured(n)) for n in range(data.draw(st.integers(1, 6)))]
    child_costs.clear()
    there, repaired_there, unbuildable_there = process.build(list(items), None)
    here_costs: list[tuple[str, float, float]] = []

    def counted(ex: Exchange) -> dict[str, Any]:
        row = finalize(ex, PRICES)
        if row.get("cost_usd") and not ex.spend_counted:
            here_costs.append((ex.project, row["cost_usd"], ex.created_at))
        return row

    here, repaired_here, unbuildable_here = build_rows(items, counted, fallback_row)
    assert len(there) == len(items)
    for row_here, row_there in zip(here, there):
        assert dict(zip(COLUMNS, row_there)) == dict(zip(COLUMNS, row_here))
    assert (repaired_there, unbuildable_there) == (repaired_here, unbuildable_here)
    assert child_costs == here_costs


def test_trace_writer_must_be_process_or_thread() -> None:
    from prysmai._proxy.config.settings import ProxyConfig

    with pytest.raises(ValueError, match="trace_writer must be one of process, thread"):
        ProxyConfig(keys=[KEY], trace_writer="fork")


# -- the same rows as the writer thread ----------------------------------------------------------------
def _exchanges() -> list[Exchange]:
    """Exchanges that exercise every field the child gets: streams, bodies that are not UTF-8,
    text that is not valid Unicode, provider prices, metadata, notes and failures."""
    free = {"local-model": Price(0.0, 0.0)}
    own = {"gpt-4o-mini": Price(1.0, 2.0, 0.5)}
    chunk = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"hi \\u00e9"}}]}\n\n'
    )
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    body = json.dumps({"id": "r", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    out = []
    for i in range(40):
        ex = Exchange(f"t{i:03d}", 1_700_000_000.0 + i, 50.0, "POST", "chat/completions")
        ex.t_end = 50.0 + i / 100
        ex.model = ["gpt-4o-mini", "local-model", "m\ud800", None][i % 4]
        ex.request_body = [b'{"model":"gpt-4o-mini"}', b"\xff\xfe binary", b""][i % 3]
        ex.request_content_type = "application/json"
        ex.http_status = [200, 429, None][i % 3]
        ex.status = ["success", "error", "cancelled"][i % 3]
        ex.error = None if i % 3 == 0 else f"failure {i}"
        ex.user_id = f"user-{i % 5}" if i % 2 else None
        ex.session_id = "s\x1b[2J" if i % 7 == 0 else None
        ex.metadata = {"i": i, "nested": {"list": [1, 2.5, None, True]}, "text": "caf\u00e9"} if i % 2 else None
        ex.notes = ["a note"] if i % 5 == 0 else []
        ex.key_id = "k1"
        ex.project = ["default", "team-a"][i % 2]
        ex.provider = "openai"
        ex.provider_prices = [None, free, own][i % 3]
        ex.price_ref = ("openai", None) if i % 4 == 0 else None
        ex.sent_model = "gpt-4o-mini" if i % 6 == 0 else None
        ex.provider_request_id = f"req_{i}"
        if i % 2:
            ex.stream = True
            ex.response_content_type = "text/event-stream"
            ex.chunks = [(50.001 * (k + 1), chunk) for k in range(i % 9)] + [(51.0, usage), (51.1, b"data: [DONE]\n\n")]
        else:
            ex.response_content_type = "application/json"
            ex.response_body = body.encode()
        out.append(ex)
    return out


def _stored(path: str) -> list[dict[str, Any]]:
    conn = SQLiteEngine(path).open_existing()
    assert conn is not None
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM traces ORDER BY id")]
    finally:
        conn.close()


def test_the_child_stores_exactly_the_rows_the_writer_thread_stores(tmp_path: Any) -> None:
    here = TraceWriter(
        SQLiteEngine(str(tmp_path / "thread.db")), lambda ex: finalize(ex, PRICES), fallback=fallback_row
    )
    spent: list[tuple[str, float, float]] = []
    there = process_store(str(tmp_path / "process.db"), on_cost=lambda *c: spent.append(c))
    for store in (here, there):
        store.open()
        for ex in _exchanges():
            store.submit(ex)
        store.close()
    assert there.kind == "process"
    assert (here.written, here.repaired, here.failed) == (there.written, there.repaired, there.failed) == (40, 10, 0)
    rows_here, rows_there = _stored(here.engine.location), _stored(there.engine.location)
    assert len(rows_there) == 40 and rows_there == rows_here
    costed = {r["id"]: r for r in rows_there if r["cost_usd"]}
    assert {(p, c, t) for p, c, t in spent} == {(r["project"], r["cost_usd"], r["created_at"]) for r in costed.values()}


def test_an_exchange_the_pipe_cannot_carry_is_built_in_the_proxy(tmp_path: Any) -> None:
    deep: Any = "bottom"
    for _ in range(2500):  # deeper than marshal goes (2000), deeper than json.dumps goes
        deep = {"d": deep}
    ex = Exchange("deep", time.time(), 1.0, "POST", "chat/completions")
    ex.metadata = deep
    ok = Exchange("fine", time.time(), 1.0, "POST", "chat/completions")
    store = process_store(str(tmp_path / "t.db"))
    store.open()
    store.submit(ex)
    store.submit(ok)
    store.close()
    assert (store.written, store.repaired, store.failed, store.lost) == (2, 1, 0, 0)
    rows = {t["id"]: t for t in read_traces(store.engine.location)}
    assert rows["fine"]["notes"] is None
    assert "metadata could not be stored" in rows["deep"]["notes"]


# -- the process as an operator runs it ------------------------------------------------------------------
def _start(tmp_path: Any, upstream: str) -> Proxy:
    args = ("--key", KEY, "--upstream", upstream, "--db", str(tmp_path / "t.db"))
    return Proxy(*args, new_session=True, OPENAI_API_KEY="sk-upstream").start()


def _child(pid: int) -> int:
    """The one child process of ``pid`` (waiting for the proxy to have started it)."""
    deadline = time.monotonic() + 10
    while True:
        found: list[int] = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(p) for p in fh.read().split()]
        if found:
            (child,) = found
            return child
        assert time.monotonic() < deadline, "no writer process"
        time.sleep(0.02)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process tree from /proc (Linux)")
def test_sigterm_to_the_whole_group_still_writes_every_trace(tmp_path: Any, fake: FakeUpstream) -> None:
    proxy = _start(tmp_path, fake.url)
    try:
        child = _child(proxy.proc.pid)
        for _ in range(20):
            httpx.post(f"{proxy.base}/chat/completions", json=CHAT, headers=AUTH, timeout=30).raise_for_status()
        os.killpg(proxy.proc.pid, signal.SIGTERM)  # the child ignores it: the proxy stops it once flushed
        assert proxy.proc.wait(30) == 0
        wait_gone(child)
    finally:
        proxy.stop()
    assert len(read_traces(str(tmp_path / "t.db"))) == 20


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process tree from /proc (Linux)")
def test_a_killed_proxy_leaves_no_writer_process_behind(tmp_path: Any, fake: FakeUpstream) -> None:
    proxy = _start(tmp_path, fake.url)
    try:
        child = _child(proxy.proc.pid)
        httpx.post(f"{proxy.base}/chat/completions", json=CHAT, headers=AUTH, timeout=30).raise_for_status()
        proxy.proc.kill()
        proxy.proc.wait(10)
        wait_gone(child)  # its input closed with the proxy: it finished and exited
    finally:
        proxy.stop()
