"""The proxy as a pure-ASGI application: lifecycle and routing.

Routes below ``/api/v1/`` (a declared table, :data:`~..api.reads.ROUTES` plus ``health``):

* ``GET health`` -- no key: ``ok`` / ``degraded`` only; with a key also the upstream, the store's
  counters and why it is degraded;
* the read API (``traces``, ``traces/{id}``, ``stats``, ``overview``, ``sessions``, ``users``,
  ``me``: :mod:`..api.reads`) -- a project's key reads that project's traces, an admin key every
  project's; and its writes, scores (``POST traces/{id}/scores``, ``DELETE scores/{id}``);
* anything else -- authenticated by a project's key, checked against the project's limits,
  routed to one of its providers and captured as one trace by the :class:`~.forward.Forwarder`.

Before any of them, a path with a ``.`` or ``..`` segment (in any encoding) is refused (``400``),
and an address that failed to authenticate too often meets the failed-auth throttle
(:class:`~..web.auth.AuthThrottle`, ``429``); neither is a trace. Every path outside ``/api/v1``
goes to the dashboard (:mod:`..web`), whose pages read the same read API. Who may do what comes
from a :class:`~..config.projects.Tenancy`; with a config file, SIGHUP or a change of the file
reloads it (:mod:`..config.reload`), and a request in flight finishes under the tenancy it started
with.

One error path: an :class:`~..asgi.HTTPError` is answered as such; anything else raised while
handling a request becomes ``500 internal_error`` (a bug) and, for a forwarded request, its one
trace; if the answer had already begun, it is cut off (the client sees a broken response, not a
complete one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import partial

from ... import _wire
from ..api import jsonshape
from ..api.download import Download
from ..api.downloadproc import Exports
from ..api.reads import Reads, pricing_note
from ..asgi import (
    CONNECTION_KEY,
    HTTPError,
    Responder,
    client_name,
    dot_segment,
    internal_error,
    respond,
    respond_error,
)
from ..config.file import load_tenancy
from ..config.pricing import PriceTable
from ..config.reload import ConfigWatch
from ..config.settings import default_outbox_path
from ..export.process import ExportProcess, providers_of
from ..store import Store, StoreUnavailable, engine_for
from ..store.budgets import month_start
from ..store.capture import fallback_row, finalize
from ..store.journal import Journal
from ..store.outbox import OutboxEngine, Shipper
from ..store.postgres.engine import PostgresEngine, is_postgres
from ..store.queries import month_spend
from ..store.retention import Retention
from ..store.writer import TraceWriter
from ..store.writerproc import WriterProcess
from ..web import Dashboard
from ..web.auth import AuthThrottle, Sessions, shared_cookie_name
from .forward import PREFIX, Forwarder
from .limits import Limits
from .ratelog import RateLimitedLog
from .sharing import Sharing, replica_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from typing import Any

    from ..asgi import Receive, Scope, Send
    from ..config.projects import KeyEntry, Tenancy
    from ..config.settings import ProxyConfig
    from ..store.capture import Exchange
    from ..store.engine import Engine

log = logging.getLogger("prysmai.proxy")
_HEALTH = "health"
_DOT_SEGMENT_ERROR = HTTPError(
    400,
    "The request path has a '.' or '..' segment (as sent or percent-encoded); the proxy does not forward "
    "such a path, which an upstream would resolve to another one. Send the path without it.",
    "invalid_path",
)


class ProxyApp:
    """The capture proxy: ``config`` (its settings), ``tenancy`` (who may do what) and ``prices``,
    as the CLI loaded them (each loaded from ``config`` when not given). ``startup()`` and
    ``shutdown()`` run from ASGI lifespan (or by hand)."""

    def __init__(self, config: ProxyConfig, tenancy: Tenancy | None = None, prices: PriceTable | None = None) -> None:
        self.config = config
        #: Projects, keys and providers; replaced whole by a reload (never changed in place).
        self.tenancy: Tenancy = tenancy if tenancy is not None else _load(config)
        self.prices = prices if prices is not None else PriceTable.load(config.pricing_file)
        self.limits = Limits()
        self.store = _trace_store(
            config, self.prices, self.limits, self._retention_plan, lambda: self.tenancy.credentials
        )
        self.warnings = RateLimitedLog(log)  # floods (502s, rejected keys): first line, then summaries
        self.forwarder = Forwarder(config, self.store, self.limits, self.warnings, self.prices)
        pricing = pricing_note(self.prices)
        #: The OTLP export (``None``: off).
        self.export = _export(config, self.tenancy, pricing)
        self.reads = Reads(
            self.store,
            lambda: self.tenancy,
            inflight=lambda: self.forwarder.inflight,
            project_counters=self.forwarder.project_counters,
            pricing=pricing,
            export=self.export,
            public_url=config.public_url,
            exports=_exports(config, self.store),
        )
        #: Failed authentications per client address, on the API and at the dashboard's log-in.
        self.throttle = AuthThrottle(note=lambda message: self.warnings.event("auth-throttle", message))
        #: Every path outside /api/v1.
        secret = self.tenancy.session_secret  # the config file's, or a random one of this process
        sessions = Sessions(secret, configured=secret is not None)
        self.web = Dashboard(self.reads, sessions=sessions, throttle=self.throttle, cookie=_shared_cookie(config))
        #: Limits and log-ins shared with the other replicas of a PostgreSQL store (``None``: alone).
        self.sharing = _sharing(config, self.store, self.limits, self.web.sessions)
        self.reads.sharing = self.sharing
        self._watch: ConfigWatch | None = None

    def __repr__(self) -> str:
        return f"ProxyApp({self.tenancy!r}, store={self.store!r})"

    def _retention_plan(self) -> tuple[dict[str, float | None], float | None]:
        """Each project's retention now (a reload may change them), and that of the traces of
        projects no longer configured (``--retention``)."""
        projects = {name: p.policy.retention_seconds for name, p in self.tenancy.projects.items()}
        return projects, self.config.retention_seconds

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.store.open()
        await asyncio.to_thread(self._switch_export)
        if self.export is not None:
            self.export.start()
        await self.forwarder.start([p for project in self.tenancy.projects.values() for p in project.providers])
        if self.sharing is not None:
            # The replicas' counts and signing secret, before the first request if the database
            # answers now (the month's spend in the store comes with them).
            self.sharing.start(asyncio.get_running_loop())
            await asyncio.to_thread(self.sharing.first_exchange, 5.0)
        else:
            since = month_start(time.time())
            try:
                spent = await self.store.read(month_spend, since)
            except StoreUnavailable as exc:  # pragma: no cover - a store of one proxy is local
                log.warning("%s: this month's spend is counted from now on for the monthly budgets", exc)
                spent = {}
            self.limits.seed(spent, since)
        path = self.config.config_file
        load = partial(_load, self.config) if path else None
        self._watch = ConfigWatch(path, load, self._use, baseline=self.tenancy.stamp)
        self._watch.start()

    def _use(self, tenancy: Tenancy) -> None:
        """Use a reloaded config for every request from now on (a file that did not load was
        refused by the watch, and the current tenancy stays)."""
        if tenancy.session_secret != self.tenancy.session_secret:
            log.warning(
                "the config's [dashboard] session_secret changed: it takes effect when the proxy restarts "
                "(log-ins stay signed with the one it started with)"
            )
        self.tenancy = tenancy
        if self.export is not None:
            self.export.update(tenancy)
        log.info("config reloaded from %s: %s", self.config.config_file, summary(tenancy))

    async def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self.warnings.close()
        await self.forwarder.aclose()
        if self.sharing is not None:
            await asyncio.to_thread(self.sharing.stop)
        if self.reads.exports is not None:  # (uvicorn's graceful shutdown is over: end them)
            self.reads.exports.close()
        await asyncio.to_thread(self.store.close)
        if self.export is not None:  # after the writer: what it wrote last goes out too
            await asyncio.to_thread(self.export.stop)

    def _switch_export(self) -> None:
        """Have the store fill its export outbox, or not (then what waited in it is dropped). On
        a shared store, the export reads this replica's outbox (local: never waits on the database)."""
        engine = self.store.engine if self.store.shipper is None else self.store.shipper.outbox
        conn = engine.open_for_writing()
        try:
            dropped = engine.set_export(conn, self.export is not None)
        finally:
            conn.close()
        if dropped:
            log.warning(
                "OTLP export is off: %d trace(s) that waited to be exported from an earlier run were dropped "
                "from the export outbox (they stay in the store)",
                dropped,
            )

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
        except HTTPError as exc:
            if not responder.started:
                await respond_error(responder, exc)
        except Exception as exc:  # the one error path: never the server's bare 500
            log.exception("internal error while handling %s %s", scope.get("method"), scope.get("path"))
            if not responder.started:
                await respond_error(responder, internal_error(exc))
            # else: return with the response unfinished; the server cuts the connection

    def _route(self, scope: Scope, receive: Receive, send: Responder, t0: float) -> Awaitable[None]:
        """The handler of this request, as the coroutine to await: routing needs no awaiting, and
        a coroutine of its own would sit under every resumption of a relayed stream."""
        path: str = scope["path"]
        if dot_segment(path):  # before routing and authentication: no trace, as the guard's refusals
            return respond_error(send, _DOT_SEGMENT_ERROR)
        if not path.startswith(PREFIX):
            return self.web(scope, receive, send)
        endpoint = path[len(PREFIX) :]
        auth = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
                break
        if auth is not None and self.throttle.failures:  # (someone failed lately: is it this address?)
            wait = self.throttle.retry_after(client_name(scope))
            if wait is not None:
                return respond_error(send, self.throttle.refusal(wait))
        entry = self.tenancy.identify(auth)
        if entry is not None:
            if send.connection is not None:
                send.connection.trust()
        elif auth is not None:
            self.throttle.failed(client_name(scope))
        if endpoint == _HEALTH:
            return self._health(send, entry)
        if entry is None:
            msg = "Missing Prysm API key" if auth is None else "Invalid Prysm API key"
            self.warnings.event("auth", f"401 {msg.lower()} from {client_name(scope)} on {scope['method']} {path}")
            return respond_error(
                send,
                HTTPError(
                    401,
                    f"{msg}. Send 'Authorization: Bearer sk-prysm-...' with "
                    f"{_wire.KEYS_FROM_CONFIG if self.config.config_file else _wire.KEYS_FROM_FLAGS}.",
                    "invalid_api_key",
                ),
            )
        if self.reads.writes(endpoint):
            return self._write(scope, receive, send, entry)
        if self.reads.route(endpoint) is not None:
            return self._read(scope, receive, send, entry)
        if entry.project is None:
            message = "Admin keys read every project's traces but cannot send requests; use a project's key."
            return respond_error(send, HTTPError(403, message, "admin_key_cannot_send"))
        return self.forwarder(scope, receive, send, t0, endpoint, entry.key_id, entry.project)

    async def _health(self, send: Send, entry: KeyEntry | None) -> None:
        await respond(send, 200, jsonshape.encode(await self.reads.health(entry)))

    async def _read(self, scope: Scope, receive: Receive, send: Send, entry: KeyEntry) -> None:
        if scope["method"] != "GET":
            raise HTTPError(405, "Only GET is supported here", "method_not_allowed")
        document = await self.reads.serve(scope, PREFIX, entry)
        if isinstance(document, Download):
            await document.send(send, receive)
        else:
            await respond(send, 200, jsonshape.encode(document))

    async def _write(self, scope: Scope, receive: Receive, send: Send, entry: KeyEntry) -> None:
        status, document = await self.reads.write(scope, receive, PREFIX, entry, "api")
        await respond(send, status, jsonshape.encode(document))


