"""The writer's journal (store/journal.py): every exchange handed to the writer is on disk until it
is stored, so a proxy killed with SIGKILL loses no trace -- the next start stores what it held."""

from __future__ import annotations

import os
import signal
import stat
import time
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from prysmai._proxy.store.capture import fallback_row, finalize
from prysmai._proxy.store.journal import Journal
from prysmai._proxy.store.sqlite import SQLiteEngine
from prysmai._proxy.store.writer import TraceWriter
from prysmai._proxy.store.writerproc import FIELDS

from ..conftest import KEY, FakeUpstream, Proxy
from .test_writer_process import PRICES, _exchanges, _stored

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _fields(ex: Any) -> tuple[Any, ...]:
    return tuple(getattr(ex, f) for f in FIELDS)


def test_what_is_appended_and_not_done_is_recovered_field_for_field(tmp_path: Any) -> None:
    exchanges = _exchanges()
    journal = Journal(str(tmp_path / "j"))
    assert journal.recover() == []
    for ex in exchanges:
        journal.append(ex)
    assert journal.failed == 0
    # The process dies here: no done(), no close().
    again = Journal(str(tmp_path / "j"))
    found = again.recover()
    assert [_fields(ex) for ex in found] == [_fields(ex) for ex in exchanges]
    assert [ex.provider_prices for ex in found] == [ex.provider_prices for ex in exchanges]
    assert [ex.policy for ex in found] == [ex.policy for ex in exchanges]
    # Private: the directory 0700, each segment 0600.
    assert stat.S_IMODE(os.stat(tmp_path / "j").st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(tmp_path / "j" / n).st_mode) == 0o600 for n in os.listdir(tmp_path / "j"))
    again.forget_recovered()
    assert os.listdir(tmp_path / "j") == []


def test_a_segment_cut_short_by_a_kill_yields_what_came_before_the_cut(tmp_path: Any) -> None:
    exchanges = _exchanges()[:10]
    journal = Journal(str(tmp_path / "j"))
    journal.recover()
    for ex in exchanges:
        journal.append(ex)
    (name,) = os.listdir(tmp_path / "j")
    path = tmp_path / "j" / name
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last append only partly written
    found = Journal(str(tmp_path / "j")).recover()
    assert [ex.id for ex in found] == [ex.id for ex in exchanges[:9]]


@given(steps=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=12))
@settings(max_examples=40, deadline=None)
def test_every_exchange_not_yet_done_is_recovered(tmp_path_factory: Any, steps: list[tuple[int, int]]) -> None:
    """Appends and done() in any interleaving, segments rotating by size and age: a journal read
    back holds every exchange not done yet (and perhaps some done ones, which the store already
    has: recovery skips those by id), in order."""
    import prysmai._proxy.store.journal as module

    directory = str(tmp_path_factory.mktemp("j"))
    saved = module.SEGMENT_BYTES, module.SEGMENT_SECONDS
    module.SEGMENT_BYTES, module.SEGMENT_SECONDS = 20_000, 0.0  # many segments
    try:
        source = _exchanges()
        journal = Journal(directory)
        journal.recover()
        appended: list[str] = []
        done = 0
        for add, finish in steps:
            for _ in range(add):
                ex = source[len(appended) % len(source)]
                ex.id = f"x{len(appended):05d}"
                journal.append(ex)
                appended.append(ex.id)
            finish = min(finish, len(appended) - done)
            journal.done(finish)
            done += finish
        found = [ex.id for ex in Journal(directory).recover()]
        assert found == appended[len(appended) - len(found) :]  # a suffix, in order
        assert set(appended[done:]) <= set(found)
    finally:
        module.SEGMENT_BYTES, module.SEGMENT_SECONDS = saved


def test_a_writer_stores_what_an_earlier_run_journaled_once(tmp_path: Any) -> None:
    """A writer killed before its batch was stored: the next writer on the same store stores the
    journaled exchanges it does not have, and none twice."""
    path = str(tmp_path / "t.db")
    exchanges = _exchanges()
    first = TraceWriter(SQLiteEngine(path), lambda ex: finalize(ex, PRICES), fallback=fallback_row)
    first.open()
    for ex in exchanges[:15]:
        first.submit(ex)
    first.close()  # these 15 are stored
    journal = Journal(path + ".journal")
    journal.recover()
    for ex in exchanges:  # all 40 journaled, as a run that died before storing the last 25 leaves them
        journal.append(ex)
    second = TraceWriter(
        SQLiteEngine(path), lambda ex: finalize(ex, PRICES), fallback=fallback_row, journal=Journal(path + ".journal")
    )
    second.open()
    second.close()
    rows = _stored(path)
    assert sorted(r["id"] for r in rows) == sorted(ex.id for ex in exchanges)
    assert second.written == 25
    assert os.listdir(path + ".journal") == []  # a clean stop leaves no journal


def test_a_proxy_killed_with_sigkill_loses_no_trace(tmp_path: Any, fake: FakeUpstream) -> None:
    """Answered, then SIGKILL at once (the writer's batch still in memory); started again on the
    same store, every answered request has exactly one trace. The provider key a client pasted
    into a prompt never reaches the journal on disk."""
    db = str(tmp_path / "t.db")
    secret = "sk-upstream-journal-0123456789abcdef"
    answered: list[str] = []
    for _round in range(3):
        proxy = Proxy("--db", db, "--upstream", fake.url, "--key", KEY, OPENAI_API_KEY=secret).start()
        with httpx.Client(base_url=proxy.base, headers=AUTH, timeout=30) as client:
            for i in range(12):
                body = {**CHAT, "stream": bool(i % 3 == 0), "messages": [{"role": "user", "content": f"key {secret}"}]}
                r = client.post("/chat/completions", json=body)
                assert r.status_code == 200
                answered.append(r.headers["x-prysm-trace-id"])
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.proc.wait(10)
        for name in os.listdir(db + ".journal"):
            with open(os.path.join(db + ".journal", name), "rb") as f:
                assert secret.encode() not in f.read()
    time.sleep(0.5)  # a writer process the killed proxy left may still be finishing
    before = {r["id"] for r in _stored(db)}
    proxy = Proxy("--db", db, "--upstream", fake.url, "--key", KEY).start()
    assert httpx.get(f"{proxy.base}/health", headers=AUTH, timeout=30).status_code == 200  # started: journal read
    log = proxy.stop()
    if set(answered) - before:  # (a killed proxy's writer process may have stored them all itself)
        assert "trace journal: " in log and "stored now" in log
    rows = _stored(db)
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(answered) and len(set(ids)) == len(ids)
    assert not any(secret in (r["request_body"] or "") for r in rows)
