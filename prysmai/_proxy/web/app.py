"""The dashboard as a pure-ASGI application: pages, log-in and static assets.

Served by the proxy for every path outside ``/api/v1`` (and alone by ``prysmai ui``). Routes
(:data:`ROUTES`, a declared table):

* ``GET /``, ``/traces``, ``/traces/{id}``, ``/sessions``, ``/sessions/{id}``, ``/users``, ``/users/{id}``,
  ``/budgets`` -- the
  page shell (one HTML file; the JavaScript modules draw the page from the JSON below);
* ``GET /login``, ``POST /ui/login``, ``POST /ui/logout`` -- see :mod:`.auth`;
* ``GET /ui/api/{read}`` -- the read API (:mod:`..api.reads`: the same handlers, limits and
  documents as ``/api/v1/{read}``), authenticated by the session cookie instead of a key;
  ``POST /ui/api/traces/{id}/scores`` and ``DELETE /ui/api/scores/{id}``, its writes (a
  reviewer's scores, recorded with the key id of the session), from this dashboard's own pages
  only (``_check_origin``);
* ``GET /static/{file}`` -- the CSS and JavaScript shipped in the package.

Captured content is untrusted: it only ever leaves here as JSON (``application/json``, nosniff) and
the pages put it into the document as text. Every response carries a strict Content-Security-Policy
that allows nothing but this origin's own files, so even a mistake in a page could neither run an
injected script nor send data elsewhere. Errors are the proxy's one :class:`~..asgi.HTTPError`.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from urllib.parse import parse_qs, quote

from ..api import jsonshape
from ..api.download import Download
from ..asgi import HTTPError, Routes, client_name, internal_error, send_whole, trust
from .auth import AuthThrottle, Sessions, cookie_name, read_cookie

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..api.reads import Reads
    from ..asgi import Receive, Scope, Send
    from ..config.projects import KeyEntry

    Page = Callable[["Dashboard", Scope, Receive, Send, "str | None"], Awaitable[None]]

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
_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8", ".css": b"text/css"}
_MAX_FORM_BYTES = 4096
#: What a page's path may carry: a trace's id, a session's id (any text, percent-encoded).
_PAGE_PARAMS = {
    "/traces/": re.compile(r"[0-9A-Za-z_-]{1,64}"),
    "/sessions/": re.compile(r".{1,2048}", re.S),
    "/users/": re.compile(r".{1,2048}", re.S),
}
_API_PREFIX = "/ui/api/"


def _load_assets() -> dict[str, tuple[bytes, bytes]]:
    """Every file of ``static/``, read once: name -> (content type, bytes)."""
    folder = resources.files(__package__).joinpath("static")
    assets: dict[str, tuple[bytes, bytes]] = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (_TYPES[suffix], entry.read_bytes())
    return assets


class Dashboard:
    """The dashboard over the read API ``reads`` (and its store), for whoever holds a key of
    ``reads.tenancy()``. A project's key sees that project's traces; an admin key every project's."""

    def __init__(
        self,
        reads: Reads,
        *,
        sessions: Sessions | None = None,
        throttle: AuthThrottle | None = None,
        cookie: str | None = None,
    ) -> None:
        self.reads = reads
        self.sessions = sessions if sessions is not None else Sessions()
        #: The session cookie's name, when fixed (replicas of one database share it); else it
        #: names the port the request came to (:func:`.auth.cookie_name`).
        self.cookie = cookie
        #: Failed log-ins per client address (the proxy shares its own, which counts wrong API keys too).
        self.throttle = throttle if throttle is not None else AuthThrottle()
        self.assets = _load_assets()

    def __repr__(self) -> str:
        return f"Dashboard({self.reads.store!r}, read_only={self.reads.read_only})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            found = ROUTES.match(path)
            if found is None:
                raise HTTPError(404, f"Unknown path {path} (the dashboard is at /, the API under /api/v1)", "not_found")
            (methods, page), param = found
            if scope["method"] not in methods:
                raise HTTPError(405, f"{scope['method']} is not supported on {path}", "method_not_allowed")
            await page(self, scope, receive, send, param)
        except HTTPError as exc:
            await _send(send, exc.status, exc.body(), b"application/json", extra=exc.headers)
        except Exception as exc:  # a bug of ours: a JSON 500, never the server's plain text
            log.exception("internal error in the dashboard on %s %s", scope.get("method"), path)
            error = internal_error(exc)
            await _send(send, error.status, error.body(), b"application/json")

    def _who(self, scope: Scope) -> KeyEntry | None:
        """The key of a valid session cookie, if that key is still accepted (a reload may have
        removed it: its sessions end with it)."""
        key_id = self.sessions.check(read_cookie(_cookie_header(scope), self._cookie(scope)))
        entry = None if key_id is None else self.reads.tenancy().by_key_id(key_id)
        if entry is not None:
            trust(scope)
        return entry

    def _cookie(self, scope: Scope) -> str:
        if self.cookie is not None:
            return self.cookie
        server = scope.get("server")
        return cookie_name(server[1] if server and len(server) > 1 else None)

    # -- pages and files ----------------------------------------------------------------------------
    async def _page(self, scope: Scope, receive: Receive, send: Send, param: str | None) -> None:
        path: str = scope["path"]
        if param is not None:
            pattern = _PAGE_PARAMS[path[: len(path) - len(param)]]
            if not pattern.fullmatch(param):
                raise HTTPError(404, f"Unknown path {path} (the dashboard is at /, the API under /api/v1)", "not_found")
        if self._who(scope) is None:
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            await _redirect(send, "/login?next=" + quote(target, safe=""))
        else:
            await _send(send, 200, self.assets["index.html"][1], _TYPES[".html"])

    async def _static(self, scope: Scope, receive: Receive, send: Send, name: str | None) -> None:
        asset = self.assets.get(name or "")
        if asset is None:
            raise HTTPError(404, "no such file", "not_found")
        await _send(send, 200, asset[1], asset[0], cache=b"no-cache")

    async def _favicon(self, scope: Scope, receive: Receive, send: Send, _: str | None) -> None:
        await _send(send, 204, b"", b"image/x-icon", cache=b"max-age=86400")

    async def _login_page(self, scope: Scope, receive: Receive, send: Send, _: str | None) -> None:
        await _send(send, 200, self.assets["login.html"][1], _TYPES[".html"])

    # -- log-in ------------------------------------------------------------------------------------
    async def _login(self, scope: Scope, receive: Receive, send: Send, _: str | None) -> None:
        _check_origin(scope)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > _MAX_FORM_BYTES:
                raise HTTPError(413, "log-in form too large", "request_too_large")
            if not message.get("more_body"):
                break
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        key = form.get("key", "").strip().encode("utf-8", "replace")
        target = form.get("next", "/")
        # Only a path of this site: never "//host" or "/\host", which browsers read as another origin.
        if not target.startswith("/") or target.startswith(("//", "/\\")) or not target.isprintable():
            target = "/"
        target = quote(target, safe="/?&=%:@+,;~-._!$'()*")  # no raw CR/LF or non-ASCII in Location
        address = client_name(scope)
        wait = self.throttle.retry_after(address) if self.throttle.failures else None
        if wait is not None:
            raise self.throttle.refusal(wait)
        entry = self.reads.tenancy().check(key) if key else None
        if entry is None:
            self.throttle.failed(address)
            await _redirect(send, "/login?error=1&next=" + quote(target, safe=""))
            return
        cookie = self.sessions.set_cookie(self._cookie(scope), self.sessions.issue(entry.key_id), _secure(scope))
        await _redirect(send, target, cookie)

    async def _logout(self, scope: Scope, receive: Receive, send: Send, _: str | None) -> None:
        _check_origin(scope)
        # Ended here (and on every replica, once shared), not only in the browser.
        self.sessions.end(read_cookie(_cookie_header(scope), self._cookie(scope)))
        await _redirect(send, "/login?out=1", self.sessions.clear_cookie(self._cookie(scope), _secure(scope)))

    # -- the read API, by session ------------------------------------------------------------------
    async def _api(self, scope: Scope, receive: Receive, send: Send, _: str | None) -> None:
        who = self._who(scope)
        if who is None:
            raise HTTPError(401, "Log in first (POST /ui/login with a proxy key).", "login_required")
        if scope["method"] == "GET":
            document = await self.reads.serve(scope, _API_PREFIX, who)
            if isinstance(document, Download):  # the export button's download
                await document.send(send, receive, SECURITY_HEADERS[:1] + SECURITY_HEADERS[2:-1])
                return
            status = 200
        else:
            # A state-changing request (a score): from this dashboard's own pages only. The
            # SameSite=Strict cookie keeps other sites' requests from carrying the session; the
            # Origin (or Sec-Fetch-Site) check refuses what still gets here.
            _check_origin(scope)
            if not self.reads.writes(scope["path"][len(_API_PREFIX) :]):
                raise HTTPError(405, f"{scope['method']} is not supported on {scope['path']}", "method_not_allowed")
            status, document = await self.reads.write(scope, receive, _API_PREFIX, who, "dashboard")
        # Captured values may hold unpaired surrogates: the shared encoder escapes them.
        await _send(send, status, jsonshape.encode(document, allow_nan=False), b"application/json")


