"""The proxy as a pure-ASGI application: lifecycle and routing.

Routes (all below ``/api/v1``):

* ``GET health`` -- no key: ``ok`` / ``degraded`` only; with a key also the upstream, the store's
  counters and why it is degraded (:mod:`.readapi`).
* ``GET traces``, ``GET traces/{id}``, ``GET stats`` -- the read API (key required; :mod:`.readapi`).
* anything else -- authenticated, forwarded to the upstream, captured as one trace (the forwarding
  path, :mod:`.forward`, which :class:`ProxyApp` inherits).

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

from .asgi import Responder, client_name, error_body, internal_error_body, respond
from .capture import fallback_row, finalize
from .config import ProxyConfig
from .disconnect import DisconnectWatches
from .forward import PREFIX, Forwarding
from .keys import KeyRing
from .pricing import PriceTable
from .ratelog import RateLimitedLog
from .readapi import ReadApi
from .store import TraceStore
from .upstream import Upstream, base_url, make_upstream
from .web import make_dashboard

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .asgi import Receive, Scope, Send

log = logging.getLogger("prysmai.proxy")


class ProxyApp(Forwarding):
    """The capture proxy. ``startup()``/``shutdown()`` run from ASGI lifespan (or by hand)."""

    def __init__(self, config: ProxyConfig, prices: PriceTable | None = None) -> None:
        self.config = config
        self.keys = KeyRing(config.keys)
        self.prices = prices if prices is not None else PriceTable.load(config.pricing_file)
        self.store = TraceStore(
            config.db_path,
            partial(finalize, prices=self.prices),
            config.queue_size,
            when_behind=config.when_behind,
            fallback=fallback_row,
        )
        self.base = base_url(config)
        self.default_upstream_key = config.upstream_api_key.encode("latin-1") if config.upstream_api_key else None
        self.client: Upstream | None = None
        self.inflight = 0
        self.warnings = RateLimitedLog(log)  # floods (502s, rejected keys): first line, then summaries
        self._watches = DisconnectWatches()  # notices clients that leave while the upstream thinks
        #: Every path outside /api/v1: the dashboard (see web/app.py).
        self.web = make_dashboard(config.db_path, self.keys, self.prices)
        #: /api/v1/health and the read API (readapi.py), reading through the dashboard's runner.
        self.read_api = ReadApi(config, self.store, self.base, lambda: self.inflight, self.web.runner)

    def __repr__(self) -> str:
        return f"ProxyApp(upstream={self.config.upstream!r}, db={self.config.db_path!r}, keys={len(self.keys)})"

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.store.open()
        self.client = make_upstream(self.config)

    async def shutdown(self) -> None:
        self.warnings.close()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
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
        responder = Responder(send)
        try:
            await self._route(scope, receive, responder, t0)
        except Exception as exc:  # the one error path: never the server's bare 500
            log.exception("internal error while handling %s %s", scope.get("method"), scope.get("path"))
            if not responder.started:
                await respond(responder, 500, internal_error_body(exc))
            # else: return with the response unfinished; the server cuts the connection

    async def _route(self, scope: Scope, receive: Receive, send: Responder, t0: float) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if not path.startswith(PREFIX):
            await self.web(scope, receive, send)
            return
        endpoint = path[len(PREFIX) :]
        auth = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
                break
        key_id = self.keys.identify(auth)
        if endpoint == "health":
            await self.read_api.health(send, key_id is not None)
            return
        if key_id is None:
            msg = "Missing Prysm API key" if auth is None else "Invalid Prysm API key"
            self.warnings.event("auth", f"401 {msg.lower()} from {client_name(scope)} on {method} {path}")
            await respond(
                send,
                401,
                error_body(
                    f"{msg}. Send 'Authorization: Bearer sk-prysm-...' with a key this proxy accepts.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
            return
        if endpoint == "traces" or endpoint == "stats" or endpoint.startswith("traces/"):
            await self.read_api.read(scope, send, method, endpoint)
            return
        await self._proxy(scope, receive, send, t0, method, endpoint, key_id)
