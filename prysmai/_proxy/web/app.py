"""The dashboard as a pure-ASGI application: pages, their JSON, log-in and static assets.

Served by the proxy for every path outside ``/api/v1`` (and alone by ``prysmai ui``). Routes:

* ``GET /``, ``/traces``, ``/traces/{id}``, ``/sessions``, ``/sessions/{id}``, ``/users`` -- the
  page shell (one HTML file; the JavaScript modules draw the page from the JSON below);
* ``GET /login``, ``POST /ui/login``, ``POST /ui/logout`` -- see :mod:`.auth`;
* ``GET /ui/api/{overview,traces,traces/{id},sessions,sessions/{id},users,me}`` -- JSON;
* ``GET /static/{file}`` -- the CSS and JavaScript shipped in the package.

Captured content is untrusted: it only ever leaves here as JSON (``application/json``, nosniff) and
the pages put it into the document as text. Every response carries a strict Content-Security-Policy
that allows nothing but this origin's own files, so even a mistake in a page could neither run an
injected script nor send data elsewhere. Queries run through a :class:`~..queries.ReadRunner`: on a
read-only connection in a worker thread, under a time limit, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from importlib import resources
from urllib.parse import parse_qs, quote, unquote

from ..api import jsonshape
from ..asgi import send_whole
from ..store import queries
from .auth import Sessions, cookie_name, read_cookie

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..asgi import Receive, Scope, Send
    from ..config.pricing import PriceTable
    from ..config.projects import KeyEntry, Tenancy

log = logging.getLogger("prysmai.proxy")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
PAGES = re.compile(r"^/(?:|traces|traces/[0-9A-Za-z_-]{1,64}|sessions|sessions/.{1,2048}|users)$", re.S)
_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8", ".css": b"text/css"}
_MAX_FORM_BYTES = 4096
#: Page sizes the lists accept (the query layer caps them too).
_MAX_LIMIT = 200
_BREAKDOWNS = ("model", "endpoint", "user_id", "session_id")
_ERROR_CODES = {
    400: "invalid_parameter",
    401: "login_required",
    403: "cross_origin",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    500: "query_failed",
    503: "query_timeout",
}


def _load_assets() -> dict[str, tuple[bytes, bytes]]:
    """Every file of ``static/``, read once: name -> (content type, bytes)."""
    folder = resources.files(__package__).joinpath("static")
    assets: dict[str, tuple[bytes, bytes]] = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (_TYPES[suffix], entry.read_bytes())
    return assets


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Dashboard:
    """The dashboard over the store at ``db_path``, for whoever holds a key of ``tenancy()`` (a
    callable: the proxy's current tenancy, which a reload replaces). A project's key sees that
    project's traces; an admin key every project's."""

    def __init__(
        self,
        db_path: str,
        tenancy: Callable[[], Tenancy],
        runner: queries.ReadRunner,
        *,
        prices: PriceTable | None = None,
        read_only: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        self.db_path = db_path
        self.tenancy = tenancy
        self.runner = runner
        self.read_only = read_only
        #: Where costs come from, for the trace page.
        self.pricing: str | None = None
        if prices is not None:
            self.pricing = "the shipped price table" + (f" (as of {prices.as_of})" if prices.as_of else "")
            if " + " in prices.source:  # a --pricing file extends it
                self.pricing += " + " + prices.source.split(" + ", 1)[1]
        self.sessions = sessions if sessions is not None else Sessions()
        self.assets = _load_assets()

    def __repr__(self) -> str:
        return f"Dashboard(db={self.db_path!r}, read_only={self.read_only})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = dict(scope["headers"])  # the few headers we read appear once
        try:
            if path.startswith("/static/") and method in ("GET", "HEAD"):
                asset = self.assets.get(path[len("/static/") :])
                if asset is None:
                    raise _HTTPError(404, "no such file")
                await _send(send, 200, asset[1], asset[0], cache=b"no-cache")
            elif path == "/favicon.ico":
                await _send(send, 204, b"", b"image/x-icon", cache=b"max-age=86400")
            elif path == "/login" and method == "GET":
                await _send(send, 200, self.assets["login.html"][1], _TYPES[".html"])
            elif path == "/ui/login" and method == "POST":
                await self._login(scope, receive, send, headers)
            elif path == "/ui/logout" and method == "POST":
                _check_origin(scope, headers)
                await _redirect(send, "/login?out=1", self.sessions.clear_cookie(_cookie(scope), _secure(scope)))
            elif path.startswith("/ui/api/"):
                who = self._who(scope, headers)
                if who is None:
                    raise _HTTPError(401, "Log in first (POST /ui/login with a proxy key).")
                if method != "GET":
                    raise _HTTPError(405, "Only GET is supported here")
                query = {k: v[-1] for k, v in parse_qs((scope.get("query_string") or b"").decode("latin-1")).items()}
                # The raw path: a session id may itself contain "/" or "%" (sent percent-encoded).
                raw = scope.get("raw_path")
                route = raw.decode("latin-1") if isinstance(raw, bytes) else quote(path)
                result = await self._api(route[len("/ui/api/") :], query, who)
                # Captured values may hold unpaired surrogates: the shared encoder escapes them.
                await _send(send, 200, jsonshape.encode(result, allow_nan=False), b"application/json")
            elif PAGES.match(path) and method in ("GET", "HEAD"):
                if self._who(scope, headers) is None:
                    target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                    await _redirect(send, "/login?next=" + quote(target, safe=""))
                else:
                    await _send(send, 200, self.assets["index.html"][1], _TYPES[".html"])
            elif PAGES.match(path) or path in ("/login", "/ui/login", "/ui/logout"):
                raise _HTTPError(405, f"{method} is not supported on {path}")
            else:
                raise _HTTPError(404, f"Unknown path {path} (the dashboard is at /, the API under /api/v1)")
        except _HTTPError as exc:
            await _send_error(send, exc.status, exc.message)

    def _who(self, scope: Scope, headers: dict[bytes, bytes]) -> KeyEntry | None:
        """The key of a valid session cookie, if that key is still accepted (a reload may have
        removed it: its sessions end with it)."""
        key_id = self.sessions.check(read_cookie(headers.get(b"cookie"), _cookie(scope)))
        return None if key_id is None else self.tenancy().by_key_id(key_id)

    # -- log-in ------------------------------------------------------------------------------------
    async def _login(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        _check_origin(scope, headers)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > _MAX_FORM_BYTES:
                raise _HTTPError(413, "log-in form too large")
            if not message.get("more_body"):
                break
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        key = form.get("key", "").strip().encode("utf-8", "replace")
        target = form.get("next", "/")
        # Only a path of this site: never "//host" or "/\host", which browsers read as another origin.
        if not target.startswith("/") or target.startswith(("//", "/\\")) or not target.isprintable():
            target = "/"
        target = quote(target, safe="/?&=%:@+,;~-._!$'()*")  # no raw CR/LF or non-ASCII in Location
        entry = self.tenancy().check(key) if key else None
        if entry is None:
            await _redirect(send, "/login?error=1&next=" + quote(target, safe=""))
            return
        cookie = self.sessions.set_cookie(_cookie(scope), self.sessions.issue(entry.key_id), _secure(scope))
        await _redirect(send, target, cookie)

    # -- JSON for the pages -------------------------------------------------------------------------
    async def _api(self, route: str, query: dict[str, str], who: KeyEntry) -> Any:
        run = self.runner.run
        project = who.project_name  # None: an admin key, every project
        if query.get("since") == "all":  # the pages' name for an open range
            query = {k: v for k, v in query.items() if k != "since"}
        try:
            if route == "me":
                return {
                    "read_only": self.read_only,
                    "key_id": who.key_id,
                    "project": project,
                    "admin": who.admin,
                    "projects": sorted(self.tenancy().projects) if who.admin else [project],
                    "pricing": self.pricing,
                }
            if route.startswith("traces/"):
                try:
                    trace = await run(queries.get_trace, unquote(route[len("traces/") :]), project=project)
                except ValueError as exc:
                    raise _HTTPError(400, str(exc)) from None
                if trace is None:
                    raise _HTTPError(404, "No such trace")
                return trace
            if route.startswith("sessions/"):
                session_id = unquote(route[len("sessions/") :])
                traces = await run(queries.session_traces, session_id, _limit(query, 500), project=project)
                return {"session_id": session_id, "traces": traces}
            f = queries.TraceFilter.from_query(query)
            if project is not None:  # a project's key: its own project, whatever the query asks
                f = dataclasses.replace(f, project=project)
            if route == "overview":
                bucket = queries.pick_bucket(f.since, f.until)
                overview = await run(queries.overview, f)
                series = await run(queries.timeseries, f, bucket)
                breakdowns = {}
                for by in ("project", *_BREAKDOWNS) if who.admin else _BREAKDOWNS:
                    breakdowns[by] = await run(queries.breakdown, f, by, 10)
                return {"overview": overview, "bucket_seconds": bucket, "timeseries": series, "breakdowns": breakdowns}
            if route == "traces":
                sort = query.get("sort", "time")
                rows, cursor = await run(
                    queries.list_traces,
                    f,
                    sort=sort,
                    descending=query.get("order", "desc") != "asc",
                    cursor=query.get("cursor") or None,
                    limit=_limit(query, 50),
                )
                return {"data": rows, "next_cursor": cursor}
            if route in ("sessions", "users"):
                fn = queries.sessions if route == "sessions" else queries.users
                rows, cursor = await run(fn, f, cursor=query.get("cursor") or None, limit=_limit(query, 50))
                return {"data": rows, "next_cursor": cursor}
        except ValueError as exc:
            raise _HTTPError(400, str(exc)) from None
        except _HTTPError:
            raise
        except TimeoutError:
            raise _HTTPError(503, "The query took too long; narrow the time range or the filters.") from None
        except Exception:
            log.exception("dashboard query %s failed", route)
            raise _HTTPError(500, "The query failed (see the proxy's log).") from None
        raise _HTTPError(404, f"Unknown dashboard API route {route!r}")


def _limit(query: dict[str, str], default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= max(_MAX_LIMIT, default):
        raise _HTTPError(400, f"limit must be a whole number from 1 to {max(_MAX_LIMIT, default)}")
    return int(raw)


def _cookie(scope: Scope) -> str:
    server = scope.get("server")
    return cookie_name(server[1] if server and len(server) > 1 else None)


def _secure(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def _check_origin(scope: Scope, headers: dict[bytes, bytes]) -> None:
    """A state-changing POST must come from a page of this very origin (the SameSite=Strict cookie
    is the first line; this is the second, and covers the log-in form, which has no cookie yet)."""
    origin = headers.get(b"origin")
    host = headers.get(b"host")
    scheme = "https" if _secure(scope) else "http"
    if origin is not None and origin != b"null":
        if host is not None and origin.decode("latin-1") == f"{scheme}://{host.decode('latin-1')}":
            return
    # Under "Referrer-Policy: no-referrer" browsers send "Origin: null" even for a form of this very
    # page; they also send Sec-Fetch-Site, which no page can set, and which says where it came from.
    elif headers.get(b"sec-fetch-site") == b"same-origin":
        return
    raise _HTTPError(403, "Cross-origin request refused (it must come from this dashboard's own pages).")


async def _send(send: Send, status: int, body: bytes, content_type: bytes, cache: bytes = b"no-store") -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS[:-1],
        (b"cache-control", cache),
    ]
    await send_whole(send, status, headers, body)


async def _send_error(send: Send, status: int, message: str) -> None:
    code = _ERROR_CODES.get(status, "error")
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()
    await _send(send, status, body, b"application/json")


async def _redirect(send: Send, location: str, cookie: bytes | None = None) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"), *SECURITY_HEADERS]
    if cookie is not None:
        headers.append((b"set-cookie", cookie))
    await send_whole(send, 303, headers, b"")
