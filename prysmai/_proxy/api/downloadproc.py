"""An export's chunks read and encoded by a process of its own; the proxy only relays the bytes.

Why a process: reading a chunk of traces and encoding it as CSV or JSON Lines is Python, and
Python in a thread of the proxy shares the one GIL and the proxy's share of the CPU with the event
loop that forwards requests: an export running beside them lengthened the proxied tail
(bench/README.md, "Export"). Here the proxy reads the first chunk itself (:meth:`.download.Download.start`:
a bad parameter is still a JSON error, and a download that fits in one chunk needs no process),
then starts a child for the rest. The child opens its own read-only connection to the store (never
its write side), reads chunk after chunk with the same query and encoder as the proxy would (the
same bytes), each read in one read transaction under the store's time limit, and writes each
encoded chunk to a pipe. The event loop reads the pipe without blocking and hands the bytes to the
client; the pipe's and the client's flow control keep one chunk or two in memory.

CPU priority (``--export-priority``, :func:`~..store.idle.set_priority`): ``idle`` by default, the
kernel's ``SCHED_IDLE``, so the child runs only on a core nothing else wants. Such a process gets
next to nothing on a host with no spare core, and an export that never ends is a hung one: a
child that has sent nothing for :data:`STARVED_AFTER` seconds while it ran for less than
:data:`~..store.writerproc.STARVED_SHARE` of them is killed, and the export goes on from its last
chunk sent in a new child at ``low`` priority (nice 19: a small share of the CPU, never none).
The child counts a SQLite read's time limit in its own CPU time (a starved process is not a slow
query); on PostgreSQL the database runs the query and its ``statement_timeout`` stands.

Ends: a client that leaves, or a proxy that stops (after uvicorn's graceful shutdown), kills the
child at once (:meth:`Relay.close`; it holds one read transaction at most, which its connection's
end rolls back). A child that fails a read or dies mid-export ends the answer without its last
chunk (:class:`~.download.CutOff`): the client sees an incomplete body, never a short file that
looks whole. At most ``max_running`` exports run at once (``--max-exports``); one more is
refused with ``429`` and ``Retry-After`` (:meth:`Exports.admit`).

Wire format: frames of :mod:`..store.writerproc` (a 4-byte length, a :mod:`marshal` payload of
basic types only). To the child, once: ``("export", location, filter, plan, cursor, shown,
time_limit, priority)``; from it: ``("ready",)`` once at its priority with its connection open
(the starvation watch starts then), ``("data", bytes, cursor, shown)`` per chunk, then ``("end",
shown)`` or ``("failed", reason)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import marshal
import os
import time

from ..asgi import HTTPError
from ..config.settings import DEFAULT_EXPORT_PRIORITY, DEFAULT_MAX_EXPORTS
from ..store import QueryTimeout, StoreError, TraceFilter, engine_for
from ..store.idle import set_priority
from ..store.sqlite import SQLiteEngine
from ..store.writerproc import (
    FRAME_HEADER,
    STARVED_SHARE,
    child_command,
    child_environment,
    child_output,
    cpu_seconds,
    frame,
    read_frame,
    write_frame,
)
from .download import CutOff, Encoder, Plan, read_rows

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("prysmai.proxy")

#: Seconds an export's child may send nothing before the proxy looks at whether it is starved.
STARVED_AFTER = 1.0
#: What a refused export is told to wait, in seconds.
RETRY_AFTER = 10


class Exports:
    """The proxy's exports of the store at ``location`` (its ``--db``: a SQLite file's path or a
    PostgreSQL URL): how many run, their processes. ``time_limit``: seconds each chunk's read may
    take (the store's read limit)."""

    def __init__(
        self,
        location: str,
        *,
        time_limit: float | None,
        max_running: int = DEFAULT_MAX_EXPORTS,
        priority: str = DEFAULT_EXPORT_PRIORITY,
    ) -> None:
        if max_running < 1:
            raise ValueError("max_running must be 1 or more")
        self.location = location
        self.time_limit = time_limit
        self.max_running = max_running
        self.priority = priority
        #: Exports admitted and not yet ended.
        self.running = 0
        self._relays: set[Relay] = set()
        self._reaping: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"Exports(running={self.running}/{self.max_running}, priority={self.priority})"

    def admit(self) -> None:
        """Count one more export, or refuse it (``429``) when ``max_running`` run already; the
        download's end calls :meth:`release`."""
        if self.running >= self.max_running:
            raise HTTPError(
                429,
                f"{self.running} export(s) are running on this proxy, the most it runs at once (--max-exports); "
                f"retry in {RETRY_AFTER} s, or narrow this one's filters so it ends sooner.",
                "too_many_exports",
                "rate_limit_error",
                headers=[(b"retry-after", str(RETRY_AFTER).encode())],
            )
        self.running += 1

    def release(self) -> None:
        self.running = max(0, self.running - 1)

    def relay(self, f: TraceFilter, plan: Plan, cursor: str | None, shown: int) -> Relay:
        """The rest of a download, after ``cursor`` when ``shown`` rows are out, read by a child."""
        relay = Relay(self, f, plan, cursor, shown)
        self._relays.add(relay)
        return relay

    def close(self) -> None:
        """Kill the processes of the exports still running (the proxy stops)."""
        for relay in list(self._relays):
            relay.close()

    def _closed(self, relay: Relay) -> None:
        self._relays.discard(relay)

    def _reap(self, proc: asyncio.subprocess.Process) -> None:
        """Read a killed child's output to its end (its pipe is closed then) and wait for its
        exit (no zombie), in the background."""
        task = asyncio.ensure_future(_drain(proc))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)


