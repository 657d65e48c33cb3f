"""``prysmai ui``: the dashboard alone, read-only, over an existing store (no proxying)."""

from __future__ import annotations

from ..api.reads import Reads, pricing_note
from ..asgi import HTTPError, respond_error
from ..config.pricing import PriceTable
from .app import Dashboard

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..asgi import Receive, Scope, Send
    from ..config.projects import Tenancy
    from ..store import Store


class ReadOnlyDashboard:
    """An ASGI app: the :class:`~.app.Dashboard` over ``store`` (opened for reading); ``/api/``
    answers 404. ``tenancy``: who may log in and which project each key reads."""

    def __init__(self, store: Store, tenancy: Tenancy) -> None:
        self.store = store
        reads = Reads(store, lambda: tenancy, pricing=pricing_note(PriceTable.load(None)), read_only=True)
        self.dashboard = Dashboard(reads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
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


def serve_read_only(store: Store, tenancy: Tenancy, host: str, port: int, **options: Any) -> None:
    """``prysmai ui`` in the foreground until SIGINT/SIGTERM; ``options`` go to uvicorn (the
    connection guard's protocol, from the CLI)."""
    import signal

    import uvicorn

    config = uvicorn.Config(
        ReadOnlyDashboard(store, tenancy),
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
