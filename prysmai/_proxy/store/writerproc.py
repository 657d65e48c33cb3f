"""Trace rows built and stored by a child process (``--trace-writer process``, the default).

Why a process: turning a captured exchange into a row is Python (JSON parsing, stream
reassembly, redaction, previews, costing: ~35 us a row and ~200 us a streamed answer), and Python
in a thread of the proxy holds the one GIL the event loop needs. The loop lets go of it at every
poll for I/O, and a thread that takes it then keeps it for up to CPython's 5 ms switch interval:
built in-process, rows cost the proxy about a quarter of its throughput at 64 connections
(``bench/writer.py``, ``bench/proxy_overhead.py --trace-writer``). Here the proxy's writer thread
only copies each exchange's captured fields into a :mod:`marshal` frame (~2 us, C) and writes it
to a pipe, GIL released; the child builds the rows with its own interpreter.

Why it stores them too: a batch's insert is a burst of SQLite's CPU (the rows, their indexes,
the rollups' fold, the search index: ~50 us a small row, ~750 us an OpenAI-shaped one, and
~0.6 ms a transaction). On the proxy's writer thread that burst had the same share of a core as
the event loop, and a request that woke up meanwhile waited for it: it was the proxy's
sequential p99 (bench/README.md, "The tail"). In the child it runs under ``SCHED_IDLE``
(:mod:`.idle`), on a core nothing else wants. The child opens the SQLite file the writer writes
(the store, or a shared store's outbox) and inserts each batch in one transaction, as the thread
would; it answers with the counts. A store no other process can open (``:memory:``) has its rows
built by the child and inserted by the thread, as before.

A child that gets no CPU holds the store's write lock while it is in a transaction. So the proxy
bounds its wait: a batch not answered within :data:`~.idle.STARVED_AFTER` by a child that hardly
ran, or a child that fails or dies, is taken over by the writer thread
(:meth:`.writer.TraceWriter`), which kills the child, waits for it to exit (its lock then goes,
and an open transaction with it), stores the batch's traces the child did not commit, and counts
the costs of those it did. Every trace is stored once, whichever process stored it.

The proxy's :class:`~.writer.TraceWriter` keeps everything else: the queue, the block/drop policy,
the counters, the journal, ``flush`` and ``health``.

Wire format, both ways: frames of a 4-byte big-endian length and a :mod:`marshal` payload (only
basic types: the child never runs code the proxy sent). To the child: ``("init", prices, as_of,
source, store)`` once (``store``: ``(kind, path)`` of the file to store into, or ``None``), then
``("batch", price_defs, policy_defs, parts)``; it answers the first with ``("ready", None, logs)``
(or ``("failed", reason, logs)``), and each batch with ``("stored", written, repaired, failed,
costs, logs)`` when it stores, ``("ok", row_parts, repaired, unbuildable, costs, logs)`` when it
only builds, or ``("failed", reason, logs)``. ``parts`` and ``row_parts`` are marshalled lists of
a few dozen items or rows each, so neither end holds its GIL for a whole batch. The child exits
when its input closes. Provider price tables and storage policies are sent once each
(``price_defs``, ``policy_defs``) and referred to by number.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import operator
import os
import signal
import struct
import subprocess
import sys
import time

from ..config.policy import StoragePolicy
from ..config.pricing import Price, PriceTable
from .capture import DEFAULT_POLICY, Exchange, fallback_row, finalize
from .idle import STARVED_AFTER, lower_priority
from .rows import build_row, build_rows

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

log = logging.getLogger("prysmai.proxy")

#: The exchange's fields the child needs, in the order they are sent. Not sent: the parsed request
#: (``request_json``: the row stores the body as received), the submission mark, the provider's
#: prices and the project's storage policy, which are sent once each (``price_defs``,
#: ``policy_defs``) and referred to by number, and the credentials sent upstream (masked in the
#: proxy before: the child holds no secret).
FIELDS = tuple(
    f for f in Exchange.__slots__ if f not in ("provider_prices", "request_json", "submitted", "policy", "sent_secrets")
)
fields_of = operator.attrgetter(*FIELDS)
#: A frame between the proxy and a child: this length (4 bytes, big-endian), then a
#: :mod:`marshal` payload of basic types only.
FRAME_HEADER = struct.Struct(">I")
#: A child's command (``python -c``): this very copy of prysmai (the proxy may run from a
#: checkout, not the installed one), and not the working directory's modules, which ``-c`` and
#: ``-m`` would put first on ``sys.path`` (the proxy may be started in any project's folder).
_CHILD = """# prysmai {name}
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
if sys.argv[1] not in sys.path:
    sys.path.insert(0, sys.argv[1])
