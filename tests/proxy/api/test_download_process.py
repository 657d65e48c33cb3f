"""An export's chunks read by a process of its own (:mod:`prysmai._proxy.api.downloadproc`): a
real ``prysmai proxy`` over a store of 50 000 traces (100 chunks), real clients on loopback, real
faults -- a client that leaves, a child killed or stopped, a proxy told to stop -- and the bound
on concurrent exports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from prysmai._proxy.store import QueryTimeout
from prysmai._proxy.store.sqlite import SQLiteEngine

from ..conftest import KEY, PRYSMAI, FakeUpstream, Proxy, cli_env
from .test_download import fill, make_rows

AUTH = {"Authorization": f"Bearer {KEY}"}
ROWS = 50_000
SCHED_IDLE = 5


def children(pid: int) -> list[int]:
    """The export processes ``pid`` has now (by their command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        if ppid == pid and b"# prysmai download" in cmdline:
            found.append(int(entry))
    return found


def scheduling(pid: int) -> tuple[int, int]:
    """(nice value, scheduling policy) of ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[16]), int(fields[38])


def schedulings(pid: int) -> list[tuple[int, int]]:
    """(nice value, scheduling policy) of each of ``pid``'s export children."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            found.append(scheduling(child))
    return found


def _policy(pid: int) -> int | None:
    try:
        return scheduling(pid)[1]
    except OSError:
        return None


def open_pipes(pid: int) -> int:
    """The pipes ``pid`` holds open (an export's child is spoken to through pipes)."""
    pipes = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            pipes += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    return pipes


def wait_for(check: Callable[[], Any], timeout: float = 20.0, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def gone(pid: int) -> bool:
    """``pid`` has exited and been reaped (not a zombie left behind)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: Any) -> str:
    path = str(tmp_path_factory.mktemp("exportproc") / "traces.db")
    fill(path, make_rows(ROWS))
    return path


@pytest.fixture
def run_proxy(fake: FakeUpstream, tmp_path: Any) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(db: str, *args: str) -> Proxy:
        proxy = Proxy("--db", db, "--upstream", fake.url, "--key", KEY, *args)
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


class Stalled:
    """An export whose client read its first bytes and then reads no more (a small receive
    buffer: the proxy, and its child, soon wait for it)."""

    def __init__(self, sock: socket.socket, received: bytes) -> None:
        self.sock = sock
        self.received = received

    def rest(self) -> tuple[bytes, bool]:
        """Read to the end: (the body, de-chunked; whether it ended as a whole chunked body)."""
        self.sock.settimeout(60)
        raw = self.received
        with contextlib.suppress(OSError):
            while not raw.endswith(b"\r\n0\r\n\r\n") and (part := self.sock.recv(1 << 20)):
                raw += part
        return dechunk(raw.split(b"\r\n\r\n", 1)[1])


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    body = b""
    while True:
        size_end = raw.find(b"\r\n")
        if size_end < 0:
            return body, False
        size = int(raw[:size_end], 16)
        if size == 0:
            return body, raw[size_end:] == b"\r\n\r\n"
        chunk = raw[size_end + 2 : size_end + 2 + size]
        if len(chunk) < size:
            return body + chunk, False
        body += chunk
        raw = raw[size_end + 4 + size :]


@contextlib.contextmanager
def stalled_export(proxy: Proxy, query: str = "format=csv&fields=all") -> Iterator[Stalled]:
    port = int(proxy.base.split(":")[2].split("/")[0])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /api/v1/traces?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        received = sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200"), received
        yield Stalled(sock, received)


def test_an_export_is_read_by_an_idle_child_that_holds_the_store_read_only(
    store: str, run_proxy: Callable[..., Proxy]
) -> None:
    proxy = run_proxy(store)
    with stalled_export(proxy):
        # (On a host with no spare core, the idle child may meanwhile be replaced by one at nice 19:
        # any of its children will do.)
        wait_for(lambda: SCHED_IDLE in [policy for _, policy in schedulings(proxy.proc.pid)])
        # Its own connection to the store, opened read-only (the proxy's writer holds the other).
        flags = wait_for(lambda: _store_flags(proxy.proc.pid, store))
        assert all(flag & os.O_ACCMODE == os.O_RDONLY for flag in flags), flags
    # Every row, the same bytes as the CLI reads in its own process.
    api = httpx.get(f"{proxy.base}/traces", params={"format": "jsonl"}, headers=AUTH, timeout=120)
    cli = subprocess.run(
        [*PRYSMAI, "traces", "--db", store, "--all", "--format", "jsonl"],
        capture_output=True,
        env=cli_env(),
        timeout=120,
    )
    assert api.status_code == 200 and cli.returncode == 0
    assert api.content == cli.stdout and api.content.count(b"\n") == ROWS


def _store_flags(pid: int, path: str) -> list[int]:
    """The open flags of the store's file in ``pid``'s export children."""
    flags = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{child}/fd"):
                if os.readlink(f"/proc/{child}/fd/{fd}") == os.path.realpath(path):
                    with open(f"/proc/{child}/fdinfo/{fd}") as fh:
                        flags.append(int(next(line for line in fh if line.startswith("flags:")).split()[1], 8))
    return flags


def test_a_client_that_leaves_ends_the_child_and_leaks_no_descriptor(
    store: str, run_proxy: Callable[..., Proxy]
) -> None:
    proxy = run_proxy(store, "--export-priority", "low")  # (never replaced: one child per export)
    httpx.get(f"{proxy.base}/traces", params={"format": "csv", "limit": "600"}, headers=AUTH)  # (warm: a child ran)
    wait_for(lambda: not children(proxy.proc.pid))
    before = open_pipes(proxy.proc.pid)
    for _ in range(3):
        with stalled_export(proxy):
            (child,) = wait_for(lambda: children(proxy.proc.pid))
        # Closed: the child is killed and reaped, its pipes closed.
        wait_for(lambda: gone(child), timeout=10)  # noqa: B023 (called at once)
    wait_for(lambda: open_pipes(proxy.proc.pid) <= before, timeout=10)
    assert httpx.get(f"{proxy.base}/traces", params={"limit": "1"}, headers=AUTH).status_code == 200


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_child_killed_mid_export_cuts_the_download_off_and_logs_once(
    engine: str, store: str, run_proxy: Callable[..., Proxy], request: Any, tmp_path: Any
) -> None:
    db, rows = store, ROWS
    args: tuple[str, ...] = ()
    if engine == "postgres":
        db, rows = _postgres_copy(request.getfixturevalue("pg_url"), 20_000), 20_000
        args = ("--outbox", str(tmp_path / "outbox.db"))
    proxy = run_proxy(db, "--export-priority", "low", *args)  # (never replaced: the one killed is the one)
    with stalled_export(proxy, "format=jsonl&fields=all") as export:
        (child,) = wait_for(lambda: children(proxy.proc.pid))
        os.kill(child, signal.SIGKILL)
        body, whole = export.rest()
    assert not whole  # never a clean end of a short file
    assert 0 < body.count(b"\n") < rows
    # The proxy goes on: the next export is whole.
    again = httpx.get(f"{proxy.base}/traces", params={"format": "jsonl", "limit": "1200"}, headers=AUTH, timeout=60)
    assert again.status_code == 200 and again.content.count(b"\n") == 1200
    log = proxy.stop()
    assert log.count("an export stopped after part of its rows: its process exited (code -9)") == 1, log


def _postgres_copy(url: str, n: int) -> str:
    from prysmai._proxy.store.postgres.engine import PostgresEngine
    from prysmai._proxy.store.rows import COLUMNS

    engine = PostgresEngine(url)
    conn = engine.open_for_writing()
    engine.insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in make_rows(n, seed=5)])
    conn.close()
    return url


def test_a_starved_idle_child_is_replaced_at_low_priority_and_the_file_is_whole(
    store: str, run_proxy: Callable[..., Proxy]
) -> None:
    """A child that gets no CPU (stopped: SIGSTOP) is replaced by one at nice 19 that goes on from
    the last chunk sent: no row lost or repeated."""
    proxy = run_proxy(store)
    # The first 8 000 rows of the CLI's export, read in its own process (the same bytes: another test).
    cli = subprocess.run(
        [*PRYSMAI, "traces", "--db", store, "--all", "--format", "csv"], capture_output=True, env=cli_env(), timeout=120
    )
    expected = b"".join(line + b"\r\n" for line in cli.stdout.split(b"\r\n")[: 8_000 + 1])
    with stalled_export(proxy, "format=csv&limit=8000") as export:
        (first,) = wait_for(lambda: [c for c in children(proxy.proc.pid) if _policy(c) == SCHED_IDLE], poll=0.005)
        os.kill(first, signal.SIGSTOP)
        second = wait_for(lambda: [pid for pid in children(proxy.proc.pid) if pid != first])[0]
        wait_for(lambda: scheduling(second) == (19, 0))  # nice 19, SCHED_OTHER
        body, whole = export.rest()
    assert whole and body == expected
    wait_for(lambda: gone(first), timeout=10)
    assert "going on at priority low" in proxy.stop()


def test_exports_beyond_the_bound_are_refused_with_429_and_retry_after(
    store: str, run_proxy: Callable[..., Proxy]
) -> None:
    proxy = run_proxy(store, "--max-exports", "1")
    # A refused parameter ends its admission too.
    for _ in range(2):
        assert (
            httpx.get(f"{proxy.base}/traces", params={"format": "csv", "fields": "x"}, headers=AUTH).status_code == 400
        )
    with stalled_export(proxy):
        r = httpx.get(f"{proxy.base}/traces", params={"format": "jsonl"}, headers=AUTH)
        assert r.status_code == 429 and r.headers["retry-after"] == "10"
        error = r.json()["error"]
        assert error["code"] == "too_many_exports" and error["type"] == "rate_limit_error"
        assert "--max-exports" in error["message"]
        # A page of the list is not an export.
        assert httpx.get(f"{proxy.base}/traces", params={"limit": "5"}, headers=AUTH).status_code == 200
    # The stalled one ended: the next is admitted (once the proxy has seen it leave).
    wait_for(
        lambda: (
            httpx.get(f"{proxy.base}/traces", params={"format": "jsonl", "limit": "3"}, headers=AUTH).status_code == 200
        )
    )


def test_stopping_the_proxy_ends_running_exports(store: str, run_proxy: Callable[..., Proxy]) -> None:
    proxy = run_proxy(store, "--export-priority", "low")
    with stalled_export(proxy) as export:
        (child,) = wait_for(lambda: children(proxy.proc.pid))
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.proc.wait(40)  # uvicorn's graceful shutdown (10 s), then the export is ended
        wait_for(lambda: gone(child), timeout=10)
        body, whole = export.rest()
    assert not whole and body  # cut off, not a whole file


def test_a_child_counts_a_sqlite_reads_time_limit_in_its_own_cpu_time(tmp_path: Any) -> None:
    """A read whose process waits (here: sleeps, as a starved one waits for a core) is not stopped
    by a limit counted on the process's CPU time; on the wall clock it is."""
    path = str(tmp_path / "t.db")
    fill(path, make_rows(10))
    engine = SQLiteEngine(path)
    sql = "WITH RECURSIVE n(i) AS (SELECT nap() UNION ALL SELECT i + 1 FROM n WHERE i < 200000) SELECT count(*) FROM n"

    def run() -> int:
        conn = engine.read_connection()
        assert isinstance(conn, sqlite3.Connection)
        conn.create_function("nap", 0, lambda: time.sleep(0.4) or 0)
        try:
            with engine.time_limited(conn, 0.3):
                return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()

    with pytest.raises(QueryTimeout):
        run()
    engine.clock = time.process_time
    assert run() == 200_001


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_child_that_dies_before_its_job_reaches_it_cuts_the_download_off(loop: str, monkeypatch: Any) -> None:
    """Killed at once (before the proxy wrote its job to its input): the download is cut off with
    the child's exit, as a child killed later is, never an internal error."""
    import asyncio

    from prysmai._proxy.api import downloadproc
    from prysmai._proxy.api.download import CutOff, Plan
    from prysmai._proxy.store import TraceFilter

    spawn = asyncio.create_subprocess_exec

    async def dead_at_once(*args: Any, **kwargs: Any) -> Any:
        proc = await spawn(*args, **kwargs)
        proc.kill()
        await proc.wait()
        for _ in range(5):  # (the loop closes the exited child's pipes)
            await asyncio.sleep(0.01)
        return proc

    monkeypatch.setattr(downloadproc.asyncio, "create_subprocess_exec", dead_at_once)

    async def export() -> str:
        exports = downloadproc.Exports("unused.db", time_limit=None)
        relay = exports.relay(TraceFilter(), Plan("jsonl"), None, 0)
        try:
            with pytest.raises(CutOff) as cut:
                await relay.next()
        finally:
            relay.close()
        return str(cut.value)

    if loop == "uvloop":
        import uvloop

        reason = uvloop.run(export())
    else:
        reason = asyncio.run(export())
    assert reason == "its process exited (code -9) after 0 row(s)"
