"""The proxy as a pure-ASGI application: lifecycle and routing.

Routes (all below ``/api/v1``):

* ``GET health`` -- no key: ``ok`` / ``degraded`` only; with a key also the upstream, the store's
  counters and why it is degraded (:mod:`.readapi`).
* ``GET traces``, ``GET traces/{id}``, ``GET stats`` -- the read API (key required; :mod:`.readapi`):
  a project's key reads that project's traces, an admin key every project's.
* anything else -- authenticated by a project's key, checked against the project's limits
  (:mod:`.limits`), routed to one of its providers (:mod:`.projects`), captured as one trace (the
  forwarding path, :mod:`.forward`, which :class:`ProxyApp` inherits).

Who may do what comes from a :class:`~.projects.Tenancy`: the ``--config`` file's projects, or
the command line's keys and upstream as the one project ``default``. With a config file, SIGHUP
or a change of the file reloads it (:mod:`.reload`); a request in flight finishes under the
tenancy it started with.

Every path outside ``/api/v1`` goes to the dashboard (:mod:`.web`). The ASGI vocabulary and our own
JSON answers are in :mod:`.asgi`; the stream-usage rewriting in :mod:`.usage`.

One error path: anything raised while handling a request becomes an OpenAI-style JSON error of
ours (``500 internal_error``: a bug) and, for a forwarded request, its one trace; if the answer
had already begun, it is cut off (the client sees a broken response, not a complete one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from ..api.reads import ReadApi
from ..asgi import CONNECTION_KEY, Responder, client_name, error_body, internal_error_body, respond
from ..config.pricing import PriceTable
from ..config.projects import DEMO, Tenancy, flat
from ..config.reload import ConfigWatch
from ..config.settings import ProxyConfig
from ..store.capture import fallback_row, finalize
from ..store.queries import month_spend
from ..store.writer import TraceStore
from ..store.writerproc import WriterProcess
from ..web import make_dashboard
from .disconnect import DisconnectWatches
from .forward import PREFIX, Forwarding
from .limits import Limits, month_start
from .ratelog import RateLimitedLog
from .upstream import AiohttpUpstream, Upstream

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable
    from typing import Any

    from ..asgi import Receive, Scope, Send
    from ..store.capture import Exchange

log = logging.getLogger("prysmai.proxy")


class ProxyApp(Forwarding):
    """The capture proxy. ``startup()``/``shutdown()`` run from ASGI lifespan (or by hand)."""

    def __init__(self, config: ProxyConfig, prices: PriceTable | None = None) -> None:
        self.config = config
        #: Projects, keys and providers; replaced whole by a reload (never changed in place).
        self.tenancy: Tenancy = load_tenancy(config)
        self.limits = Limits()
        self.prices = prices if prices is not None else PriceTable.load(config.pricing_file)
        finalize_here = partial(_finalize_counting, prices=self.prices, limits=self.limits)
        process = None
        if config.trace_writer == "process":
            process = WriterProcess(self.prices, finalize_here, on_cost=self.limits.add_spend)
        self.store = TraceStore(
            config.db_path,
            finalize_here,
            config.queue_size,
            when_behind=config.when_behind,
            fallback=fallback_row,
            process=process,
        )
        self.client: Upstream | None = None
        self.demo_client: Upstream | None = None
        self.inflight = 0
        self.warnings = RateLimitedLog(log)  # floods (502s, rejected keys): first line, then summaries
        self._watches = DisconnectWatches()  # notices clients that leave while the upstream thinks
        #: Every path outside /api/v1: the dashboard (see web/app.py).
        self.web = make_dashboard(config.db_path, lambda: self.tenancy, self.prices)
        #: /api/v1/health and the read API (readapi.py), reading through the dashboard's runner.
        self.read_api = ReadApi(lambda: self.tenancy, self.store, lambda: self.inflight, self.web.runner)
        self._watch: ConfigWatch | None = None

    def __repr__(self) -> str:
        return f"ProxyApp({self.tenancy!r}, db={self.config.db_path!r})"

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.store.open()
        self.client = AiohttpUpstream(self.config)
        providers = (p for project in self.tenancy.projects.values() for p in project.providers)
        demo = next((p for p in providers if p.kind == DEMO), None)
        if demo is not None:  # the offline model's import now, not in the first request's time
            self._upstream_for(demo)
        since = month_start(time.time())
        self.limits.seed(await self.web.runner.run(month_spend, since), since)
        path = self.config.config_file
        self._watch = ConfigWatch(path, self._reload if path else None)
        self._watch.start()

    def _reload(self) -> None:
        """Read the config file again and use it for every request from now on; a file that does
        not load is refused (the error is logged) and the current tenancy stays."""
        assert self.config.config_file is not None
        try:
            tenancy = load_tenancy(self.config)
        except (ValueError, OSError) as exc:  # ConfigError (file:line, never a key), unreadable file
            log.error("config reload refused, still using the previous config: %s", exc)
            return
        self.tenancy = tenancy
        log.info("config reloaded from %s: %s", self.config.config_file, _summary(tenancy))

    async def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self.warnings.close()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.demo_client is not None:
            await self.demo_client.aclose()
            self.demo_client = None
        await asyncio.to_thread(self.store.close)
        await asyncio.to_thread(self.web.runner.close)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:  # pragma: no cover
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- entry point -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":  # pragma: no cover - not proxied
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        responder = Responder(send, scope.get(CONNECTION_KEY))
        try:
            await self._route(scope, receive, responder, t0)  # (awaits the handler's own coroutine)
        except Exception as exc:  # the one error path: never the server's bare 500
            log.exception("internal error while handling %s %s", scope.get("method"), scope.get("path"))
            if not responder.started:
                await respond(responder, 500, internal_error_body(exc))
            # else: return with the response unfinished; the server cuts the connection

    def _route(self, scope: Scope, receive: Receive, send: Responder, t0: float) -> Awaitable[None]:
        """The handler of this request, as the coroutine to await: routing needs no awaiting, and
        a coroutine of its own would be one more frame on every resumption of a relayed stream."""
        path: str = scope["path"]
        method: str = scope["method"]
        if not path.startswith(PREFIX):
            return self.web(scope, receive, send)
        endpoint = path[len(PREFIX) :]
        auth = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
                break
        entry = self.tenancy.identify(auth)
        if endpoint == "health":
            return self.read_api.health(send, entry)
        if entry is None:
            msg = "Missing Prysm API key" if auth is None else "Invalid Prysm API key"
            self.warnings.event("auth", f"401 {msg.lower()} from {client_name(scope)} on {method} {path}")
            return respond(
                send,
                401,
                error_body(
                    f"{msg}. Send 'Authorization: Bearer sk-prysm-...' with a key this proxy accepts.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
        if endpoint == "traces" or endpoint == "stats" or endpoint.startswith("traces/"):
            return self.read_api.read(scope, send, method, endpoint, entry.project_name)
        if entry.project is None:
            return respond(
                send,
                403,
                error_body(
                    "Admin keys read every project's traces but cannot send requests; use a project's key.",
                    "invalid_request_error",
                    "admin_key_cannot_send",
                ),
            )
        return self._proxy(scope, receive, send, t0, method, endpoint, entry.key_id, entry.project)


def load_tenancy(config: ProxyConfig) -> Tenancy:
    """The config file's projects (``config.config_file``), else the command line's keys and
    upstream as the one project ``default``. Raises the config file's ``ConfigError``."""
    if config.config_file:
        from ..config.file import load

        return load(config.config_file)
    return flat(config.keys, config.upstream, config.upstream_api_key)


def _summary(tenancy: Tenancy) -> str:
    names = ", ".join(sorted(tenancy.projects))
    return f"{len(tenancy.projects)} project(s) ({names}), {len(tenancy)} key(s)"


def _finalize_counting(ex: Exchange, prices: PriceTable, limits: Limits) -> dict[str, Any]:
    """The trace row (:func:`~.capture.finalize`, on the writer thread), its cost counted
    towards the project's monthly budget."""
    row = finalize(ex, prices)
    limits.add_spend(ex.project, row.get("cost_usd"), ex.created_at)
    return row