def _load(config: ProxyConfig) -> Tenancy:
    return load_tenancy(
        config.config_file, config.keys, config.upstream, config.upstream_api_key, config.storage_policy()
    )


def _trace_store(
    config: ProxyConfig,
    prices: PriceTable,
    limits: Limits,
    plan: Callable[[], tuple[dict[str, float | None], float | None]],
    credentials: Callable[[], Iterable[bytes]],
) -> Store:
    """The proxy's store: its writer masks the ``credentials`` the proxy holds in each trace,
    builds its row (in a child process by default) and counts its cost towards the project's
    monthly budget; its retention follows ``plan``. A PostgreSQL store is written through a local
    outbox, which a shipper sends on (:mod:`..store.outbox`)."""
    finalize_here = partial(_finalize_counting, prices=prices, limits=limits)
    process = None
    if config.trace_writer == "process":
        process = WriterProcess(prices, finalize_here, on_cost=limits.add_spend)
    engine: Engine
    written_to: Engine
    shipper = None
    if is_postgres(config.db_path):  # shared: traces go to a local outbox first, then are shipped
        shared = PostgresEngine(config.db_path, search_index=config.search_index)
        outbox = OutboxEngine(config.outbox_path or default_outbox_path())
        shipper = Shipper(outbox, shared)
        engine, written_to = shared, outbox
    else:
        engine = written_to = engine_for(config.db_path, search_index=config.search_index)
    writer = TraceWriter(
        written_to,
        finalize_here,
        config.queue_size,
        when_behind=config.when_behind,
        fallback=fallback_row,
        process=process,
        secrets=credentials,
        on_written=shipper.notify if shipper is not None else None,
        journal=_journal_of(written_to),
    )
    # On a shared store every replica runs it: deletes of the same rows and drops of the same day
    # are each done once (the database's row and table locks), whichever replica comes first.
    retention = Retention(engine, plan)
    return Store(engine, writer, shipper=shipper, retention=retention)