from prysmai._proxy.{module} import main
main()
"""


def child_command(name: str, module: str) -> list[str]:
    """The command of a child process of the proxy that runs ``prysmai._proxy.{module}.main()``
    (``name``: what ``ps`` shows of it)."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable or "python3", "-c", _CHILD.format(name=name, module=module), package_root]


def child_output() -> int:
    """In a child process of the proxy, first: the descriptor its frames go to. Standard output
    becomes standard error (a stray ``print()`` must not corrupt the frames), and the signals
    meant for the proxy (Ctrl-C, a service manager's SIGTERM to the whole group) are ignored:
    the proxy decides when its children end."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)
    return out


#: How long the proxy waits for a new child to say it is ready before it builds rows itself.
START_TIMEOUT = 30.0
#: Items marshalled, and rows unmarshalled, between two yields of the GIL (about 2 us each).
ITEMS_PER_SLICE = 64
#: A child waited for is starved when it ran for less than this share of the time waited (it is
#: not merely busy with a large batch).
STARVED_SHARE = 0.25


class WriterProcessError(RuntimeError):
    """The child did not build a batch (failed, gone, or not started); the proxy builds it."""


class WriterStarved(WriterProcessError):
    """The child got too little CPU to answer in time (see :mod:`.idle`); it has been killed."""


def price_tuples(prices: Mapping[str, Price]) -> dict[str, tuple[float, float | None, float | None]]:
    return {model: (p.input, p.output, p.cached_input) for model, p in prices.items()}


def price_table(tuples: Mapping[str, Any]) -> dict[str, Price]:
    return {model: Price(*values) for model, values in tuples.items()}


def frame(payload: bytes) -> bytes:
    """``payload`` as one frame."""
    return FRAME_HEADER.pack(len(payload)) + payload


def write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(frame(payload))
    while view:
        view = view[os.write(fd, view) :]  # releases the GIL while the pipe is full


def read_frame(fd: int) -> bytes | None:
    """The next frame's payload; ``None`` at end of input."""
    header = _read_exact(fd, FRAME_HEADER.size)
    if header is None:
        return None
    payload = _read_exact(fd, FRAME_HEADER.unpack(header)[0])
    if payload is None:
        raise EOFError("input ended inside a frame")
    return payload


