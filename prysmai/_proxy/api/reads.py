"""The read API: one handler per JSON read of the traces, behind ``/api/v1`` and the dashboard.

Routes (below ``/api/v1/`` with a key; below ``/ui/api/`` with a dashboard session, the same
handler, limits and documents -- every page's data is this API):

* ``traces`` -- a page of traces, newest first (filters, ``sort``, ``order``, ``cursor``, ``limit``),
  with the number of matches (``total``; ``total_exact`` false: more than that; ``null``: counting
  took longer than the time limit);
  with ``format=csv`` or ``format=jsonl``, every trace the filters match, as a streamed download
  (:mod:`.download`: a :class:`~.download.Download` instead of a document);
* ``traces/{id}`` -- one trace in full (the id, or a unique prefix of 8+ hex characters);
* ``neighbours`` -- the traces just before and after ``trace`` in a list (its filters, ``sort``,
  ``order``): the trace page's previous / next;
* ``stats`` -- totals and a per-model breakdown, with the store's counters;
* ``overview`` -- totals, percentiles, a time series and the breakdowns, read in one snapshot;
* ``sessions``, ``users`` -- a page of sessions or users, most recently active first (or by
  ``sort``: ``requests``, ``errors``, ``cost``, ``tokens``; ``order``), ``search``: ids holding a text;
* ``sessions/{id}`` -- a session: its totals and a page of its traces, oldest first (``cursor``,
  ``limit``);
* ``budgets`` -- each project's spend this month against ``monthly_budget_usd`` (with the pace and
  the days left at it), its last minute of requests against ``requests_per_minute``, and the
  ``429`` answers its limits gave per time bucket in ``since``/``until`` (default: this month;
  ``since=all``: from the first stored), by limit (:mod:`..store.budgets`); a project's key sees
  its own project, an admin key every project (or ``project=NAME``);
* ``suggest`` -- the values a filter can take, seen in the range and the key's project: ``field``
  (model, provider, user, endpoint, project, meta_key, meta_value with ``meta_key``), ``prefix``,
  ``limit`` (see :mod:`..store.slices`);
* ``series`` -- the overview's time series split by ``by`` (model, project, user, ``meta:KEY``):
  the ``top`` groups and "other" (``latency=false``: without the percentiles, a faster read);
* ``me`` -- who the key or session is (its project, or every project for an admin key).

Writes (:meth:`Reads.write`; the one kind there is, scores, see :mod:`..store.scores`):

* ``POST traces/{id}/scores`` -- attach a score ``{"name", "value", "comment"}`` to a trace
  (``201`` and the score); any key that can read the trace may score it;
* ``DELETE scores/{id}`` -- delete a score by its id (``200``).

A trace's document (``traces/{id}``) and every row of ``traces`` carry their ``scores``;
``traces`` (and every filtered read) takes ``score=NAME`` with ``score_min``/``score_max``;
``overview`` has ``score_averages`` by model, user (and project for an admin key).

``/api/v1/health`` answers anyone (:meth:`Reads.health`). A project's key reads that project's
traces (a query naming another project is refused, 403); an admin key reads every project's, or
the one its query names (400 if no such project is configured or stored). Reads run on the store's read
runner (read-only connections in worker threads, time-limited), never on the event loop that
forwards requests, after the store has written what was submitted before (read your own writes).
Documents have the one JSON shape of :mod:`.jsonshape`; errors are :class:`~..asgi.HTTPError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from urllib.parse import quote, unquote, urlsplit

from ..asgi import Disconnected, HTTPError, Query, Routes, TooLarge, read_body
from ..config.projects import DEMO
from ..store import QueryTimeout, StoreError, TraceFilter, budgets, queries, scores, slices
from . import download, jsonshape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping
    from typing import Any

    from ..asgi import Receive, Scope
    from ..config.pricing import PriceTable
    from ..config.projects import KeyEntry, Provider, Tenancy
    from ..store import Store
    from .downloadproc import Exports

    Handler = Callable[["Reads", "str | None", Mapping[str, str], KeyEntry], Awaitable[Any]]

log = logging.getLogger("prysmai.proxy")

#: Rows a list answers at most, and by default.
MAX_LIMIT = queries.MAX_LIMIT
DEFAULT_LIMIT = 50
#: A session's timeline: traces per page by default (``limit`` up to :data:`MAX_LIMIT`).
SESSION_LIMIT = 100
#: Breakdowns on the overview, and rows in each.
BREAKDOWNS = ("model", "endpoint", "user_id", "session_id")
BREAKDOWN_ROWS = 10
#: Seconds the store has to write what was submitted before a read (read your own writes).
FLUSH_SECONDS = 2.0
#: How long a score on a shared store waits for the database before it is answered ``202``
#: (queued in the replica's outbox, applied when the database answers).
EDIT_WAIT_SECONDS = 5.0
#: Bytes a score's JSON body may have (a comment of 2 000 characters, escaped, fits).
MAX_SCORE_BODY = 16 * 1024
#: Groups and names in each of the overview's score averages.
SCORE_AVERAGE_ROWS = 20
#: The traces' filters (``TraceFilter.from_query``) the budgets read does not take.
_TRACE_ONLY = (
    "model",
    "endpoint",
    "status",
    "user",
    "session",
    "key",
    "meta",
    "q",
    "model~",
    "user~",
    "score",
    "score_min",
    "score_max",
)


class Reads:
    """The read API over ``store`` for the keys of ``tenancy()`` (a callable: the proxy's current
    tenancy, which a reload replaces). ``inflight``: forwarded requests now (``None``: not a
    proxy); ``project_counters(name)``: one project's share of the proxy's counters (its requests
    in flight, traces submitted and dropped), what a project's key is shown instead of the whole
    proxy's; ``pricing``: where costs come from, for the trace page."""

    def __init__(
        self,
        store: Store,
        tenancy: Callable[[], Tenancy],
        *,
        inflight: Callable[[], int] | None = None,
        project_counters: Callable[[str], dict[str, int]] | None = None,
        pricing: str | None = None,
        read_only: bool = False,
        export: Any = None,
        public_url: str | None = None,
        exports: Exports | None = None,
    ) -> None:
        self.store = store
        #: The downloads' processes and their bound (``None``: read on the read runner, unbounded:
        #: ``prysmai ui``, a store in memory).
        self.exports = exports
        #: The OTLP export (its ``status()`` and ``trouble()``), or ``None``.
        self.export = export
        #: Limits and log-ins shared with other replicas (its ``status()`` and ``trouble()``), or
        #: ``None`` (a proxy alone).
        self.sharing: Any = None
        self.tenancy = tenancy
        self.inflight = inflight
        self.project_counters = project_counters
        self.pricing = pricing
        self.read_only = read_only
        #: The proxy's configured public address (``--public-url``), or ``None``.
        self.public_url = public_url

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
        return await self.answer(*found, Query.of(scope), who)

    async def answer(self, handler: Handler, param: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        """The document of one read; :class:`~..asgi.HTTPError` for a bad parameter (400), a
        trace that is not there (404) or a read past its time limit (503)."""
        with _http_errors():
            return await handler(self, param, query, who)

    def writes(self, path: str) -> bool:
        """Whether ``path`` (below the API's prefix) is a write's (:meth:`write`)."""
        return _score_target(path) is not None or path.startswith("scores/")

    async def write(self, scope: Scope, receive: Receive, prefix: str, who: KeyEntry, source: str) -> tuple[int, Any]:
        """A write (``POST traces/{id}/scores``, ``DELETE scores/{id}``) by ``who`` through
        ``source`` (``"api"`` or ``"dashboard"``): (status, document). Off the event loop, in one
        short write transaction of the store's edit runner; a trace of another project is not
        found (404)."""
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) and raw.startswith(prefix.encode()) else scope["path"]
        route = path[len(prefix) :].split("?", 1)[0]
        method = scope["method"]
        trace_id = _score_target(route)
        if (trace_id is not None and method != "POST") or (route.startswith("scores/") and method != "DELETE"):
            allowed = "POST" if trace_id is not None else "DELETE"
            raise HTTPError(405, f"{method} is not supported on {route}; use {allowed}", "method_not_allowed")
        if self.read_only:
            message = (
                "This dashboard only reads the store (prysmai ui); score traces through the proxy's dashboard or API."
            )
            raise HTTPError(403, message, "read_only")
        with _http_errors():
            if trace_id is not None:
                score = scores.NewScore.parse(await _json_body(receive))
                await self._flush()  # a trace answered a moment ago can be scored at once
                edit = scores.Edit.adding(
                    unquote(trace_id), score, project=who.project_name, author_key=who.key_id, source=source
                )
                applied, added = await self.store.score(edit, EDIT_WAIT_SECONDS)
                if not applied:  # a shared store that is down: kept in the outbox, applied when it is back
                    return 202, edit.queued()
                if added is None:
                    raise HTTPError(404, "No such trace", "not_found")
                return 201, added
            score_id = unquote(route[len("scores/") :])
            edit = scores.Edit.deleting(score_id, project=who.project_name)
            applied, deleted = await self.store.score(edit, EDIT_WAIT_SECONDS)
            if not applied:
                return 202, edit.queued()
            if not deleted:
                raise HTTPError(404, "No such score", "not_found")
            return 200, {"object": "score.deleted", "id": score_id, "deleted": True}

    async def health(self, who: KeyEntry | None) -> dict[str, Any]:
        """``ok`` / ``degraded`` for anyone; the details only for a key holder. A project's key:
        its project, the hosts of its providers (never a credential) and -- where the proxy serves
        other projects too, whose volume is not its business -- its own counters only; an admin
        key (or the key of the one project there is): the whole proxy's counters, retention and
        export."""
        status = self.store.health()[0]
        export_trouble = self.export.trouble() if self.export is not None else None
        sharing_trouble = self.sharing.trouble() if self.sharing is not None else None
        if status == "ok" and (export_trouble is not None or sharing_trouble is not None):
            status = "degraded"
        body: dict[str, Any] = {"status": status}
        if who is None:
            return body
        whole = self._sees_whole_proxy(who)
        reason = self.store.health(detail=whole)[1]
        body["reason"] = next((r for r in (reason, export_trouble, sharing_trouble) if r is not None), None)
        if who.project is not None:
            providers = who.project.providers
            body["project"] = who.project.name
            default = who.project.default_provider or providers[0]
            body["upstream"] = _host(default)
            body["providers"] = {p.name: _host(p) for p in providers}
        else:
            body["projects"] = sorted(self.tenancy().projects)
        if whole:
            if self.inflight is not None:
                body["inflight"] = self.inflight()
            body["store"] = self.store.counters()
            body["store_kind"] = "postgresql" if self.store.shipper is not None else "sqlite"
            if who.project is None:  # where it is (a URL's password masked): the operator's business
                body["store_location"] = self.store.engine.location
            if self.sharing is not None:
                body["replicas"] = self.sharing.status()
            if self.store.retention is not None:
                body["retention"] = self.store.retention.counters()
            if self.export is not None:
                body["export"] = self.export.status()
        else:
            counters = self._project_counters(who)
            if "inflight" in counters:
                body["inflight"] = counters.pop("inflight")
            body["store"] = counters
        return body

    def _sees_whole_proxy(self, who: KeyEntry) -> bool:
        return who.project is None or len(self.tenancy().projects) == 1

    def _project_counters(self, who: KeyEntry) -> dict[str, int]:
        if self.project_counters is None or who.project is None:
            return {}
        return self.project_counters(who.project.name)

    def _counters(self, who: KeyEntry) -> dict[str, int]:
        """The store's counters as ``who`` may see them (see :meth:`health`)."""
        if self._sees_whole_proxy(who):
            return self.store.counters()
        counters = self._project_counters(who)
        counters.pop("inflight", None)
        return counters

    # -- the reads ---------------------------------------------------------------------------------
    async def _traces(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        plan = download.Plan.of(query)  # (its parameters checked before the filter waits for the store)
        if plan is not None:
            return await self._download(plan, query, who)
        f = await self._filter(query, who)
        rows, cursor = await self.store.read(
            scores.list_traces,
            f,
            sort=query.get("sort") or "created_at",
            descending=query.get("order", "desc") != "asc",
            cursor=query.get("cursor") or None,
            limit=_limit(query, DEFAULT_LIMIT),
        )
        # A read of its own: a count past the time limit leaves the page as it is, without a total.
        total: tuple[int, bool] | None = None
        with contextlib.suppress(QueryTimeout):
            total = await self.store.read(queries.count_traces, f)
        return jsonshape.trace_list(rows, cursor, total)

    async def _download(self, plan: download.Plan, query: Mapping[str, str], who: KeyEntry) -> download.Download:
        """A download, admitted first (``429`` when ``--max-exports`` run already); its end
        (:meth:`~.download.Download.send`) ends the admission."""
        if self.exports is not None:
            self.exports.admit()
        try:
            f = await self._filter(query, who)
            return await download.Download.start(self.store, f, plan, self.exports)
        except BaseException:
            if self.exports is not None:
                self.exports.release()
            raise

    async def _trace(self, trace_id: str | None, _: Mapping[str, str], who: KeyEntry) -> Any:
        assert trace_id is not None
        await self._flush()
        trace = await self.store.read(scores.trace_with_scores, unquote(trace_id), project=who.project_name)
        if trace is None:
            raise HTTPError(404, "No such trace", "not_found")
        return jsonshape.trace(trace)

    async def _neighbours(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        trace_id = query.get("trace")
        if not trace_id:
            raise HTTPError(400, "trace: give the id of a trace of this list", "invalid_parameter", param="trace")
        f = await self._filter(query, who)
        found = await self.store.read(
            queries.neighbours,
            f,
            trace_id,
            sort=query.get("sort") or "created_at",
            descending=query.get("order", "desc") != "asc",
        )
        if found is None:
            raise HTTPError(404, "No such trace", "not_found")
        return {"object": "neighbours", "trace": trace_id, "previous": found[0], "next": found[1]}

    async def _stats(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        result = await self.store.read(queries.stats, f)
        result["store"] = self._counters(who)
        return jsonshape.stats(result)

    async def _overview(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        bucket = queries.pick_bucket(f.since, f.until)
        by = ("project", *BREAKDOWNS) if who.admin else BREAKDOWNS
        limit = self.store.reader.time_limit
        # One read: every number on the page comes from one snapshot of the store. Its time
        # limit is that of the queries it makes, together.
        groups = ("model", "user", "project") if who.admin else ("model", "user")
        page = await self.store.read(
            scores.overview_page,
            f,
            bucket,
            by,
            BREAKDOWN_ROWS,
            groups,
            SCORE_AVERAGE_ROWS,
            time_limit=None if limit is None else limit * (2 + len(by) + len(groups)),
        )
        return {"object": "overview", **page}

    async def _sessions(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        return await self._groups(scores.sessions, query, who)

    async def _users(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        return await self._groups(scores.users, query, who)

    async def _groups(self, fn: Callable[..., Any], query: Mapping[str, str], who: KeyEntry) -> Any:
        f = await self._filter(query, who)
        rows, cursor = await self.store.read(
            fn,
            f,
            cursor=query.get("cursor") or None,
            limit=_limit(query),
            sort=query.get("sort") or "last_seen",
            descending=query.get("order", "desc") != "asc",
            search=query.get("search") or None,
        )
        return jsonshape.page(rows, cursor)

    async def _session(self, session_id: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        assert session_id is not None
        await self._flush()
        session_id = unquote(session_id)
        page = await self.store.read(
            scores.session_page,
            session_id,
            cursor=query.get("cursor") or None,
            limit=_limit(query, SESSION_LIMIT),
            project=who.project_name,
        )
        return jsonshape.session(session_id, page)

    async def _budgets(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        # A filter of the traces would change nothing here: said, rather than silently ignored.
        for name in _TRACE_ONLY:
            if query.get(name):
                message = f"{name} does not apply to budgets, which take project, since and until"
                raise HTTPError(400, message, "invalid_parameter", param=name)
        f = await self._filter(query, who)
        now = time.time()
        since = f.since
        if since is None and query.get("since") != "all":
            since = budgets.month_start(now)
        configured = self.tenancy().projects
        limits = {name: p.limits for name, p in configured.items() if f.project in (None, name)}
        return await self.store.read(
            budgets.budgets,
            limits,
            now=now,
            project=f.project,
            since=since,
            until=f.until,
            bucket=queries.pick_bucket(since, f.until, now),
        )

    async def _suggest(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        field = query.get("field") or ""
        limit = _limit(query, 20)
        f = await self._filter(query, who)
        return await self.store.read(
            slices.suggestions,
            f,
            field,
            meta_key=query.get("meta_key") or None,
            prefix=query.get("prefix") or None,
            limit=limit,
        )

    async def _series(self, _: str | None, query: Mapping[str, str], who: KeyEntry) -> Any:
        by = query.get("by") or ""
        top = query.get("top") or "5"
        if not (top.isascii() and top.isdigit()):
            raise HTTPError(400, f"top must be a whole number, not {top!r}", "invalid_parameter", param="top")
        latency = query.get("latency") or "true"
        if latency not in ("true", "false"):
            message = f"latency must be true or false (false: no percentiles, a faster read), not {latency!r}"
            raise HTTPError(400, message, "invalid_parameter", param="latency")
        f = await self._filter(query, who)
        limit = self.store.reader.time_limit
        return await self.store.read(
            slices.group_series,
            f,
            by,
            queries.pick_bucket(f.since, f.until),
            int(top),
            latency=latency == "true",
            # A query per group at most (users), each under the time limit.
            time_limit=None if limit is None else limit * (2 + min(int(top), slices.MAX_GROUPS)),
        )

    async def _me(self, _: str | None, __: Mapping[str, str], who: KeyEntry) -> Any:
        return {
            "object": "key",
            "read_only": self.read_only,
            "key_id": who.key_id,
            "project": who.project_name,
            "admin": who.admin,
            "projects": sorted(self.tenancy().projects) if who.admin else [who.project_name],
            "pricing": self.pricing,
            # Where clients send requests, when configured (the dashboard otherwise shows the
            # address the browser used): never taken from a request's Host header.
            "public_url": self.public_url,
        }

    # -- shared ------------------------------------------------------------------------------------
    async def _filter(self, query: Mapping[str, str], who: KeyEntry) -> TraceFilter:
        """The query's filter, scoped to the key's project; after the store has caught up."""
        if query.get("since") == "all":  # the pages' name for an open range
            pairs = query.pairs if isinstance(query, Query) else list(query.items())
            query = Query((k, v) for k, v in pairs if k != "since")
        f = TraceFilter.from_query(query)
        if who.project_name is not None:  # a project's key: its own project only
            if f.project not in (None, who.project_name):
                message = f"this key reads project {who.project_name!r} only, not {f.project!r}"
                raise HTTPError(403, message, "project_forbidden", param="project")
            f = dataclasses.replace(f, project=who.project_name)
        elif (
            f.project is not None
            and f.project not in self.tenancy().projects
            # An admin key naming a project: one of the config's, or one the store has traces of
            # (a project since removed from the config).
            and not await self.store.read(queries.project_exists, f.project)
        ):
            known = ", ".join(sorted(self.tenancy().projects))
            message = f"unknown project {f.project!r} (projects: {known})"
            raise HTTPError(400, message, "unknown_project", param="project")
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
        "neighbours": Reads._neighbours,
        "stats": Reads._stats,
        "overview": Reads._overview,
        "sessions": Reads._sessions,
        "sessions/{id}": Reads._session,
        "users": Reads._users,
        "budgets": Reads._budgets,
        "suggest": Reads._suggest,
        "series": Reads._series,
        "me": Reads._me,
    }
)


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """The store's and the query layer's errors as the API answers them."""
    try:
        yield
    except HTTPError:
        raise
    except ValueError as exc:  # a parameter the query layer refused (ParamError names it)
        raise HTTPError(400, str(exc), "invalid_parameter", param=getattr(exc, "param", None)) from None
    except QueryTimeout as exc:
        raise HTTPError(503, str(exc), "query_timeout", "server_error") from None
    except StoreError as exc:  # a shared store that is down, a busy file
        raise HTTPError(503, str(exc), "store_unavailable", "server_error") from None


def _score_target(route: str) -> str | None:
    """The trace id of ``traces/{id}/scores``, else ``None``."""
    if route.startswith("traces/") and route.endswith("/scores") and len(route) > len("traces//scores"):
        return route[len("traces/") : -len("/scores")]
    return None


async def _json_body(receive: Receive) -> Any:
    try:
        body = await read_body(receive, MAX_SCORE_BODY)
    except TooLarge:
        raise HTTPError(413, f"A score's body may have at most {MAX_SCORE_BODY} bytes", "request_too_large") from None
    except Disconnected:
        raise HTTPError(400, "The client went away before sending the body", "incomplete_body") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        message = 'The body must be JSON like {"name": "helpful", "value": 1, "comment": "..."}'
        raise HTTPError(400, message, "invalid_json") from None


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