def _sharing(config: ProxyConfig, store: Store, limits: Limits, sessions: Sessions) -> Sharing | None:
    """The sharing thread of a replica on a PostgreSQL store (``None``: a store of its own)."""
    if store.shipper is None or not isinstance(store.engine, PostgresEngine):
        return None
    name = replica_name(config.outbox_path or default_outbox_path())
    return Sharing(store.engine, name, limits, sessions)


def _shared_cookie(config: ProxyConfig) -> str | None:
    """The session cookie's name on replicas of one PostgreSQL database (and ``prysmai ui`` on it):
    the same on each, their ports may differ behind a load balancer."""
    return shared_cookie_name(config.db_path) if is_postgres(config.db_path) else None


def _exports(config: ProxyConfig, store: Store) -> Exports | None:
    """The downloads' processes, which open the store by its ``--db`` (``None`` for a SQLite store
    in memory, which no other process can open: its downloads are read on the read runner)."""
    location = config.db_path
    if not is_postgres(location) and (location == ":memory:" or location.startswith("file:")):
        return None
    return Exports(
        location,
        time_limit=store.reader.time_limit,
        max_running=config.max_exports,
        priority=config.export_priority,
    )


def _journal_of(engine: Engine) -> Journal | None:
    """The writer's journal, in a directory beside the file it writes (``traces.db.journal``)."""
    path = getattr(engine, "path", None)
    if not isinstance(path, str) or path == ":memory:" or path.startswith("file:"):
        return None
    return Journal(os.path.realpath(path) + ".journal")


