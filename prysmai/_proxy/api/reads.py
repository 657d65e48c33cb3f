"""``GET /api/v1/health`` and the read API (``traces``, ``traces/{id}``, ``stats``).

:class:`ReadApi` answers them for :class:`~.app.ProxyApp`, which routes here after its key check
(``health`` answers anyone, with details for a key holder). Reads run in a worker thread on the
query layer (:mod:`.queries`: read-only connections, time-limited), never on the event loop that
forwards requests; answers take the one JSON shape of :mod:`.jsonshape`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from urllib.parse import parse_qs, urlsplit

from ..asgi import error_body, respond
from ..config.projects import DEMO
from ..store import queries
from . import jsonshape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..asgi import Scope, Send
    from ..config.projects import KeyEntry, Provider, Tenancy
    from ..store.writer import TraceStore


class ReadApi:
    """The health check and the read API over one store; ``inflight`` counts forwarded requests."""

    def __init__(
        self,
        tenancy: Callable[[], Tenancy],
        store: TraceStore,
        inflight: Callable[[], int],
        runner: queries.ReadRunner,
    ) -> None:
        self.tenancy = tenancy
        self.store = store
        self.inflight = inflight
        #: Shared with the dashboard: one pool of read-only connections per store, closed at shutdown.
        self.runner = runner

    async def health(self, send: Send, entry: KeyEntry | None) -> None:
        """``ok`` / ``degraded`` for anyone; the details only for a key holder: for a project's
        key, its project and the hosts of its providers (never a credential)."""
        status, reason = self.store.health()
        body: dict[str, Any] = {"status": status}
        if entry is not None:
            body["reason"] = reason
            if entry.project is not None:
                providers = entry.project.providers
                body["project"] = entry.project.name
                default = entry.project.default_provider or providers[0]
                body["upstream"] = _host(default)
                body["providers"] = {p.name: _host(p) for p in providers}
            else:
                body["projects"] = sorted(self.tenancy().projects)
            body["inflight"] = self.inflight()
            body["store"] = self.store.counters()
        await respond(send, 200, json.dumps(body).encode())

    async def read(self, scope: Scope, send: Send, method: str, endpoint: str, project: str | None) -> None:
        """A read of the traces of ``project`` (``None``: an admin key, every project)."""
        if method != "GET":
            await respond(
                send, 405, error_body("Only GET is supported here", "invalid_request_error", "method_not_allowed")
            )
            return
        query = {k: v[-1] for k, v in parse_qs((scope.get("query_string") or b"").decode("latin-1")).items()}
        try:
            result = await self._query(endpoint, query, project)
        except ValueError as exc:
            await respond(send, 400, error_body(str(exc), "invalid_request_error", "invalid_parameter"))
            return
        except TimeoutError as exc:  # queries.QueryTimeout: the read ran past its time limit
            await respond(send, 503, error_body(str(exc), "server_error", "query_timeout"))
            return
        if result is None:
            await respond(send, 404, error_body("No such trace", "invalid_request_error", "not_found"))
            return
        await respond(send, 200, jsonshape.encode(jsonshape.for_endpoint(endpoint, result)))

    async def _query(self, endpoint: str, query: dict[str, str], project: str | None) -> Any:
        """The read API on the query layer (queries.py): read-only connections, time-limited,
        never on the event loop."""
        await asyncio.to_thread(self.store.flush, 2.0)  # read your own writes
        run = self.runner.run
        if endpoint.startswith("traces/"):
            return await run(queries.get_trace, endpoint[len("traces/") :], project=project)
        f = queries.TraceFilter.from_query(query)
        if project is not None:  # a project's key: its own project, whatever the query asks
            f = dataclasses.replace(f, project=project)
        if endpoint == "stats":
            stats = await run(queries.stats, f)
            stats["store"] = self.store.counters()
            return stats
        limit = query.get("limit") or "50"
        if not limit.isdigit():
            raise ValueError(f"limit must be a whole number from 1 to {queries.MAX_LIMIT}, not {limit!r}")
        rows, cursor = await run(
            queries.list_traces,
            f,
            sort=query.get("sort") or "created_at",
            descending=query.get("order", "desc") != "asc",
            cursor=query.get("cursor") or None,
            limit=int(limit),
        )
        return {"object": "list", "data": rows, "next_cursor": cursor}


def _host(provider: Provider) -> str | None:
    return "demo" if provider.kind == DEMO else urlsplit(provider.base_url).hostname
