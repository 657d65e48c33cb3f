"""The forwarding path: one authenticated request to the upstream and back, captured as one trace.

A :class:`Forwarder` reads the request body under its size limit, parses it once (model,
``stream``, ``stream_options``), checks the project's limits, asks a stream for its usage
(:mod:`.usage`), forwards the original bytes through the pooled upstream client, relays the
answer chunk by chunk, notices a client that leaves, answers upstream failures with an
OpenAI-style error of ours, and queues an :class:`~..store.capture.Exchange` for the store's
writer. It does no logging on the way (but for failures), no disk I/O and no response parsing.
What one request's steps share rides in its :class:`Call`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from urllib.parse import quote

from ... import _wire
from ..asgi import (
    Disconnected,
    StreamWatch,
    TooLarge,
    connection_of,
    error_body,
    internal_error,
    latency_header,
    read_body,
    respond,
    send_whole,
    uncancel,
)
from ..config.projects import DEMO
from ..store.capture import Exchange, answer_cost
from .disconnect import DisconnectWatch, DisconnectWatches
from .upstream import TIMEOUT_ERRORS, TRANSPORT_ERRORS, UPSTREAM_ERRORS, request_headers, response_headers
from .usage import UsageStripper, inject_usage, stream_finished

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..asgi import Connection, Receive, Responder, Scope, Watch
    from ..config.pricing import PriceTable
    from ..config.projects import Project, Provider
    from ..config.settings import ProxyConfig
    from ..store import Store
    from .limits import Limits
    from .ratelog import RateLimitedLog
    from .upstream import Upstream, UpstreamResponse

log = logging.getLogger("prysmai.proxy")

#: The API's path prefix: below it, what is not ours is forwarded (to the upstream's base URL).
PREFIX = "/api/v1/"
_PREFIX_BYTES = PREFIX.encode()
#: POST endpoints whose body must be a JSON object (anything else is a 400).
JSON_ENDPOINTS = frozenset({"chat/completions", "completions", "embeddings", "responses"})
#: Endpoints whose streams accept ``stream_options.include_usage``.
USAGE_ENDPOINTS = frozenset({"chat/completions", "completions"})


class Call:
    """One forwarded request: its ASGI scope, ``receive`` and ``send``, the trace it is captured
    as, the ``X-Prysm-Trace-Id`` header it is answered with, and -- once routed -- where it goes."""

    __slots__ = (
        "body",
        "counts_spend",
        "credential",
        "ex",
        "headers",
        "inject",
        "receive",
        "scope",
        "send",
        "trace_header",
        "upstream",
        "url",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Responder, ex: Exchange) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.ex = ex
        self.trace_header = (_wire.TRACE_ID_HEADER.lower().encode(), ex.id.encode())
        self.upstream: Upstream | None = None
        self.url = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.inject = False
        #: The project has a budget: the answer's cost is counted as it completes.
        self.counts_spend = False
        #: The provider's stored credential, when it was sent: masked in an error answer that echoes it.
        self.credential: bytes | None = None


class Forwarder:
    """Forwards the requests of authenticated project keys; ``inflight`` counts them."""

    def __init__(
        self, config: ProxyConfig, store: Store, limits: Limits, warnings: RateLimitedLog, prices: PriceTable
    ) -> None:
        self.config = config
        self.store = store
        self.limits = limits
        self.prices = prices  # a budget's spend is priced here as each answer completes
        self.warnings = warnings  # floods (502s): first line, then summaries
        self.client: Upstream | None = None
        self.demo_client: Upstream | None = None
        self.inflight = 0
        #: By project: [requests in flight, traces handed to the store, traces it dropped].
        self._by_project: dict[str, list[int]] = {}
        self._watches = DisconnectWatches()  # notices clients that leave (without our server protocol)

    async def start(self, providers: list[Provider]) -> None:
        """Open the upstream client; set up the offline model now if a project uses it (not in
        the first request's time)."""
        from .upstream import AiohttpUpstream

        self.client = AiohttpUpstream(self.config)
        demo = next((p for p in providers if p.kind == DEMO), None)
        if demo is not None:
            self.upstream_for(demo)

    async def aclose(self) -> None:
        for client in (self.client, self.demo_client):
            if client is not None:
                await client.aclose()
        self.client = self.demo_client = None

    def upstream_for(self, provider: Provider) -> Upstream:
        if provider.kind == DEMO:
            if self.demo_client is None:
                from .demo_model import DemoUpstream

                self.demo_client = DemoUpstream()
            return self.demo_client
        assert self.client is not None, "Forwarder.start() was not run"
        return self.client

    # -- one request -------------------------------------------------------------------------------
    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Responder,
        t0: float,
        endpoint: str,
        key_id: str,
        project: Project,
    ) -> None:
        await self.store.wait_for_room()  # --when-behind block: hold new requests while the writer catches up
        ex = Exchange(_new_trace_id(), time.time(), t0, scope["method"], endpoint)
        ex.key_id = key_id
        ex.project = project.name
        ex.policy = project.policy
        call = Call(scope, receive, send, ex)
        self.inflight += 1
        counts = self._by_project.get(project.name)
        if counts is None:
            counts = self._by_project[project.name] = [0, 0, 0]
        counts[0] += 1
        try:
            if await self._prepare(call, project):
                await self._forward(call)
        except Exception as exc:  # a bug of ours: a JSON 500 (or a cut-off answer) and the trace says so
            log.exception("internal error while proxying %s %s (trace %s)", ex.method, endpoint, ex.id)
            ex.status, ex.error = "error", f"internal error in the proxy ({type(exc).__name__})"
            ex.t_end = time.perf_counter()
            if not send.started:
                error = internal_error(exc)
                ex.http_status = error.status
                ex.response_body = error.body()
                ex.response_content_type = "application/json"
                self._submit(ex)
                await respond(send, error.status, ex.response_body, [call.trace_header])
        finally:
            self._submit(ex)
            self.inflight -= 1
            counts[0] -= 1

    async def _prepare(self, call: Call, project: Project) -> bool:
        """Read, check and route the request; ``False`` if it has been answered (an error of
        ours, recorded)."""
        ex, scope = call.ex, call.scope
        method, endpoint = ex.method, ex.endpoint
        upstream_key = None
        content_length = -1
        content_type = b""
        for name, value in scope["headers"]:
            if name.startswith(b"x-prysm-"):
                if name == b"x-prysm-upstream-key":
                    upstream_key = value.strip() or None
                else:
                    _prysm_header(ex, name, value)
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                content_type = value
        ex.request_content_type = content_type.decode("latin-1")
        limit = self.config.max_body_bytes
        try:
            if content_length > limit:
                raise TooLarge
            body = await read_body(call.receive, limit)
        except TooLarge:
            message = f"Request body larger than {limit} bytes"
            await self._fail(call, 413, message, "invalid_request_error", "request_too_large")
            return False
        except Disconnected:
            refused = None if call.send.connection is None else call.send.connection.refusal
            if refused is not None:  # the server answered it (a stalled or malformed body) and closed
                ex.status, (ex.http_status, ex.error) = "error", refused
            else:
                ex.status, ex.http_status = "cancelled", None
                ex.error = "client disconnected before sending the whole request"
            ex.t_end = time.perf_counter()
            self._submit(ex)
            return False
        ex.request_body = body
        parsed = None
        json_required = method == "POST" and endpoint in JSON_ENDPOINTS
        if not body and json_required:
            message = "The request body is empty. It must be a JSON object."
            await self._fail(call, 400, message, "invalid_request_error", "invalid_json")
            return False
        if body and (endpoint in JSON_ENDPOINTS or b"json" in content_type):
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError) as exc:
                parsed = None
                if json_required:
                    detail = "It is nested too deeply. " if isinstance(exc, RecursionError) else ""
                    message = (
                        f"We could not parse the JSON body of your request. {detail}The body must be a JSON object."
                    )
                    await self._fail(call, 400, message, "invalid_request_error", "invalid_json")
                    return False
            if isinstance(parsed, dict):
                model = parsed.get("model")
                ex.model = model if isinstance(model, str) else None
                ex.stream = parsed.get("stream") is True
            elif json_required:
                message = "The request body must be a JSON object."
                await self._fail(call, 400, message, "invalid_request_error", "invalid_json")
                return False
        routed = project.route(ex.model)
        if routed is None:
            what = f"the model {ex.model!r}" if ex.model else "a request without a model"
            message = (
                f"Project {project.name!r} has no provider for {what}: no provider lists it in `models` or "
                "matches it by `prefix`, and the project has no `default_provider` (see the proxy's config)."
            )
            await self._fail(call, 400, message, "invalid_request_error", "model_not_routed")
            return False
        provider, upstream_model = routed
        ex.provider = provider.name
        ex.provider_prices = provider.prices or None
        ex.price_ref = provider.price_ref
        if project.limited:
            refusal = self.limits.check(project)
            if refusal is not None:
                await self._fail(call, 429, refusal.message, refusal.type, refusal.code, list(refusal.headers))
                return False
            call.counts_spend = project.limits.monthly_budget_usd is not None
        if isinstance(parsed, dict):
            if upstream_model is not None:  # a prefix rule: the provider knows the model without it
                ex.sent_model = upstream_model
                parsed = {**parsed, "model": upstream_model}
                body = json.dumps(parsed, ensure_ascii=False).encode("utf-8")
            if ex.stream and endpoint in USAGE_ENDPOINTS and self.config.inject_stream_usage:
                body, call.inject = inject_usage(body, parsed)
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path.startswith(_PREFIX_BYTES):  # as the client encoded it
            tail = raw_path[len(_PREFIX_BYTES) :].decode("latin-1")
        else:
            tail = quote(endpoint)
        query = scope.get("query_string")
        call.url = provider.url(tail, upstream_model or ex.model, query.decode("latin-1") if query else "")
        headers = request_headers(scope["headers"])
        auth = provider.auth_header(upstream_key)
        if upstream_key is not None or provider.credential is not None:  # masked in the stored trace
            ex.sent_secrets = (upstream_key or b"", provider.credential or b"")
            if upstream_key is None:
                call.credential = provider.credential
        if auth is not None:
            if auth[0] != b"authorization":  # Azure's api-key: never relay one the client sent
                headers = [h for h in headers if h[0] != auth[0]]
            headers.append(auth)
        call.headers = headers
        call.body = body
        call.upstream = self.upstream_for(provider)
        return True

    async def _fail(
        self,
        call: Call,
        status: int,
        message: str,
        type_: str,
        code: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer with an error of our own and record it."""
        ex = call.ex
        ex.status = "timeout" if status == 504 else "error"
        ex.http_status = status
        ex.error = message
        ex.error_code = code
        ex.t_end = time.perf_counter()
        ex.response_body = error_body(message, type_, code)
        ex.response_content_type = "application/json"
        self._submit(ex)
        await respond(call.send, status, ex.response_body, [call.trace_header, latency_header(ex), *(extra or ())])

    async def _forward(self, call: Call) -> None:
        # A client that leaves cancels the upstream request at once.
        connection = connection_of(call.send)
        if connection is not None:  # the server tells us (uvicorn with the guard: the default)
            task = asyncio.current_task()
            assert task is not None
            watch: Watch = connection.watch(task)
        else:
            watch = self._watches.start(call.receive)
        try:
            await self._exchange(call, watch)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            uncancel()
            if not call.ex.submitted:
                call.ex.http_status = None
            _cancel(call.ex, "the client disconnected before the answer")
        finally:
            watch.stop()

    async def _exchange(self, call: Call, watch: Watch) -> None:
        """Send the request upstream and relay its answer (a stream chunk by chunk)."""
        ex = call.ex
        assert call.upstream is not None
        try:
            response = await call.upstream.send(ex.method, call.url, call.headers, call.body)
        except UPSTREAM_ERRORS as exc:
            watch.stop()
            await self._upstream_failed(call, exc, answering=False)
            return
        try:
            status = ex.http_status = response.status
            headers, ctype, request_id = response_headers(response.raw_headers)
            ex.response_content_type = ctype.decode("latin-1")
            if request_id is not None:
                ex.provider_request_id = request_id.decode("latin-1")
            headers.append(call.trace_header)
            if status < 400 and ctype.startswith(b"text/event-stream"):
                ex.stream = True
                headers.append((b"x-accel-buffering", b"no"))
                if isinstance(watch, DisconnectWatch):  # (its task starts late, for short answers)
                    watch.stop()
                    watch = StreamWatch(call.receive)
                await self._relay_stream(call, response, headers, watch)
                return
            try:
                ex.response_body = await response.read()
            except UPSTREAM_ERRORS as exc:
                watch.stop()
                await self._upstream_failed(call, exc, answering=True)
                return
            watch.stop()
            ex.t_end = time.perf_counter()
            if status >= 400:
                ex.status = "error"
                credential = call.credential
                if credential is not None and credential in ex.response_body:
                    # A provider's error that echoes the proxy's stored credential: never shown
                    # to the client (a project's key holder), masked byte for byte.
                    ex.response_body = ex.response_body.replace(credential, b"*" * len(credential))
            headers.append((b"content-length", str(len(ex.response_body)).encode()))
            headers.append(latency_header(ex))
            if call.counts_spend:
                self._count_spend(ex)  # before answering: the client's next request meets it
            self._submit(ex)  # before answering: a client that has its answer finds its trace
            await send_whole(call.send, status, headers, ex.response_body)
        finally:
            await response.aclose()

    async def _upstream_failed(self, call: Call, exc: BaseException, answering: bool) -> None:
        """Answer 504 (the upstream too slow) or 502 (unreachable, or it broke off) and log it
        (rate-limited); ``answering``: the upstream had begun its answer."""
        ex = call.ex
        if isinstance(exc, TIMEOUT_ERRORS):  # (first: asyncio's TimeoutError is an OSError too)
            status, code = 504, "upstream_timeout"
            message = "the upstream timed out while answering" if answering else "the upstream did not answer in time"
        else:
            status, code = 502, "upstream_unreachable"
            what = "the upstream broke off its answer" if answering else "upstream unreachable"
            message = f"{what} ({type(exc).__name__})"
        where = f"{call.url.split('?', 1)[0]}: provider {ex.provider!r} of project {ex.project!r}"
        self.warnings.event("upstream", f"{status} to the client: {message} ({where})")
        await self._fail(call, status, message, "upstream_error", code)

    async def _relay_stream(
        self, call: Call, response: UpstreamResponse, headers: list[tuple[bytes, bytes]], watch: Watch
    ) -> None:
        """Relay the stream in this task; ``watch`` cancels it if the client goes away before the
        end (the caller then closes the upstream request)."""
        ex, send = call.ex, call.send
        stripper = UsageStripper() if call.inject else None
        chunks = ex.chunks
        connection: Connection | None = connection_of(send)
        if connection is not None:
            connection.hold()  # the head waits for what the upstream sent with its own
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            try:
                first = response.buffered()
                if first:
                    chunks.append((time.perf_counter(), first))
                    out = first if stripper is None else stripper.feed(first)
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                if connection is not None:
                    connection.release()
                if stripper is None:
                    async for chunk in response.chunks():
                        chunks.append((time.perf_counter(), chunk))
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                else:
                    feed = stripper.feed
                    async for chunk in response.chunks():
                        chunks.append((time.perf_counter(), chunk))
                        out = feed(chunk)
                        if out:
                            await send({"type": "http.response.body", "body": out, "more_body": True})
            except TIMEOUT_ERRORS:
                ex.status, ex.error = "timeout", "the upstream stopped sending (read timeout)"
            except TRANSPORT_ERRORS as exc:
                ex.status, ex.error = "error", f"the upstream broke off the stream ({type(exc).__name__})"
            if ex.status != "success" and ex.error is not None:
                # End the client's response abnormally (no terminating chunk): its client raises
                # instead of taking a cut-off answer for a complete one. uvicorn closes the
                # connection when the app returns with the response unfinished.
                watch.stop()
                ex.t_end = time.perf_counter()
                self._submit(ex)
                log.warning("trace %s: %s; the client's response was cut off too", ex.id, ex.error)
                return
            tail = stripper.flush() if stripper is not None else b""
            watch.stop()  # from here on a client that leaves has had everything
            ex.t_end = time.perf_counter()
            if call.counts_spend:
                self._count_spend(ex)  # before the last frame: the client's next request meets it
            self._submit(ex)  # before the last frame: a client that has its answer finds its trace
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone:  # the server is going away
                _cancel(ex, "the proxy was shut down mid-stream")
                raise
            # The client went away first (the watch cancelled us): stop reading; the caller's
            # response.aclose() closes the upstream request.
            uncancel()
            if stream_finished(chunks):
                # The client hung up after the end-of-stream marker (the openai SDK stops at
                # [DONE]): it got everything, so this is a success that ended when the marker
                # was forwarded.
                if not ex.submitted:
                    ex.t_end = chunks[-1][0]
                return
            _cancel(ex, "the client disconnected mid-stream")
        finally:
            if connection is not None:
                connection.release()
            watch.stop()

    def _count_spend(self, ex: Exchange) -> None:
        """Count the answer's cost towards its project's monthly budget now, as it completes (the
        writer would count it a batch later: a client sending one request after another passed the
        budget by a dozen requests). Only for a project with a budget: it parses the answer's usage."""
        try:
            cost = answer_cost(ex, self.prices)
        except Exception:  # observability never fails the request: the writer counts it instead
            log.exception("trace %s: could not price the answer for the budget", ex.id)
            return
        ex.spend_counted = True
        self.limits.add_spend(ex.project, cost, ex.created_at)

    def _submit(self, ex: Exchange) -> None:
        """Queue the trace once; after this the store's writer owns ``ex``."""
        if not ex.submitted:
            ex.submitted = True
            counts = self._by_project[ex.project]
            counts[1] += 1
            if not self.store.submit(ex):
                counts[2] += 1

    def project_counters(self, project: str) -> dict[str, int]:
        """One project's share of the proxy's counters (since start-up): what its keys may see of
        a proxy that serves other projects too."""
        inflight, submitted, dropped = self._by_project.get(project, (0, 0, 0))
        return {"inflight": inflight, "submitted": submitted, "dropped": dropped}


def _prysm_header(ex: Exchange, name: bytes, value: bytes) -> None:
    """Take the caller's user, session or metadata from an ``X-Prysm-*`` header (a malformed one
    is noted on the trace, never refused)."""
    label = name.decode("latin-1")
    if len(value) > _wire.MAX_HEADER_VALUE_BYTES:
        ex.notes.append(f"{label} ignored: longer than {_wire.MAX_HEADER_VALUE_BYTES} bytes")
        return
    try:
        text = _wire.header_text(value)
        if name == b"x-prysm-metadata":
            ex.metadata = _wire.decode_metadata(text)
        elif name == b"x-prysm-user-id":
            ex.user_id = _wire.decode_id(text)
        elif name == b"x-prysm-session-id":
            ex.session_id = _wire.decode_id(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        ex.notes.append(f"{label} ignored: malformed ({type(exc).__name__}: {str(exc)[:200]})")
    except RecursionError:
        ex.notes.append(f"{label} ignored: nested too deeply to decode")


def _cancel(ex: Exchange, why: str) -> None:
    if ex.submitted:  # the stream had already ended
        return
    ex.status = "cancelled"
    ex.error = why
    ex.t_end = time.perf_counter()


def _new_trace_id() -> str:
    """A random UUID (version 4) as 32 hex digits, as ``uuid.uuid4().hex`` gives it at a third of
    the cost (no UUID object on the request path)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()
