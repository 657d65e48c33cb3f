"""Running the proxy on uvicorn: in the foreground (``prysmai proxy``) or on a background thread
(``prysmai demo``, tests, embedding in another program)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import uvicorn

from ..config.reload import catch_sighup
from ..config.settings import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    ProxyConfig,
)
from .app import ProxyApp

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


class _CutOffFilter(logging.Filter):
    """The proxy cuts a client's response off on purpose when the upstream broke its stream (and
    logs that itself); uvicorn's generic error line for it would only add noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


def _quiet_cut_offs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _CutOffFilter) for f in logger.filters):
        logger.addFilter(_CutOffFilter())


def guard_options(
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> dict[str, Any]:
    """uvicorn's settings for the connection guard (:mod:`.guard`): header and body timeouts,
    header size, connection cap (the proxy's, and ``prysmai ui``'s with the defaults)."""
    try:
        from .guard import guarded_protocol

        return {"http": guarded_protocol(header_timeout, max_header_bytes, max_connections, body_timeout)}
    except ImportError:  # no httptools: h11's own size limit and uvicorn's (plain-text) cap
        return {"h11_max_incomplete_event_size": max_header_bytes, "limit_concurrency": max_connections}


def raise_open_files_limit(config: ProxyConfig) -> None:
    """Raise this process's soft limit on open descriptors (up to the hard one) to what the
    configured connection caps can use: one per client connection, two per upstream connection
    (the transport's and the duplicate :mod:`.upstream` reads ``TCP_INFO`` from), plus a margin.
    A common soft default is 1024, which the defaults (1000 + 2 * 1000) would exceed."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    want = config.max_client_connections + 2 * config.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):  # a platform that refuses: keep its limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def freeze_startup_objects(import_prices: bool = True) -> None:
    """Import what the writer thread would import on its first trace (``genai-prices``: ~30 k
    objects; only with ``import_prices``: a writer process imports it itself), then move every
    object alive now to the collector's permanent generation (``gc.freeze``). They live as long
    as the process anyway, and a full collection then no longer walks them: with
    ``genai-prices`` loaded, one took ~28 ms instead of ~11 ms, with every request in flight
    waiting (the collector holds the GIL). Only where the process is ours: frozen objects are
    never collected, which an application embedding the proxy did not ask for."""
    import gc

    if import_prices:
        from ..config import pricedb

        pricedb.available()
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()


def uvicorn_config(
    app: ProxyApp, host: str, port: int, log_level: str | None = "warning", **options: Any
) -> uvicorn.Config:
    """uvloop + httptools when installed (``uvicorn[standard]``), no access log, lifespan on.

    uvicorn's own logging configuration (coloured, untimed) is never installed: its records go to
    whatever handlers the ``uvicorn`` logger has (``prysmai proxy``: :mod:`.logs`)."""
    _quiet_cut_offs()
    c = app.config
    settings: dict[str, Any] = {
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "log_level": log_level,
        "server_header": False,
        "backlog": 2048,
        "timeout_keep_alive": 75,
        "timeout_graceful_shutdown": 10,
        # X-Forwarded-For/-Proto only from the reverse proxies named (uvicorn believes loopback's
        # by default: any local process could claim any address, and the https scheme).
        "proxy_headers": c.forwarded_allow_ips is not None,
        **({"forwarded_allow_ips": c.forwarded_allow_ips} if c.forwarded_allow_ips is not None else {}),
        **guard_options(c.header_timeout, c.body_timeout, c.max_header_bytes, c.max_client_connections),
    }
    settings.update(options)
    return uvicorn.Config(app, host=host, port=port, **settings)


def serve(app: ProxyApp, sock: socket.socket | None = None, **options: Any) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; pending traces are written before returning.

    ``sock``: an already bound socket (see :mod:`.listen`); ``options`` go to :func:`uvicorn_config`
    (``access_log``, ``ssl_certfile``, ``ssl_keyfile``, ``log_level``)."""
    import signal

    # uvicorn re-raises the signal that stopped it once it has shut down (and flushed the store).
    # With our handlers in place for both, that is a normal return, not a kill or, for SIGINT,
    # a KeyboardInterrupt from asyncio's own handler cancelling the lifespan mid-shutdown. Before
    # uvicorn has put its own in place (the listening socket may already be bound: clients and a
    # service manager can see the port), ours stop the server as soon as it has started, rather
    # than losing the signal.
    raise_open_files_limit(app.config)  # the process is ours here (not when embedded)
    server = uvicorn.Server(uvicorn_config(app, app.config.host, app.config.port, **options))
    # The proxy prices answers itself where the writer thread builds rows, and for projects with a
    # budget (their spend is counted as each answer completes).
    budgets = any(p.limits.monthly_budget_usd is not None for p in app.tenancy.projects.values())
    freeze_startup_objects(import_prices=app.config.trace_writer == "thread" or budgets)

    def stop_when_started(signum: int, frame: object) -> None:
        server.should_exit = True

    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop_when_started) for sig in stops}
    # SIGHUP reloads the config once the app has started (reload.ConfigWatch); until then it is
    # remembered, never left to its default action, which would stop the proxy. (`prysmai proxy`
    # has done this before its banner; this is for other callers.)
    restore_hup = catch_sighup()
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        restore_hup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BackgroundServer:
    """The proxy on a daemon thread, on a free port by default.

    >>> with BackgroundServer(ProxyConfig(keys=[key], db_path=path, upstream="demo", port=0)) as srv:
    ...     openai.OpenAI(base_url=srv.base_url, api_key=key)
    """

    def __init__(self, config: ProxyConfig, app: ProxyApp | None = None) -> None:
        self.app = app if app is not None else ProxyApp(config)
        self.config = config
        self._server = uvicorn.Server(uvicorn_config(self.app, config.host, config.port))
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, name="prysmai-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the proxy failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start within {timeout:.0f}s")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and write every pending trace."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
