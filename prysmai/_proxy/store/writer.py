"""The trace writer: a bounded queue the request path appends to, and one supervised thread that
writes it in batches.

The request path only calls :meth:`TraceWriter.submit`, which appends to an in-memory queue
(never blocks, never touches the disk). The writer thread drains the queue; each batch's captured
exchanges become rows (``finalize``, see :mod:`.capture`) stored in one transaction through the
store's engine: by a child process the thread hands them to (:mod:`.writerproc`, what ``prysmai
proxy`` does), or on the thread itself. A batch the child does not store in time (:mod:`.idle`)
or at all is stored by the thread, less the traces the child did commit. A full queue drops the trace,
counts it (``dropped``) and logs it at most every 10 seconds. :meth:`close` writes everything
pending before returning.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from .capture import scrub
from .idle import CATCH_UP, STARVED_AFTER
from .rows import build_rows
from .writerproc import WriterProcess, WriterProcessError, WriterStarved, store_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .engine import Engine
    from .journal import Journal

log = logging.getLogger("prysmai.proxy")

_STOP = object()
_BATCH = 512
_LINGER = 0.025
_DROP_LOG_INTERVAL = 10.0
#: How long the writer thread waits for a child it killed mid-batch to exit (it may hold the
#: store's write lock until then) before it stores the batch anyway.
_CHILD_EXIT_WAIT = 30.0
#: Longest stretch of Python the writer runs before it lets go of the GIL (seconds). The event loop
#: releases the GIL whenever it polls for I/O; a thread that then takes it keeps it until it
#: blocks or, by CPython's switch interval, up to 5 ms -- and every request in flight waits that
#: long. Building a batch's rows is such a stretch (about 10 us a row, 150 us for a streamed
#: answer of 20 chunks), so the writer yields between rows once this much has passed.
GIL_SLICE = 0.0002


#: What the proxy does when the writer is behind (``--when-behind``): hold new requests until the
#: queue has room again (``block``), or answer them and drop their traces, counted (``drop``).
WHEN_BEHIND = ("block", "drop")
#: How long ``/api/v1/health`` reports ``degraded`` after the last trace that was lost or could not
#: be stored, in seconds (a state that lasts is reported as long as it lasts).
DEGRADED_SECONDS = 300.0


class TraceWriter:
    """A queue and one supervised writer thread (with, when given, the writer process it hands
    batches to). ``submit`` is called from the event loop thread.

    The writer never dies: a row that cannot be built is stored without parsing (``fallback``), a
    row the database refuses is repaired by the engine, and anything else that stops the loop
    restarts it, counting the traces of the interrupted batch as ``lost``. Every such event is
    logged and makes :meth:`health` report ``degraded``.

    When ``queue_size`` traces are waiting the writer is behind: with ``when_behind="drop"`` a new
    trace is dropped (counted, logged); with ``"block"`` it is still queued and the proxy holds new
    requests at the door (:meth:`wait_for_room`) until the writer has caught up, so the queue
    exceeds its size by at most the requests in flight.
    """

    def __init__(
        self,
        engine: Engine,
        finalize: Callable[[Any], dict[str, Any]],
        queue_size: int = 10_000,
        when_behind: str = "block",
        fallback: Callable[[Any, BaseException], dict[str, Any]] | None = None,
        process: WriterProcess | None = None,
        secrets: Callable[[], Iterable[bytes]] | None = None,
        on_written: Callable[[int], None] | None = None,
        journal: Journal | None = None,
    ) -> None:
        if when_behind not in WHEN_BEHIND:
            raise ValueError(f"when_behind must be one of {', '.join(WHEN_BEHIND)}, not {when_behind!r}")
        self.engine = engine
        self._finalize = finalize
        self._fallback = fallback
        #: Where rows are built and stored: a child process (see :mod:`.writerproc`), or, when
        #: ``None``, this writer's thread (``finalize`` and ``fallback`` run there, as they do for
        #: a batch the child does not store).
        self._process = process
        #: The credentials the proxy holds now, masked in every trace (:func:`.capture.scrub`)
        #: here, before a row is built or an exchange is handed to the process.
        self._secrets = secrets
        #: Called with the number of rows after each batch is written (a shipper that sends them on).
        self._on_written = on_written
        #: Each exchange is appended here as it is submitted, and kept until it is stored: a
        #: process killed without warning loses none (:mod:`.journal`).
        self._journal = journal
        self.capacity = max(1, queue_size)
        self.when_behind = when_behind
        # Unbounded on purpose: the capacity is a policy (above), not a hard limit of the queue.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._conn: Any = None
        self._batch: list[Any] = []
        self.enqueued = 0
        self.written = 0
        self.repaired = 0
        self.failed = 0
        self.dropped = 0
        self.lost = 0
        self.restarts = 0
        #: Batches the idle child did not build in time (:mod:`.idle`), and until when this
        #: thread then builds the rows itself.
        self.starved = 0
        #: Batches this thread built because the child did not (starved, gone, not started).
        self.fallbacks = 0
        self._here_until = 0.0
        self._incident: tuple[float, str] | None = None
        self._last_drop_log = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        self._conn = self.engine.open_for_writing()  # created and migrated here: errors surface at start-up
        self._closing = False
        recovered = self._recover() if self._journal is not None else []
        if self._process is not None:
            self._process.store_into = store_spec(self.engine)
            try:
                self._process.start()
            except WriterProcessError as exc:
                log.warning("%s; building trace rows on a thread of the proxy instead", exc)
                self._process = None
        self._start_thread()
        for item in recovered:
            self.submit(item)
        if self._journal is not None:
            self._journal.forget_recovered()  # journaled again by submit(), or stored already

    def _recover(self) -> list[Any]:
        """The exchanges an earlier run journaled but did not store."""
        assert self._journal is not None
        found = self._journal.recover()
        if not found:
            return []
        stored = self.engine.stored_costs(self._conn, [ex.id for ex in found])
        missing = [ex for ex in found if ex.id not in stored]
        if missing:
            log.warning(
                "trace journal: %d trace(s) of an earlier run that stopped before storing them are stored now",
                len(missing),
            )
        return missing

    @property
    def kind(self) -> str:
        """Where rows are built and stored: ``"process"`` or ``"thread"``."""
        return "thread" if self._process is None else "process"

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prysmai-trace-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything pending, stop the writer and close the database."""
        if self._thread is None:
            return
        self._closing = True
        self.ensure_writer()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished:
            log.error("trace writer did not finish in %.0fs: %d trace(s) not written", timeout, self.pending)
        self._thread = None
        if self._journal is not None:  # kept when traces are still waiting: the next start stores them
            self._journal.close(everything_stored=finished and self._queue.empty())
        losses = {"dropped (queue full)": self.dropped, "lost (writer restarted)": self.lost}
        losses["not storable"] = self.failed
        for what, n in losses.items():
            if n:
                log.warning("%d trace(s) %s during this run", n, what)

    # -- request path ----------------------------------------------------------------------------
    def submit(self, item: Any) -> bool:
        """Queue a captured exchange; ``False`` (counted, logged) if dropped by the drop policy."""
        if self.when_behind == "drop" and self._queue.qsize() >= self.capacity:
            self.dropped += 1
            now = time.monotonic()
            self._incident = (now, f"trace writer behind: {self.dropped} trace(s) dropped (queue full)")
            if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
                self._last_drop_log = now
                log.warning("trace queue full: %d trace(s) dropped so far", self.dropped)
            return False
        if self._journal is not None:
            self._journal.append(item, () if self._secrets is None else tuple(self._secrets()))
        self._queue.put(item)
        self.enqueued += 1
        if not self.enqueued & 255:  # now and then: cheap enough for the request path
            self.ensure_writer()
        return True

    @property
    def behind(self) -> bool:
        """Whether the queue is at its size (the writer is behind)."""
        return self._queue.qsize() >= self.capacity

    async def wait_for_room(self) -> None:
        """With the block policy, wait (without blocking the event loop) until the queue is below
        its size. Costs one size check when there is room."""
        if self.when_behind != "block" or self._queue.qsize() < self.capacity:
            return
        import asyncio

        while self._queue.qsize() >= self.capacity:
            self.ensure_writer()
            await asyncio.sleep(0.005)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted before the call is written (or counted as failed/lost)."""
        target = self.enqueued
        deadline = time.monotonic() + timeout
        self.ensure_writer()
        with self._cond:
            while self.written + self.failed + self.lost < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(remaining, 1.0))
        return True

    def counters(self) -> dict[str, int]:
        return {
            "queued": self.pending,
            "written": self.written,
            "repaired": self.repaired,
            "dropped": self.dropped,
            "lost": self.lost,
            "write_errors": self.failed,
            "writer_restarts": self.restarts,
            "writer_fallbacks": self.fallbacks,
            "queue_capacity": self.capacity,
        }

    def health(self, detail: bool = True) -> tuple[str, str | None]:
        """``("ok", None)`` or ``("degraded", reason)``: the writer is behind now, or a trace was
        lost or could not be stored in the last :data:`DEGRADED_SECONDS`. Without ``detail`` the
        reason holds no count."""
        self.ensure_writer()
        if self.behind:
            if not detail:
                return "degraded", "trace writer behind"
            return "degraded", f"trace writer behind: {self.pending} trace(s) queued (queue size {self.capacity})"
        incident = self._incident
        if incident is not None and time.monotonic() - incident[0] < DEGRADED_SECONDS:
            if not detail:
                return "degraded", f"a trace was dropped, lost or not stored in the last {DEGRADED_SECONDS:.0f} s"
            return "degraded", incident[1]
        return "ok", None

    def ensure_writer(self) -> None:
        """Restart the writer thread if it is gone (it should never be: its loop is supervised)."""
        thread = self._thread
        if thread is not None and not thread.is_alive() and not (self._closing and self._conn is None):
            with self._cond:
                if self._thread is thread:
                    self._record_crash("the trace writer thread had stopped")
                    self._start_thread()

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if self._drain():
                    break
            except BaseException as exc:  # the writer must outlive anything a batch throws
                stop = any(item is _STOP for item in self._batch)
                with self._cond:
                    self._record_crash(f"the trace writer failed ({type(exc).__name__}: {str(exc)[:200]})", exc)
                if stop:
                    break
                self._reconnect()
                time.sleep(0.05)  # no hot loop if the cause persists
        if self._process is not None:
            self._process.stop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _record_crash(self, why: str, exc: BaseException | None = None) -> None:
        """Count the traces of the interrupted batch as lost (called with ``_cond`` held)."""
        lost = sum(1 for item in self._batch if item is not _STOP)
        self._batch = []
        if self._journal is not None:
            self._journal.done(lost)  # given up on: a batch that broke the writer is not replayed
        self.lost += lost
        self.restarts += 1
        self._incident = (time.monotonic(), f"{why}; restarted, {lost} trace(s) lost")
        log.error("%s; writer restarted, %d trace(s) lost (%d in total)", why, lost, self.lost, exc_info=exc)
        self._cond.notify_all()

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        try:
            self._conn = self.engine.open_for_writing()
        except Exception:  # the next batch fails too, and is counted
            log.exception("could not reopen the trace store %s", self.engine.location)

    def _insert(self, rows: list[Any]) -> tuple[int, int, int]:
        """Insert built rows on this thread, in one transaction; (written, repaired, failed)."""
        if self._conn is None:  # a writer restarted after its connection was closed
            self._reconnect()
        conn = self._conn
        if conn is None:
            raise RuntimeError("the trace store is not open")
        written, repaired, failed = self.engine.insert_rows(conn, rows)
        return written, repaired, failed

    def _store_here(self, items: list[Any]) -> tuple[int, int, int]:
        """Build and insert the rows of ``items`` on this thread: (written, repaired, failed)."""
        rows, repaired, unbuildable = build_rows(items, self._finalize, self._fallback, GIL_SLICE)
        written, fixed, failed = self._insert(rows)
        return written, repaired + fixed, unbuildable + failed

    def _store(self, items: list[Any]) -> tuple[int, int, int]:
        """Store ``items``: (written, repaired, failed). By the child process when there is one
        and it does (it builds and inserts them), else on this thread. Every item is stored once
        and its cost counted once, here or there."""
        process = self._process
        if process is None or not items:
            return self._store_here(items)
        if time.monotonic() < self._here_until:
            self.fallbacks += 1
            return self._store_here(items)
        try:
            why = process.ensure_running()  # a child that died between batches: no trace was in it
        except WriterProcessError as exc:
            self._store_here_for_a_while(f"{exc}; traces are stored by the proxy for {CATCH_UP:.0f}s")
            self.fallbacks += 1
            return self._store_here(items)
        if why is not None:
            with self._cond:
                self.restarts += 1
                self._incident = (time.monotonic(), f"{why}; restarted, no trace lost")
            log.error("%s; restarted it, no trace lost", why)
        stores = process.store_into is not None
        try:
            if not stores:
                rows, repaired, unbuildable = process.build(items, STARVED_AFTER)
                written, fixed, failed = self._insert(rows)
                return written, repaired + fixed, unbuildable + failed
            written, repaired, failed, rows = process.store(items, STARVED_AFTER)
            here = self._insert(rows)  # the rows of items the pipe could not carry
            return written + here[0], repaired + here[1], failed + here[2]
        except WriterStarved as exc:
            self.starved += 1
            self._store_here_for_a_while(f"{exc}; traces are stored by the proxy for {CATCH_UP:.0f}s")
        except WriterProcessError as exc:
            if process.alive:  # it failed this batch (its log says why) and carries on
                log.error("%s; its batch is stored by the proxy", exc)
            else:
                with self._cond:
                    self.restarts += 1
                    self._incident = (time.monotonic(), f"{exc}; its batch stored by the proxy, no trace lost")
                log.error("%s; its batch is stored by the proxy, no trace lost", exc)
        self.fallbacks += 1
        if not stores:
            return self._store_here(items)
        return self._take_over(process, items)

    def _take_over(self, process: WriterProcess, items: list[Any]) -> tuple[int, int, int]:
        """Store the batch a storing child did not answer for. A killed child may have committed
        it before it could answer, and holds the write lock until it exits: wait for that, then
        store only the traces not in the store, and count the cost of those that are, as the
        child's answer would have."""
        if not process.wait_exited(_CHILD_EXIT_WAIT):
            log.error("a killed trace writer process has not exited in %.0fs; storing its batch", _CHILD_EXIT_WAIT)
        if self._conn is None:
            self._reconnect()
        stored = self.engine.stored_costs(self._conn, [item.id for item in items]) if self._conn is not None else {}
        for item in items:
            cost = stored.get(item.id)
            if cost and not item.spend_counted:
                process.call_on_cost(item.project, cost, item.created_at)
        written, repaired, failed = self._store_here([item for item in items if item.id not in stored])
        return written + len(stored), repaired, failed

    def _store_here_for_a_while(self, why: str) -> None:
        """The child cannot store now (no spare CPU, or it does not start): this thread stores for
        :data:`~.idle.CATCH_UP` seconds, then a child is tried again."""
        self._here_until = time.monotonic() + CATCH_UP
        log.warning("%s", why)

    def _drain(self) -> bool:
        """Write batches until the stop marker; True when stopped."""
        while True:
            item = self._queue.get()
            batch = self._batch = [item]
            if item is not _STOP and self._queue.qsize() < _BATCH:
                # Linger a moment so traces are written in batches: fewer wake-ups of this thread,
                # less contention with the event loop for the GIL.
                time.sleep(_LINGER)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not _STOP]
            stop = len(items) < len(batch)
            if self._secrets is not None and items:
                known = tuple(self._secrets())
                for item in items:
                    scrub(item, known)
            written, repaired, failed = self._store(items)
            with self._cond:
                self.written += written
                self.repaired += repaired
                self.failed += failed
                self._batch = []
                self._cond.notify_all()
            if self._journal is not None:
                self._journal.done(len(items))
            if written and self._on_written is not None:
                self._on_written(written)
            if failed:
                self._incident = (time.monotonic(), f"{self.failed} trace(s) could not be stored (see the log)")
            if stop:
                return True