class Relay:
    """One download's chunks from its child process: :meth:`next` until ``None``; :meth:`close`
    (always) ends the child. Raises :class:`~.download.CutOff` when the child fails or is gone."""

    def __init__(self, exports: Exports, f: TraceFilter, plan: Plan, cursor: str | None, shown: int) -> None:
        self.exports = exports
        self.filter = f
        self.plan = plan
        #: Where the bytes relayed so far end: a new child starts here.
        self.cursor = cursor
        self.shown = shown
        self.priority = exports.priority
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: asyncio.Future[Any] | None = None
        self._ready = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def _spawn(self) -> None:
        env = child_environment(os.environ)
        # libpq's own settings (a password file, TLS): the child connects as the proxy does.
        env.update({k: v for k, v in os.environ.items() if k.startswith("PG")})
        try:
            proc = await asyncio.create_subprocess_exec(
                *child_command("download", "api.downloadproc"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:  # no usable interpreter (an embedding host, a broken install)
            raise CutOff(f"its process did not start ({exc})") from None
        self._proc = proc
        self._ready = False
        fields = {field.name: getattr(self.filter, field.name) for field in dataclasses.fields(self.filter)}
        plan = dataclasses.astuple(self.plan)
        job = ("export", self.exports.location, fields, plan, self.cursor, self.shown, self.exports.time_limit)
        assert proc.stdin is not None
        try:
            proc.stdin.write(frame(marshal.dumps((*job, self.priority))))
            proc.stdin.close()  # (one job: the child reads it and needs its input no more)
        except (RuntimeError, ConnectionError):
            # The child died before its job reached it (uvloop refuses a write to the closed pipe
            # of an exited child): the end of its output tells next() so, with its exit code.
            pass

    async def next(self) -> bytes | None:
        """The next chunk's bytes; ``None`` once the download is complete."""
        if self._closed:
            raise CutOff("it was ended (the proxy is stopping)")
        if self._proc is None:
            await self._spawn()
        cpu: float | None = None
        while True:
            proc = self._proc
            assert proc is not None and proc.stdout is not None
            if self._pending is None:
                self._pending = asyncio.ensure_future(_read(proc.stdout))
                # (Watched from its "ready" on: starting the interpreter is not starvation.)
                cpu = cpu_seconds(proc.pid) if self.priority == "idle" and self._ready else None
            pending = self._pending
            done, _ = await asyncio.wait({pending}, timeout=STARVED_AFTER if cpu is not None else None)
            if self._closed:  # (closed meanwhile: never a clean end)
                raise CutOff("it was ended (the proxy is stopping)")
            if not done:
                now = cpu_seconds(proc.pid)
                if cpu is not None and now is not None and now - cpu < STARVED_SHARE * STARVED_AFTER:
                    await self._restart_low(now - cpu)
                    cpu = None
                else:
                    cpu = now  # it runs: a long chunk, not starvation
                continue
            frame, self._pending = pending.result(), None
            if frame is None:
                code = proc.returncode
                if code is None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        code = await asyncio.wait_for(proc.wait(), 1.0)
                raise CutOff(f"its process exited (code {code}) after {self.shown} row(s)")
            if frame[0] == "ready":
                self._ready = True
                continue
            if frame[0] == "data":
                _, data, self.cursor, self.shown = frame
                return data  # type: ignore[no-any-return]
            if frame[0] == "end":
                return None
            raise CutOff(f"{frame[1]} (after {self.shown} row(s))")

    async def _restart_low(self, ran: float) -> None:
        """The idle child is starved: a new one at ``low`` priority goes on from the last chunk."""
        log.info(
            "an export's process ran %.0f ms of the last %.1f s (no spare CPU): going on at priority low",
            ran * 1000,
            STARVED_AFTER,
        )
        self._kill()
        self.priority = "low"
        await self._spawn()

    def _kill(self) -> None:
        """Kill the child without waiting for it (asyncio reaps it and closes its pipe once it has
        exited; a starved process may need a moment to get a core and exit)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self.exports._reap(proc)

    def close(self) -> None:
        """End the child (at once, if it still runs) and forget the relay."""
        self._closed = True
        self._kill()
        self.exports._closed(self)


async def _drain(proc: asyncio.subprocess.Process) -> None:
    if proc.stdout is not None:
        while await proc.stdout.read(1 << 16):
            pass
    await proc.wait()


async def _read(stream: asyncio.StreamReader) -> Any:
    """The next frame's message; ``None`` at the end of the child's output."""
    try:
        header = await stream.readexactly(FRAME_HEADER.size)
        return marshal.loads(await stream.readexactly(FRAME_HEADER.unpack(header)[0]))
    except asyncio.IncompleteReadError:
        return None


# -- the child ---------------------------------------------------------------------------------------
def main() -> None:
    """The child: read the job from standard input, write the chunks to standard output."""
    # Ended by the proxy (killed), or by its own output closing.
    out = child_output()
    job = read_frame(0)
    if job is None:
        return
    with contextlib.suppress(BrokenPipeError):  # the proxy is gone, or stopped reading: nobody to tell
        export(marshal.loads(job), out)


def export(job: tuple[Any, ...], out: int) -> None:
    """Read and encode every chunk of ``job`` after its cursor, each written to ``out`` as a frame."""
    _, location, fields, plan_values, cursor, shown, time_limit, priority = job
    set_priority(priority)
    try:
        engine = engine_for(location)
        if isinstance(engine, SQLiteEngine) and priority != "normal":
            engine.clock = time.process_time
        f = TraceFilter(**fields)
        plan = Plan(*plan_values)
        encoder = Encoder(plan)
        conn = engine.read_connection()
        write_frame(out, marshal.dumps(("ready",)))
        try:
            while plan.more(cursor, shown):
                with engine.time_limited(conn, time_limit):
                    rows, cursor = read_rows(conn, f, plan, cursor, shown)
                # Encoded after the read transaction: it holds the store's snapshot no longer.
                data = encoder.encode(rows)
                shown += len(rows)
                write_frame(out, marshal.dumps(("data", data, cursor, shown)))
        finally:
            with contextlib.suppress(Exception):
                conn.close()  # type: ignore[attr-defined]
    except (QueryTimeout, StoreError) as exc:
        write_frame(out, marshal.dumps(("failed", str(exc))))
        return
    except BrokenPipeError:
        raise
    except Exception as exc:  # a bug: the proxy logs it and cuts the answer off
        write_frame(out, marshal.dumps(("failed", f"{type(exc).__name__}: {str(exc)[:200]}")))
        return
    write_frame(out, marshal.dumps(("end", shown)))
