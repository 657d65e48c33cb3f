"""The export process: reads the store's outbox, sends each trace as a span, and deletes from the
outbox what the collector accepted.

Run by :class:`.process.ExportProcess` (``python -c``, this copy of prysmai), in a process of its
own: building spans and encoding protobuf is Python, and Python in a thread of the proxy would
hold the GIL its event loop needs (as the writer process explains). It uses OpenTelemetry's SDK
(a ``TracerProvider`` whose id generator gives each span the ids of its trace; ``--otlp-sample``
is decided per trace by :func:`.spans.sampled`) and its OTLP/HTTP (protobuf) span exporter, which
reads ``OTEL_EXPORTER_OTLP_*HEADERS``, ``*TIMEOUT``, ``*COMPRESSION`` and the TLS settings itself.

The store's outbox: a SQLite store's ``export_outbox`` table, or, for a proxy on a PostgreSQL
store, the replica's own outbox file (settings ``outbox``), where each trace it answered waits
until it is both shipped and exported; each replica exports its own traces, so none is exported
by two.

Delivery: a batch is read, exported, and only then deleted from the outbox; a failed export is
retried with backoff (up to :data:`MAX_BACKOFF` seconds apart) until the collector takes it, so a
collector that is down loses nothing -- the spans wait in the store. A crash between the
collector's acceptance and the delete sends that batch again: duplicates only across a crash
(with the same trace and span ids, which backends can recognise).

Protocol: one JSON line on standard input with the settings, then lines ``{"providers": ...}``
(a reload) or ``{"drain": SECONDS}`` (send what waits, for at most that long, then exit); the end
of the input stops it. It answers on standard output with a JSON line of counters after every
batch and at least every second.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from ..store.outbox import OutboxEngine
from ..store.sqlite import SQLiteEngine
from .spans import Span, build, sampled

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

log = logging.getLogger("prysmai.export")

#: Longest wait between two tries of a failed batch, in seconds.
MAX_BACKOFF = 5.0
POLL = 0.25
BATCH = 256


class _Control:
    """What the proxy said on standard input (read by a thread of its own)."""

    def __init__(self, providers: Mapping[str, Any]) -> None:
        self.providers = providers
        self.drain_until: float | None = None
        self.stopped = threading.Event()
        self.wake = threading.Event()

    def read(self, stream: Any) -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "providers" in message:
                self.providers = message["providers"]
            if "drain" in message:
                self.drain_until = time.monotonic() + float(message["drain"])
                self.wake.set()
        self.stopped.set()
        self.wake.set()


class _LastError(logging.Handler):
    """Keeps the exporter's last complaint (why a batch failed), for the counters."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()[:300]