def _read_exact(fd: int, n: int) -> bytes | None:
    parts: list[bytes] = []
    while n:
        part = os.read(fd, min(n, 1 << 20))
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def cpu_seconds(pid: int) -> float | None:
    """The CPU time ``pid`` has used (Linux's ``/proc``); ``None`` where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


#: What the child keeps of the proxy's environment: what Python itself reads. Not the keys
#: (``OPENAI_API_KEY``, ``PRYSM_PROXY_KEYS``, whatever a projects file names): the process that
#: parses captured, untrusted content holds no secret. Not ``PRYSM_AUTO`` either.
_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "LANG", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "VIRTUAL_ENV", "LD_LIBRARY_PATH"}
)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in _ENVIRONMENT or k.startswith(("PYTHON", "LC_"))}


#: The SQLite files a child can store into, by the writer's engine's ``kind``.
_STORABLE = ("sqlite", "outbox")


def store_spec(engine: Any) -> tuple[str, str] | None:
    """What a child is told to open to store rows the way ``engine`` does: ``(kind, path)``, or
    ``None`` when no other process can open it (a store in memory, a ``file:`` URI)."""
    kind, path = getattr(engine, "kind", None), getattr(engine, "path", None)
    if kind not in _STORABLE or not isinstance(path, str) or path == ":memory:" or path.startswith("file:"):
        return None
    return kind, os.path.abspath(path)


def _open_store(spec: tuple[str, str]) -> tuple[Any, Any]:
    """In the child: the engine of ``spec`` and a connection to write with."""
    from .outbox import OutboxEngine
    from .sqlite.engine import SQLiteEngine

    kind, path = spec
    engine = OutboxEngine(path) if kind == "outbox" else SQLiteEngine(path)
    return engine, engine.open_for_writing()


class WriterProcess:
    """The proxy's end of the child that builds its trace rows, and stores them when it is given
    a store (:attr:`store_into`).

    ``on_cost(project, usd, created_at)`` is called for every row the child costed (the
    projects' monthly budgets); ``finalize`` builds, in the proxy, the row of the rare exchange
    whose fields cannot be sent (a value :mod:`marshal` refuses)."""

    def __init__(
        self,
        prices: PriceTable,
        finalize: Callable[[Any], dict[str, Any]],
        on_cost: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self.prices = prices
        self._finalize = finalize
        self._on_cost = on_cost
        #: What the next child started opens to store its batches (:func:`store_spec`); ``None``:
        #: it only builds rows, and the caller inserts them.
        self.store_into: tuple[str, str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        #: Whether :meth:`start` was called (a child that is gone is then started again).
        self._wanted = False
        #: Children killed and not yet reaped: a starved one may need a while to get a core and
        #: exit (:meth:`wait_exited` waits for that, when it may hold the store's write lock).
        self._killed: list[subprocess.Popen[bytes]] = []
        #: id(provider prices) -> (the mapping, kept alive so the id stays its own; its number).
        self._price_refs: dict[int, tuple[Mapping[str, Price], int]] = {}
        #: Storage policy -> its number (policies are frozen and hashable).
        self._policy_refs: dict[StoragePolicy, int] = {}

    def __repr__(self) -> str:
        return f"WriterProcess(pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child and wait until it says it is ready (it then lowers its CPU priority:
        :mod:`.idle`). Raises :class:`WriterProcessError` if it does not start."""
        self._wanted = True
        self._reap()
        self._price_refs = {}
        self._policy_refs = {}
        env = child_environment(os.environ)
        try:
            proc = subprocess.Popen(
                child_command("trace writer", "store.writerproc"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                bufsize=0,
                close_fds=True,
            )
        except OSError as exc:  # no usable interpreter (an embedding host, a broken install)
            raise WriterProcessError(f"the trace writer process did not start: {exc}") from None
        self._proc = proc
        table = self.prices
        init = ("init", price_tuples(table.prices), table.as_of, table.source, self.store_into)
        try:
            write_frame(self._fd_in, marshal.dumps(init))
            reply = self._reply(START_TIMEOUT)
        except (OSError, WriterProcessError) as exc:
            self._discard()
            raise WriterProcessError(f"the trace writer process did not start ({exc})") from None
        if reply[0] != "ready":
            self._discard()
            raise WriterProcessError(f"the trace writer process did not start: {reply[1]}")

    def ensure_running(self) -> str | None:
        """Start the child again if it is gone: why it had to be, or ``None`` (also when its end
        was already reported, by the :class:`WriterProcessError` of the batch it was building).
        Raises :class:`WriterProcessError` if the new one does not start."""
        if not self._wanted or self.alive:
            return None
        why = None
        if self._proc is not None:
            why = f"the trace writer process had exited (code {self._proc.poll()})"
            self._discard()
        self.start()
        return why

    def kill(self) -> None:
        """Kill the child without waiting for it to exit (the next :meth:`ensure_running` starts
        another; :meth:`wait_exited` waits for it)."""
        self._discard()

    def call_on_cost(self, project: str, usd: float, created_at: float) -> None:
        """Count a cost as a child's answer would have (a trace it stored, then died unanswered)."""
        if self._on_cost is not None:
            self._on_cost(project, usd, created_at)

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every child killed so far has exited: a child
        that stores holds the store's write lock, and may commit, until then. ``False`` if one
        still runs."""
        deadline = time.monotonic() + timeout
        for proc in self._killed:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        self._reap()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Close the child's input (it finishes what it was given, then exits) and wait for it,
        and for the children killed before."""
        self._wanted = False
        proc, self._proc = self._proc, None
        deadline = time.monotonic() + timeout
        if proc is not None:
            _close_pipes(proc)
            self._killed.append(proc)
        for proc in self._killed:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("trace writer process %d did not exit in %.0fs: killed", proc.pid, timeout)
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self._killed = []

    def _died(self) -> WriterProcessError:
        """The child is gone mid-batch: forget it (the next batch starts another) and say how it
        ended, as far as is known without waiting for it."""
        proc = self._proc
        how = "exited"
        if proc is not None:
            code = proc.poll()
            how = "exited" if code is None else f"exited (code {code})"
            self._discard()
        return WriterProcessError(f"the trace writer process {how}")

    def _discard(self) -> None:
        """Kill the child if it still runs and set it aside to be reaped later, never waiting."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _close_pipes(proc)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        self._killed.append(proc)
        self._reap()

    def _reap(self) -> None:
        self._killed = [proc for proc in self._killed if proc.poll() is None]

    @property
    def _fd_in(self) -> int:
        assert self._proc is not None and self._proc.stdin is not None
        return self._proc.stdin.fileno()

    # -- batches (the store's writer thread) -----------------------------------------------------
    def build(self, items: list[Any], starved_after: float | None = STARVED_AFTER) -> tuple[list[Any], int, int]:
        """The rows of ``items``, built by a child that does not store (:attr:`store_into` ``None``):
        (rows, how many a fallback built, how many items no row could be built for); the child's
        costs go to ``on_cost``. Raises as :meth:`store` does; then no row of the batch was built
        and no cost counted: the caller builds them all."""
        reply, rows, repaired, unbuildable = self._ask(items, starved_after)
        if reply is None:
            return rows, repaired, unbuildable
        if reply[0] != "ok":
            raise WriterProcessError(f"the trace writer process failed a batch ({reply[1]})")
        _, parts, built_repaired, failed, costs, _logs = reply
        for start, part in enumerate(parts):
            if start:
                time.sleep(0)  # let the event loop have the GIL (see .writer.GIL_SLICE)
            rows.extend(marshal.loads(part))
        self._count(costs)
        return rows, repaired + built_repaired, unbuildable + failed

    def store(self, items: list[Any], starved_after: float | None = STARVED_AFTER) -> tuple[int, int, int, list[Any]]:
        """Have a child that stores (:attr:`store_into`) build and store ``items`` in one transaction:
        (written, repaired, failed, rows), ``rows`` being those of the rare items the pipe cannot
        carry, built here, for the caller to insert. The child's costs go to ``on_cost``.

        Raises :class:`WriterStarved` (the child killed) when, after ``starved_after`` seconds,
        it has not answered and has hardly run (``None``: wait as long as it takes), and
        :class:`WriterProcessError` when it failed the batch (its transaction rolled back) or is
        gone. A child killed or gone may have committed the batch before it could answer: the
        caller waits for it to exit (:meth:`wait_exited`) and looks."""
        reply, rows, repaired, unbuildable = self._ask(items, starved_after)
        if reply is None:
            return 0, repaired, unbuildable, rows
        if reply[0] != "stored":
            raise WriterProcessError(f"the trace writer process failed a batch ({reply[1]})")
        _, written, child_repaired, failed, costs, _logs = reply
        self._count(costs)
        return written, repaired + child_repaired, unbuildable + failed, rows

    def _count(self, costs: list[tuple[str, float, float]]) -> None:
        for project, usd, created_at in costs:
            self.call_on_cost(project, usd, created_at)

    def _ask(self, items: list[Any], starved_after: float | None) -> tuple[Any, list[Any], int, int]:
        """Send ``items`` to the child and wait for its answer: (the answer, or ``None`` when no
        item could be sent; the rows built here of the items that cannot be sent; how many of
        those a fallback built or none could be built for). Raises :class:`WriterStarved` and
        :class:`WriterProcessError` as :meth:`store` says."""
        self._reap()
        if self._proc is None:
            raise WriterProcessError("the trace writer process is not running")
        payload, rows, repaired, unbuildable = self._pack(items)
        if payload is None:  # nothing the child could be sent
            return None, rows, repaired, unbuildable
        pid = self._proc.pid
        cpu = cpu_seconds(pid) if starved_after is not None else None
        try:
            write_frame(self._fd_in, payload)
        except OSError:
            raise self._died() from None
        while True:
            try:
                return self._reply(starved_after), rows, repaired, unbuildable
            except WriterStarved:
                now = cpu_seconds(pid)
                if cpu is not None and now is not None and now - cpu < STARVED_SHARE * (starved_after or 0.0):
                    self.kill()
                    raise WriterStarved(
                        f"the trace writer process ran {(now - cpu) * 1000:.0f} ms of the {starved_after:g} s "
                        "it was waited for (no spare CPU); killed"
                    ) from None
                cpu = now  # busy with a large batch: wait for it

    def _pack(self, items: list[Any]) -> tuple[bytes | None, list[Any], int, int]:
        """The batch's frame (``None``: no item to send), the rows of the items that cannot be
        sent as they are (built here), and how many of those a fallback built or none could be
        built for. Marshalled :data:`ITEMS_PER_SLICE` items at a time, yielding the GIL in between
        (a whole batch would hold it for a millisecond: see :data:`.writer.GIL_SLICE`)."""
        defs: dict[int, Any] = {}
        policy_defs: dict[int, Any] = {}
        parts: list[bytes] = []
        rows: list[Any] = []
        repaired = unbuildable = 0
        for start in range(0, len(items), ITEMS_PER_SLICE):
            if start:
                time.sleep(0)
            some = items[start : start + ITEMS_PER_SLICE]
            sent = [
                (
                    fields_of(item),
                    self._price_ref(item.provider_prices, defs),
                    self._policy_ref(item.policy, policy_defs),
                )
                for item in some
            ]
            try:
                parts.append(marshal.dumps(sent))
                continue
            except ValueError:  # a value marshal refuses (nested too deeply): build those rows here
                pass
            sendable = []
            for item, entry in zip(some, sent):
                try:
                    marshal.dumps(entry)
                    sendable.append(entry)
                    continue
                except ValueError:
                    pass
                row, fallback = build_row(item, self._finalize, fallback_row)
                if row is None:
                    unbuildable += 1
                else:
                    rows.append(row)
                    repaired += fallback
            if sendable:
                parts.append(marshal.dumps(sendable))
        if not parts:
            return None, rows, repaired, unbuildable
        return marshal.dumps(("batch", defs, policy_defs, parts)), rows, repaired, unbuildable

    def _price_ref(self, prices: Mapping[str, Price] | None, defs: dict[int, Any]) -> int:
        """The number the child knows a provider's price table by (-1: none); a table it has not
        seen yet goes into ``defs``, sent with the batch."""
        if prices is None:
            return -1
        known = self._price_refs.get(id(prices))
        if known is None:
            known = self._price_refs[id(prices)] = (prices, len(self._price_refs))
            defs[known[1]] = price_tuples(prices)
        return known[1]

    def _policy_ref(self, policy: StoragePolicy, defs: dict[int, Any]) -> int:
        """The number the child knows a storage policy by; a new one goes into ``defs``."""
        known = self._policy_refs.get(policy)
        if known is None:
            known = self._policy_refs[policy] = len(self._policy_refs)
            defs[known] = policy.as_tuple()
        return known

    def _reply(self, timeout: float | None) -> Any:
        """The child's next answer; :class:`WriterStarved` if none came within ``timeout``
        seconds (the child is left as it is), :class:`WriterProcessError` if it is gone."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        if timeout is not None and os.name != "nt":  # Windows' select() takes sockets only: wait unbounded
            import selectors

            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(timeout):
                    raise WriterStarved(f"no answer in {timeout:g}s")
        try:
            payload = read_frame(fd)
        except (OSError, EOFError) as exc:
            payload = None
            log.debug("trace writer process: %s", exc)
        if payload is None:
            raise self._died()
        reply = marshal.loads(payload)
        for level, text in reply[-1]:
            log.log(level, "%s", text)
        return reply


# -- the child ---------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    """Keeps the child's log records, sent back with the batch's answer and logged by the proxy
    (one log, in the proxy's format and handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.levelno, text))

    def take(self) -> list[tuple[int, str]]:
        records, self.records = self.records, []
        return records


def exchange_of(values: tuple[Any, ...], prices: Mapping[str, Price] | None, policy: StoragePolicy | None) -> Exchange:
    ex = Exchange.__new__(Exchange)
    ex.error_code = None  # a journal written before the field was added does not hold it
    for name, value in zip(FIELDS, values):
        setattr(ex, name, value)
    ex.provider_prices = prices
    ex.policy = DEFAULT_POLICY if policy is None else policy
    ex.request_json = None
    ex.submitted = True
    ex.sent_secrets = ()
    return ex


def main() -> None:
    """The child: read frames from standard input until it closes, answer on standard output."""
    # Stopped by the proxy closing our input: the proxy still has traces to hand over.
    out = child_output()
    collect = _Collect()
    log.addHandler(collect)
    log.setLevel(logging.INFO)
    log.propagate = False
    serve(0, out, collect)


def serve(fd_in: int, fd_out: int, collect: _Collect) -> None:
    init = read_frame(fd_in)
    if init is None:
        return
    _, tuples, as_of, source, spec = marshal.loads(init)
    prices = PriceTable(price_table(tuples), as_of, source)
    engine = conn = None
    if spec is not None:
        try:
            engine, conn = _open_store(spec)
        except Exception as exc:  # the proxy then stores on its own thread, and says why
            write_frame(fd_out, marshal.dumps(("failed", f"cannot open {spec[1]}: {exc}", collect.take())))
            return
    # Ready first, at the priority it was started with, so the proxy's wait for it is short on a
    # busy host too; idle from then on.
    write_frame(fd_out, marshal.dumps(("ready", None, collect.take())))
    lower_priority()
    try:
        _serve_batches(fd_in, fd_out, collect, prices, engine, conn)
    finally:
        if conn is not None:
            conn.close()


def _serve_batches(fd_in: int, fd_out: int, collect: _Collect, prices: PriceTable, engine: Any, conn: Any) -> None:
    """Answer each batch until the input closes: stored through ``engine`` when there is one."""
    provider_prices: dict[int, dict[str, Price]] = {}
    policies: dict[int, StoragePolicy] = {}
    while True:
        frame = read_frame(fd_in)
        if frame is None:
            break
        _, defs, policy_defs, parts = marshal.loads(frame)
        for ref, table in defs.items():
            provider_prices[ref] = price_table(table)
        try:
            for ref, values in policy_defs.items():
                policies[ref] = StoragePolicy.from_tuple(values)
            items = [item for part in parts for item in marshal.loads(part)]
            built = _build_batch(items, prices, provider_prices, policies)
            if engine is None:
                answer = marshal.dumps(("ok", *_row_parts(built), collect.take()))
            else:
                answer = marshal.dumps(("stored", *_store_batch(engine, conn, built), collect.take()))
        except Exception as exc:  # the proxy stores this batch itself (an insert that raised rolled back)
            log.exception("the trace writer process failed a batch")
            answer = marshal.dumps(("failed", f"{type(exc).__name__}: {str(exc)[:200]}", collect.take()))
        write_frame(fd_out, answer)


def _build_batch(
    items: list[Any],
    prices: PriceTable,
    provider_prices: Mapping[int, Mapping[str, Price]],
    policies: Mapping[int, StoragePolicy],
) -> tuple[list[Any], int, int, list[tuple[str, float, float]]]:
    """The batch's rows: (rows, repaired, unbuildable, the costs to count)."""
    costs: list[tuple[str, float, float]] = []

    def counted(ex: Exchange) -> dict[str, Any]:
        row = finalize(ex, prices)
        if row.get("cost_usd") and not ex.spend_counted:  # (the proxy counted it as it answered)
            costs.append((ex.project, row["cost_usd"], ex.created_at))
        return row

    exchanges = [exchange_of(values, provider_prices.get(ref), policies.get(policy)) for values, ref, policy in items]
    rows, repaired, unbuildable = build_rows(exchanges, counted, fallback_row)
    return rows, repaired, unbuildable, costs


def _row_parts(built: tuple[list[Any], int, int, list[Any]]) -> tuple[Any, ...]:
    """A built batch as the proxy inserts it: (row parts, repaired, unbuildable, costs)."""
    rows, repaired, unbuildable, costs = built
    parts = [marshal.dumps(rows[start : start + ITEMS_PER_SLICE]) for start in range(0, len(rows), ITEMS_PER_SLICE)]
    return parts, repaired, unbuildable, costs


def _store_batch(engine: Any, conn: Any, built: tuple[list[Any], int, int, list[Any]]) -> tuple[Any, ...]:
    """A built batch stored in one transaction: (written, repaired, failed, costs). An insert
    that raises has rolled back: the proxy stores the batch."""
    rows, repaired, unbuildable, costs = built
    written, fixed, failed = engine.insert_rows(conn, rows)
    return written, repaired + fixed, unbuildable + failed, costs


if __name__ == "__main__":
    main()
