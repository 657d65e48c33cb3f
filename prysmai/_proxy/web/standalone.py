"""``prysmai ui``: the dashboard alone, read-only, over an existing store (no proxying)."""

from __future__ import annotations

import asyncio

from ..api.reads import Reads, pricing_note
from ..asgi import HTTPError, respond_error
from ..config.pricing import PriceTable
from .app import Dashboard
from .auth import Sessions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from ..asgi import Receive, Scope, Send
    from ..config.projects import Tenancy
    from ..store import Store

    class SessionSharing(Protocol):
        """What shares the log-ins with the proxies of the database (``server.sharing.Sharing``)."""

        def start(self, loop: asyncio.AbstractEventLoop | None) -> None: ...
        def first_exchange(self, timeout: float) -> bool: ...
        def stop(self, timeout: float = ...) -> None: ...


class ReadOnlyDashboard:
    """An ASGI app: the :class:`~.app.Dashboard` over ``store`` (opened for reading); ``/api/``
    answers 404. ``tenancy``: who may log in and which project each key reads (and the config
    file's session secret). On a PostgreSQL store, ``cookie`` is the proxies' session cookie name
    and ``sharing(sessions)`` makes what shares the log-ins with them (started and stopped with
    the app): a session made on a proxy is valid here and back, a log-out ends it on both."""

    def __init__(
        self,
        store: Store,
        tenancy: Tenancy,
        *,
        cookie: str | None = None,
        sharing: Callable[[Sessions], SessionSharing] | None = None,
    ) -> None:
        self.store = store
        reads = Reads(store, lambda: tenancy, pricing=pricing_note(PriceTable.load(None)), read_only=True)
        secret = tenancy.session_secret
        sessions = Sessions(secret, configured=secret is not None)
        self.dashboard = Dashboard(reads, sessions=sessions, cookie=cookie)
        self.sharing = None if sharing is None else sharing(sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if self.sharing is not None:  # the shared secret and sessions before the first page
                        self.sharing.start(asyncio.get_running_loop())
                        await asyncio.to_thread(self.sharing.first_exchange, 5.0)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.sharing is not None:
                        await asyncio.to_thread(self.sharing.stop)
                    self.store.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/api/"):
            refusal = "This is `prysmai ui`: a read-only dashboard; nothing is proxied here."
            await respond_error(send, HTTPError(404, refusal, "not_found"))
            return
        await self.dashboard(scope, receive, send)


def serve_read_only(
    store: Store,
    tenancy: Tenancy,
    host: str,
    port: int,
    *,
    cookie: str | None = None,
    sharing: Callable[[Sessions], SessionSharing] | None = None,
    **options: Any,
) -> None:
    """``prysmai ui`` in the foreground until SIGINT/SIGTERM; ``cookie`` and ``sharing`` as for
    :class:`ReadOnlyDashboard`; ``options`` go to uvicorn (the connection guard's protocol, from
    the CLI)."""
    import signal

    import uvicorn

    config = uvicorn.Config(
        ReadOnlyDashboard(store, tenancy, cookie=cookie, sharing=sharing),
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* from loopback: not trusted (uvicorn's default would)
        **options,
    )
    # As for the proxy (server.serve): uvicorn re-raises the stopping signal after its shutdown;
    # no-op handlers make that a normal return.
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in stops}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
