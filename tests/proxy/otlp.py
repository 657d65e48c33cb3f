"""A loopback OTLP/HTTP receiver for the export's tests: a real HTTP server on 127.0.0.1 that
decodes each ``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keeps its spans. It can
be taken down (its socket closed: connections are refused) and brought back on the same port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


class Receiver:
    """``spans``: every span received, as dicts (name, kind, ids, times, attributes, status,
    resource, scope); ``requests``: the raw requests' headers."""

    def __init__(self, status: int = 200) -> None:
        self.spans: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = status
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.status != 200:
                    self.send_response(receiver.status)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.headers.append(dict(self.headers))
                    for rs in request.resource_spans:
                        resource = {kv.key: value_of(kv.value) for kv in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                receiver.spans.append(
                                    {
                                        "name": span.name,
                                        "kind": span.kind,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent": span.parent_span_id.hex(),
                                        "start": span.start_time_unix_nano,
                                        "end": span.end_time_unix_nano,
                                        "attributes": {kv.key: value_of(kv.value) for kv in span.attributes},
                                        "status": (span.status.code, span.status.message),
                                        "resource": resource,
                                        "scope": (ss.scope.name, ss.scope.version),
                                    }
                                )
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the socket is closed, connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def by_trace(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            out: dict[str, list[dict[str, Any]]] = {}
            for span in self.spans:
                out.setdefault(span["trace_id"], []).append(span)
            return out

    def wait_for(self, trace_ids: set[str], timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.by_trace()
            if trace_ids <= set(got):
                return got
            assert time.monotonic() < deadline, f"{len(trace_ids - set(got))} of {len(trace_ids)} spans never arrived"
            time.sleep(0.05)
