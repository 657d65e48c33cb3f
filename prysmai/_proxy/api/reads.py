"""The read API: one handler per JSON read of the traces, behind ``/api/v1`` and the dashboard.

Routes (below ``/api/v1/`` with a key; below ``/ui/api/`` with a dashboard session, the same
handler, limits and documents -- every page's data is this API):

* ``traces`` -- a page of traces, newest first (filters, ``sort``, ``order``, ``cursor``, ``limit``);
* ``traces/{id}`` -- one trace in full (the id, or a unique prefix of 8+ hex characters);
* ``stats`` -- totals and a per-model breakdown, with the store's counters;
* ``overview`` -- totals, percentiles, a time series and the breakdowns, read in one snapshot;
* ``sessions``, ``users`` -- a page of sessions or users, most recently active first;
* ``sessions/{id}`` -- a session's traces, oldest first;
* ``me`` -- who the key or session is (its project, or every project for an admin key).

``/api/v1/health`` answers anyone (:meth:`Reads.health`). A project's key reads that project's
traces whatever its query asks; an admin key reads every project's. Reads run on the store's read
runner (read-only connections in worker threads, time-limited), never on the event loop that
forwards requests, after the store has written what was submitted before (read your own writes).
Documents have the one JSON shape of :mod:`.jsonshape`; errors are :class:`~..asgi.HTTPError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..asgi import HTTPError, Routes
from ..config.projects import DEMO
from ..store import QueryTimeout, TraceFilter, queries
from . import jsonshape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from typing import Any

    from ..asgi import Scope
    from ..config.pricing import PriceTable
    from ..config.projects import KeyEntry, Provider, Tenancy
    from ..store import Store

    Handler = Callable[["Reads", "str | None", Mapping[str, str], KeyEntry], Awaitable[Any]]

log = logging.getLogger("prysmai.proxy")

#: Rows a list answers at most, and by default.
MAX_LIMIT = queries.MAX_LIMIT
DEFAULT_LIMIT = 50
#: A session's timeline: traces at most by default (``limit`` up to :data:`MAX_LIMIT`).
SESSION_LIMIT = 500
#: Breakdowns on the overview, and rows in each.
BREAKDOWNS = ("model", "endpoint", "user_id", "session_id")
BREAKDOWN_ROWS = 10
#: Seconds the store has to write what was submitted before a read (read your own writes).
FLUSH_SECONDS = 2.0


class Reads:
    """The read API over ``store`` for the keys of ``tenancy()`` (a callable: the proxy's current
    tenancy, which a reload replaces). ``inflight``: forwarded requests now (``None``: not a
    proxy); ``pricing``: where costs come from, for the trace page."""

    def __init__(
        self,
        store: Store,
        tenancy: Callable[[], Tenancy],
        *,
        inflight: Callable[[], int] | None = None,
        pricing: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.store = store
        self.tenancy = tenancy
        self.inflight = inflight
        self.pricing = pricing
        self.read_only = read_only

    def route(self, path: str) -> tuple[Handler, str | None] | None:
        """The handler of ``path`` (below the API's prefix) and its parameter, if it is a read."""
        return ROUTES.match(path)

    async def serve(self, scope: Scope, prefix: str, who: KeyEntry) -> Any:
        """The document of the read a request asks for: its path below ``prefix`` and its query
        string. The path is taken raw: a session id may itself hold "/" or "%" (sent
        percent-encoded)."""
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw.startswith(prefix.encode()):
            path = raw.decode("latin-1")
        else:
            path = quote(scope["path"])
        route = path[len(prefix) :]
        found = self.route(route)
        if found is None:
            raise HTTPError(404, f"Unknown read API route {route!r}", "not_found")
        query = {k: v[-1] for k, v in parse_qs((scope.get("query_string") or b"").decode("latin-1")).items()}
        return await self.answer(*found, query, who)

    async def answer(self, handler: Handler, param: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        """The document of one read; :class:`~..asgi.HTTPError` for a bad parameter (400), a
        trace that is not there (404) or a read past its time limit (503)."""
        try:
            return await handler(self, param, query, who)
        except HTTPError:
            raise
        except ValueError as exc:
            raise HTTPError(400, str(exc), "invalid_parameter") from None
        except QueryTimeout as exc:
            raise HTTPError(503, str(exc), "query_timeout", "server_error") from None

    async def health(self, who: KeyEntry | None) -> dict[str, Any]:
        """``ok`` / ``degraded`` for anyone; the details only for a key holder: for a project's
        key, its project and the hosts of its providers (never a credential)."""
        status, reason = self.store.health()
        body: dict[str, Any] = {"status": status}
        if who is not None:
            body["reason"] = reason
            if who.project is not None:
                providers = who.project.providers
                body["project"] = who.project.name
                default = who.project.default_provider or providers[0]
                body["upstream"] = _host(default)
                body["providers"] = {p.name: _host(p) for p in providers}
            else:
                body["projects"] = sorted(self.tenancy().projects)
            if self.inflight is not None:
                body["inflight"] = self.inflight()
            body["store"] = self.store.counters()
        return body

    # -- the reads ---------------------------------------------------------------------------------
    async def _traces(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        rows, cursor = await self.store.read(
            queries.list_traces,
            f,
            sort=query.get("sort") or "created_at",
            descending=query.get("order", "desc") != "asc",
            cursor=query.get("cursor") or None,
            limit=_limit(query, DEFAULT_LIMIT),
        )
        return jsonshape.page([jsonshape.trace(r) for r in rows], cursor)

    async def _trace(self, trace_id: str | None, _: Mapping[str, str], who: KeyEntry) -> Any:
        assert trace_id is not None
        await self._flush()
        trace = await self.store.read(queries.get_trace, unquote(trace_id), project=who.project_name)
        if trace is None:
            raise HTTPError(404, "No such trace", "not_found")
        return jsonshape.trace(trace)

    async def _stats(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        result = await self.store.read(queries.stats, f)
        result["store"] = self.store.counters()
        return jsonshape.stats(result)

    async def _overview(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        bucket = queries.pick_bucket(f.since, f.until)
        by = ("project", *BREAKDOWNS) if who.admin else BREAKDOWNS
        limit = self.store.reader.time_limit
        # One read: every number on the page comes from one snapshot of the store. Its time
        # limit is that of the queries it makes, together.
        page = await self.store.read(
            queries.overview_page,
            f,
            bucket,
            by,
            BREAKDOWN_ROWS,
            time_limit=None if limit is None else limit * (2 + len(by)),
        )
        return {"object": "overview", **page}

    async def _sessions(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        return await self._groups(queries.sessions, query, who)

    async def _users(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        return await self._groups(queries.users, query, who)

    async def _groups(self, fn: Callable[..., Any], query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        rows, cursor = await self.store.read(fn, f, cursor=query.get("cursor") or None, limit=_limit(query))
        return jsonshape.page(rows, cursor)

    async def _session(self, session_id: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        assert session_id is not None
        await self._flush()
        session_id = unquote(session_id)
        traces = await self.store.read(
            queries.session_traces, session_id, _limit(query, SESSION_LIMIT), project=who.project_name
        )
        return {"object": "session", "session_id": session_id, "traces": [jsonshape.trace(t) for t in traces]}

    async def _me(self, _: str | None, __: Mapping[str, str], who: KeyEntry) -> Any:
        return {
            "object": "key",
            "read_only": self.read_only,
            "key_id": who.key_id,
            "project": who.project_name,
            "admin": who.admin,
            "projects": sorted(self.tenancy().projects) if who.admin else [who.project_name],
            "pricing": self.pricing,
        }

    # -- shared ------------------------------------------------------------------------------------
    async def _filter(self, query: Mapping[str, str], who: KeyEntry) -> TraceFilter:
        """The query's filter, scoped to the key's project; after the store has caught up."""
        if query.get("since") == "all":  # the pages' name for an open range
            query = {k: v for k, v in query.items() if k != "since"}
        f = TraceFilter.from_query(query)
        if who.project_name is not None:  # a project's key: its own project, whatever the query asks
            f = dataclasses.replace(f, project=who.project_name)
        await self._flush()
        return f

    async def _flush(self) -> None:
        if self.store.writer is not None:
            await asyncio.to_thread(self.store.flush, FLUSH_SECONDS)


#: The read routes and their handlers (below ``/api/v1/`` and ``/ui/api/``).
ROUTES: Routes[Handler] = Routes(
    {
        "traces": Reads._traces,
        "traces/{id}": Reads._trace,
        "stats": Reads._stats,
        "overview": Reads._overview,
        "sessions": Reads._sessions,
        "sessions/{id}": Reads._session,
        "users": Reads._users,
        "me": Reads._me,
    }
)


def _limit(query: Mapping[str, str], default: int = DEFAULT_LIMIT) -> int:
    raw = query.get("limit")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        message = f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}"
        raise HTTPError(400, message, "invalid_parameter", param="limit")
    return int(raw)


def _host(provider: Provider) -> str | None:
    return "demo" if provider.kind == DEMO else urlsplit(provider.base_url).hostname


def pricing_note(prices: PriceTable) -> str:
    """Where costs come from, as the trace page says it."""
    note = "the shipped price table" + (f" (as of {prices.as_of})" if prices.as_of else "")
    if " + " in prices.source:  # a --pricing file extends it
        note += " + " + prices.source.split(" + ", 1)[1]
    return note