def _export(config: ProxyConfig, tenancy: Tenancy, pricing: str) -> ExportProcess | None:
    if config.otlp_endpoint is None:
        return None
    from ... import __version__

    # On a PostgreSQL store each replica exports the traces it answered, from its own outbox.
    outbox = (config.outbox_path or default_outbox_path()) if is_postgres(config.db_path) else None
    return ExportProcess(
        {
            "db": config.db_path,
            "outbox": outbox,
            "endpoint": config.otlp_endpoint,
            "content": config.otlp_content,
            "sample": config.otlp_sample,
            "providers": providers_of(tenancy),
            "price_source": pricing,
            "version": __version__,
        }
    )


def summary(tenancy: Tenancy) -> str:
    """``N project(s) (names), M key(s)``, for the log."""
    names = ", ".join(sorted(tenancy.projects))
    return f"{len(tenancy.projects)} project(s) ({names}), {len(tenancy)} key(s)"


def _finalize_counting(ex: Exchange, prices: PriceTable, limits: Limits) -> dict[str, Any]:
    """The trace row (:func:`~..store.capture.finalize`, on the writer thread), its cost counted
    towards the project's monthly budget (unless the proxy counted it as it answered)."""
    row = finalize(ex, prices)
    if not ex.spend_counted:
        limits.add_spend(ex.project, row.get("cost_usd"), ex.created_at)
    return row