_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
#: The declared route table: path -> (methods, handler).
ROUTES: Routes[tuple[frozenset[str], Page]] = Routes(
    {
        "/": (_GET, Dashboard._page),
        "/traces": (_GET, Dashboard._page),
        "/traces/{id}": (_GET, Dashboard._page),
        "/sessions": (_GET, Dashboard._page),
        "/sessions/{id}": (_GET, Dashboard._page),
        "/users": (_GET, Dashboard._page),
        "/users/{id}": (_GET, Dashboard._page),
        "/budgets": (_GET, Dashboard._page),
        "/login": (_GET, Dashboard._login_page),
        "/ui/login": (_POST, Dashboard._login),
        "/ui/logout": (_POST, Dashboard._logout),
        "/ui/api/{read}": (frozenset({"GET", "POST", "DELETE"}), Dashboard._api),
        "/static/{file}": (_GET, Dashboard._static),
        "/favicon.ico": (_GET, Dashboard._favicon),
    }
)


def _cookie_header(scope: Scope) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == b"cookie"), None)


def _secure(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def _check_origin(scope: Scope) -> None:
    """A state-changing POST must come from a page of this very origin (the SameSite=Strict cookie
    is the first line; this is the second, and covers the log-in form, which has no cookie yet)."""
    headers = dict(scope["headers"])  # the few headers read here appear once
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
    raise HTTPError(403, "Cross-origin request refused (it must come from this dashboard's own pages).", "cross_origin")


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    cache: bytes = b"no-store",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS[:-1],
        (b"cache-control", cache),
        *(extra or ()),
    ]
    await send_whole(send, status, headers, body)


async def _redirect(send: Send, location: str, cookie: bytes | None = None) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"), *SECURITY_HEADERS]
    if cookie is not None:
        headers.append((b"set-cookie", cookie))
    await send_whole(send, 303, headers, b"")