class Worker:
    """The export loop over one store (see the module docstring)."""

    def __init__(self, settings: Mapping[str, Any], control: _Control, out: Any) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        class GivenIds(IdGenerator):  # each span's ids are its trace's (set before it starts)
            trace_id = 1
            span_id = 1

            def generate_trace_id(self) -> int:
                return self.trace_id

            def generate_span_id(self) -> int:
                return self.span_id

        class Collect(SpanProcessor):  # keeps the ended spans of a batch, which we export
            def __init__(self) -> None:
                self.spans: list[Any] = []

            def on_end(self, span: Any) -> None:
                self.spans.append(span)

        self.settings = settings
        self.control = control
        self.out = out
        self.content = bool(settings.get("content"))
        self.price_source = settings.get("price_source")
        self.batch = int(settings.get("batch") or BATCH)
        resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "prysmai-proxy"})
        self.ids = GivenIds()
        self.collected = Collect()
        self.sample = float(settings.get("sample", 1.0))
        provider = TracerProvider(resource=resource, id_generator=self.ids)
        provider.add_span_processor(self.collected)
        self.tracer = provider.get_tracer("prysmai.proxy", str(settings.get("version") or ""))
        self.exporter = OTLPSpanExporter(endpoint=str(settings["endpoint"]))
        self.last_error = _LastError()
        otel_log = logging.getLogger("opentelemetry")
        otel_log.addHandler(self.last_error)
        otel_log.propagate = False  # its lines are summarised in the counters, not printed
        # A replica of a shared (PostgreSQL) store exports from its outbox (see ..store.outbox).
        outbox = settings.get("outbox")
        self.engine = OutboxEngine(str(outbox)) if outbox else SQLiteEngine(str(settings["db"]))
        self.read = self.engine.read_connection()
        self.write = self.engine.open_for_writing()
        self.counters: dict[str, Any] = {
            "exported": 0,
            "failed": 0,
            "sampled_out": 0,
            "expired": 0,
            "skipped": 0,
            "waiting": 0,
            "failing_since": None,
            "last_error": None,
            "last_export": None,
        }
        self._logs: list[tuple[int, str]] = []
        self._reported = 0.0

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        backoff = 0.0
        while True:
            if self.control.stopped.is_set() and self.control.drain_until is None:
                break
            draining = self.control.drain_until is not None
            if draining and time.monotonic() > (self.control.drain_until or 0):
                break
            batch = self.engine.export_batch(self.read, 0, self.batch)
            if not batch:
                self.counters["waiting"] = 0
                self.report()
                if draining or self.control.stopped.is_set():
                    break
                self.control.wake.wait(POLL)
                self.control.wake.clear()
                continue
            if self.send(batch):
                backoff = 0.0
            else:
                backoff = min(MAX_BACKOFF, max(0.25, backoff * 2))
                self.report()
                if self.control.stopped.wait(backoff) and self.control.drain_until is None:
                    break
        self.report(force=True)

    def send(self, batch: list[tuple[int, dict[str, Any] | None]]) -> bool:
        """Export one batch; ``True`` if it is done with (sent, or nothing in it to send)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.collected.spans = []
        sampled_out = expired = skipped = 0
        for _, row in batch:
            if row is None:
                expired += 1
                continue
            if not sampled(str(row["id"]), self.sample):
                sampled_out += 1
                continue
            try:
                span = build(row, self.control.providers, content=self.content, price_source=self.price_source)
            except Exception as exc:  # a trace this code cannot describe: skipped, never a stuck export
                skipped += 1
                self._log(logging.WARNING, f"export: trace {row.get('id')} skipped ({type(exc).__name__}: {exc})")
                continue
            self._record(span)
        spans = self.collected.spans
        if spans:
            self.last_error.text = None
            ok = self.exporter.export(spans) == SpanExportResult.SUCCESS
        else:
            ok = True
        now = time.time()
        if not ok:
            self.counters["failed"] += len(spans)
            self.counters["failing_since"] = self.counters["failing_since"] or now
            self.counters["last_error"] = self.last_error.text or "the collector did not accept the spans"
            self.counters["waiting"] = self.engine.export_waiting(self.read)
            return False
        self.engine.export_done(self.write, batch[-1][0])
        self.counters["exported"] += len(spans)
        self.counters["sampled_out"] += sampled_out
        self.counters["expired"] += expired
        self.counters["skipped"] += skipped
        if self.counters["failing_since"] is not None:
            self._log(logging.INFO, "export: the collector accepts spans again; the ones that waited are being sent")
        self.counters["failing_since"] = None
        self.counters["last_export"] = now
        self.counters["waiting"] = self.engine.export_waiting(self.read)
        self.report()
        return True

    def _record(self, span: Span) -> None:
        """Make ``span`` through the SDK (it ends up in :attr:`collected`)."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.ids.trace_id, self.ids.span_id = span.trace_id, span.span_id
        sdk_span = self.tracer.start_span(
            span.name, kind=SpanKind.CLIENT, attributes=span.attributes, start_time=span.start_ns
        )
        if span.error is not None:
            sdk_span.set_status(Status(StatusCode.ERROR, span.error))
        sdk_span.end(end_time=span.end_ns)

    # -- reporting -------------------------------------------------------------------------------
    def _log(self, level: int, text: str) -> None:
        self._logs.append((level, text))

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self._logs and now - self._reported < 1.0:
            return
        self._reported = now
        line = json.dumps({**self.counters, "log": self._logs}) + "\n"
        self._logs = []
        os.write(self.out, line.encode())

    def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]
        self.read.close()
        self.write.close()


def main() -> None:
    """The child: settings from standard input, counters to standard output."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # stopped by the proxy closing our input
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print() must not corrupt the counters
    line = sys.stdin.readline()
    if not line:
        return
    settings = json.loads(line)
    control = _Control(settings.get("providers") or {})
    try:
        worker = Worker(settings, control, out)
    except Exception as exc:  # reported to the proxy, which logs it
        os.write(out, (json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        return
    threading.Thread(target=control.read, args=(sys.stdin,), daemon=True).start()
    try:
        worker.run()
    finally:
        worker.close()
