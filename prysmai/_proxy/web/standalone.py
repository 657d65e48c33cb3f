"""``prysmai ui``: the dashboard alone, read-only, over an existing store (no proxying)."""

from __future__ import annotations

import json

from ..config.pricing import PriceTable
from . import make_dashboard

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..asgi import Receive, Scope, Send
    from ..config.projects import Tenancy


class ReadOnlyDashboard:
    """An ASGI app: the :class:`~.app.Dashboard` on a read-only store; ``/api/v1`` answers 404.
    ``tenancy``: who may log in and which project each key reads (see :mod:`..projects`)."""

    def __init__(self, db_path: str, tenancy: Tenancy) -> None:
        self.dashboard = make_dashboard(db_path, lambda: tenancy, PriceTable.load(None), read_only=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.dashboard.runner.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/api/"):
            body = json.dumps(
                {
                    "error": {
                        "message": "This is `prysmai ui`: a read-only dashboard; nothing is proxied here.",
                        "type": "invalid_request_error",
                        "code": "not_found",
                    }
                }
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.dashboard(scope, receive, send)


def serve_read_only(db_path: str, tenancy: Tenancy, host: str, port: int) -> None:
    """``prysmai ui`` in the foreground until SIGINT/SIGTERM."""
    import signal

    import uvicorn

    config = uvicorn.Config(
        ReadOnlyDashboard(db_path, tenancy),
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
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
