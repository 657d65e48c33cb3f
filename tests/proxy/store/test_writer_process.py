"""The trace writer process (``--trace-writer process``, the default): rows are built and inserted
by a child, exactly as the writer thread builds them; a child that dies is replaced, what it was
writing is counted as lost, nothing else is; budgets and the log still see what it did; a proxy
that is killed leaves no child behind. Real child processes, a real store."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import httpx
import pytest

from prysmai._proxy.config.pricing import Price, PriceTable
from prysmai._proxy.store.capture import Exchange, fallback_row, finalize
from prysmai._proxy.store.sqlite import SQLiteEngine
from prysmai._proxy.store.writer import TraceWriter
from prysmai._proxy.store.writerproc import WriterProcess

from ..conftest import KEY, FakeUpstream, Proxy, ProxyHandle, read_traces

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PRICES = PriceTable.load()


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


def test_a_child_killed_mid_batch_counts_that_batch_lost_and_the_next_is_written(
    proxy: ProxyHandle, caplog: Any
) -> None:
    store = proxy.app.store.writer
    pid = child_of(store)
    os.kill(pid, signal.SIGSTOP)  # the batch goes into its pipe, and the writer waits for an answer
    try:
        post(proxy, {**CHAT, "model": "in-the-dead-batch"})
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
    assert [t["model"] for t in traces] == ["gpt-4o-mini"]
    doc = health(proxy)
    assert doc["store"]["lost"] == 1 and doc["store"]["written"] == 1
    assert "1 trace(s) lost" in doc["reason"]
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
