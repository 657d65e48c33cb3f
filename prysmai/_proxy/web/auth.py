"""Dashboard log-in: a proxy key is exchanged for a signed, expiring session cookie.

The browser never holds the key. The cookie carries ``<expiry>.<key id>.<session id>.<signature>``:
the expiry (unix seconds), the id of the key that logged in (``key_`` + 12 hex of its SHA-256,
never the key), a random session id and an HMAC-SHA256 of the three under a secret, so a cookie
cannot be forged or extended without the secret. The process also keeps the ids of the sessions
that have not ended: logging out ends one on the server (its cookie, replayed, is refused),
checked on each request by one dict lookup.

A proxy alone signs with a secret that lives only in its process, so a restart logs everyone out,
unless the config file gives one (``[dashboard] session_secret``): then a cookie signed with it is
valid on every process given that file, across restarts and without a database, on its signature
(until it expires or is known to have ended: a log-out ends it here at once, and elsewhere once
shared through the database).
Replicas on one PostgreSQL database share theirs (:class:`Sessions` in shared mode, fed by the
proxy's sharing thread): the secret is the database's, and the sessions issued and ended on each
replica reach the others within a sharing interval. A cookie issued on another replica moments
ago, which this one has not heard of yet, is accepted for :data:`SHARING_GRACE` seconds after its
issue on its signature alone (a session ended within that time is remembered as ended).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from ..asgi import HTTPError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("prysmai.proxy")

COOKIE_NAME = "prysm_session"
#: How long a log-in lasts.
SESSION_SECONDS = 12 * 3600
#: Failed authentications from one client address within :data:`AUTH_WINDOW` seconds after which
#: its attempts are refused (:class:`AuthThrottle`).
MAX_AUTH_FAILURES = 20
AUTH_WINDOW = 60.0
#: Seconds after its issue that a validly signed session another replica issued is accepted before
#: this replica has heard of it (a few sharing intervals).
SHARING_GRACE = 5.0

#: A session as it is shared: (session id, key id, expiry, ended).
SessionEvent = tuple[str, str, float, bool]


class Sessions:
    """Issues, checks and ends session cookies."""

    __slots__ = ("_ended", "_events", "_live", "_lock", "_secret", "configured", "lifetime", "max_live", "shared")

    def __init__(
        self,
        secret: bytes | None = None,
        lifetime: float = SESSION_SECONDS,
        max_live: int = 10_000,
        *,
        configured: bool = False,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        #: ``secret`` is the config file's (``[dashboard] session_secret``): kept when sharing.
        self.configured = configured and secret is not None
        self.lifetime = lifetime
        #: Live sessions: id -> expiry (unix seconds), oldest first.
        self._live: dict[str, float] = {}
        #: Sessions kept at most; beyond it the oldest ends (each took a valid key to open).
        self.max_live = max_live
        #: Shared with other replicas (:meth:`share`): sessions issued and ended here wait in
        #: ``_events`` for the sharing thread; ``_ended`` holds sessions ended lately (id ->
        #: expiry), so a cookie within its grace is not taken for one not heard of yet.
        self.shared = False
        self._events: list[SessionEvent] = []
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Sessions(lifetime={self.lifetime:.0f}s, live={len(self._live)})"

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, now: float | None = None) -> str:
        """A cookie value for the key (by its public id, :func:`..config.keys.key_id`) that was just accepted."""
        now = time.time() if now is None else now
        expiry = int(now + self.lifetime)
        session = secrets.token_urlsafe(12)
        if len(self._live) >= self.max_live:
            self._prune(now)
        self._live[session] = expiry
        if self.shared:
            with self._lock:
                self._events.append((session, key_id, float(expiry), False))
        payload = f"{expiry}.{key_id}.{session}"
        return f"{payload}.{self._sign(payload)}"

    # -- sharing with other replicas (the sharing thread) ---------------------------------------------
    def share(self, secret: bytes) -> None:
        """From now on, sign with the replicas' shared ``secret`` and share sessions. Sessions
        issued under another secret (before the database could be reached) end. A secret from the
        config file stays: the replicas given that file agree on it, database or not."""
        if secret != self._secret and not self.configured:
            self._secret = secret
            self._live.clear()
        self.shared = True

    def take_events(self) -> list[SessionEvent]:
        """The sessions issued and ended here since the last call, to publish."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def learn(self, events: list[SessionEvent], now: float | None = None) -> None:
        """Apply what the replicas shared: a session issued (live here too, unless ended) or ended."""
        now = time.time() if now is None else now
        for session, _key_id, expiry, ended in events:
            if ended:
                self._live.pop(session, None)
                self._ended[session] = expiry
            elif session not in self._ended and expiry > now:
                if session not in self._live and len(self._live) >= self.max_live:
                    self._prune(now)
                self._live[session] = expiry
        for session, expiry in list(self._ended.items()):
            if expiry <= now:
                del self._ended[session]

    def _prune(self, now: float) -> None:
        for session, expiry in list(self._live.items()):
            if expiry <= now:
                del self._live[session]
        while len(self._live) >= self.max_live:
            del self._live[next(iter(self._live))]

    def _verified(self, value: str | None, now: float | None) -> tuple[str, str] | None:
        """(key id, session id) of a cookie with a valid signature that has not expired."""
        # A cookie is ASCII when we issued it; anything else is someone else's (and cannot be signed).
        if not value or len(value) > 200 or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 4 or not parts[0].isdigit():
            return None
        if not hmac.compare_digest(self._sign(".".join(parts[:3])), parts[3]):
            return None
        if int(parts[0]) <= (time.time() if now is None else now):
            return None
        return parts[1], parts[2]

    def check(self, value: str | None, now: float | None = None) -> str | None:
        """The key id of a valid, unexpired cookie of a session that has not ended; ``None`` otherwise."""
        found = self._verified(value, now)
        if found is None:
            return None
        if (
            found[1] not in self._live
            and not self._just_issued_elsewhere(value, found[1], now)
            # The config file's secret: signed by a replica given the same file (database or not,
            # before or after a restart), unless known to have ended.
            and not (self.configured and found[1] not in self._ended)
        ):
            return None
        return found[0]

    def _just_issued_elsewhere(self, value: str | None, session: str, now: float | None) -> bool:
        """Shared: a validly signed session issued within :data:`SHARING_GRACE` seconds that has not
        ended (another replica issued it, and has not shared it yet)."""
        if not self.shared or value is None or session in self._ended:
            return False
        issued = int(value.split(".", 1)[0]) - self.lifetime
        return issued >= (time.time() if now is None else now) - SHARING_GRACE

    def end(self, value: str | None) -> None:
        """End the session of this cookie (logging out): the cookie is refused from now on (on
        every replica, once shared)."""
        found = self._verified(value, None)
        if found is not None:
            self._live.pop(found[1], None)
            if self.shared or self.configured:
                # A configured secret: published when the database can be reached (before the
                # first exchange too), kept here meanwhile -- the newest news, bounded.
                expiry = float(value.split(".", 1)[0]) if value else 0.0
                self._ended[found[1]] = expiry
                if len(self._ended) > self.max_live:
                    now = time.time()
                    self._ended = {s: e for s, e in self._ended.items() if e > now}
                with self._lock:
                    self._events.append((found[1], found[0], expiry, True))
                    del self._events[: -self.max_live]

    def set_cookie(self, name: str, value: str, secure: bool) -> bytes:
        """The ``Set-Cookie`` header value: HttpOnly, SameSite=Strict, scoped to the whole site."""
        flags = f"; Max-Age={int(self.lifetime)}; Path=/; HttpOnly; SameSite=Strict"
        return f"{name}={value}{flags}{'; Secure' if secure else ''}".encode("ascii")

    @staticmethod
    def clear_cookie(name: str, secure: bool) -> bytes:
        flags = "; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
        return f"{name}={flags}{'; Secure' if secure else ''}".encode("ascii")


def cookie_name(port: int | None) -> str:
    """Cookies are shared by every port of a host: a proxy and a ``prysmai ui`` side by side (each
    with its own secret) would log each other out under one name, so the port is part of it."""
    return f"{COOKIE_NAME}_{port}" if port else COOKIE_NAME


def shared_cookie_name(db_url: str) -> str:
    """The session cookie's name on the proxies and ``prysmai ui`` of one PostgreSQL database: the
    same on each (their ports differ), named after the database's host, port and name (never its
    user or password)."""
    parts = urlsplit(db_url)
    where = f"{parts.hostname}:{parts.port}{parts.path}"
    return f"{COOKIE_NAME}_{hashlib.sha256(where.encode()).hexdigest()[:10]}"


def read_cookie(header: bytes | None, name: str) -> str | None:
    """The value of cookie ``name`` from a ``Cookie`` request header."""
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class AuthThrottle:
    """Failed authentications per client address -- a wrong key on the API, a wrong key at the
    dashboard's log-in -- shared by both. After ``max_failures`` within ``window`` seconds, every
    attempt from that address that presents a key is refused with ``429`` and ``Retry-After``
    (the right key too: an answer that differed would let the guessing go on) until the oldest of
    those failures leaves the window. ``note(message)`` is told once when an address is blocked
    (the proxy's rate-limited log).

    Cheap where nobody fails: one check of an empty dict. Bounded: at most ``max_addresses``
    addresses are followed, the oldest forgotten first."""

    __slots__ = ("_note", "failures", "max_addresses", "max_failures", "window")

    def __init__(
        self,
        max_failures: int = MAX_AUTH_FAILURES,
        window: float = AUTH_WINDOW,
        *,
        max_addresses: int = 10_000,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        #: address -> times (monotonic) of its recent failures, oldest first; empty when nobody failed.
        self.failures: dict[str, deque[float]] = {}
        self._note = note if note is not None else log.warning

    def retry_after(self, address: str, now: float | None = None) -> int | None:
        """Seconds until ``address`` may try again, or ``None`` if it may now."""
        times = self.failures.get(address)
        if times is None:
            return None
        horizon = (time.monotonic() if now is None else now) - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.failures[address]
            return None
        if len(times) < self.max_failures:
            return None
        return max(1, math.ceil(times[0] - horizon))

    def failed(self, address: str, now: float | None = None) -> None:
        """Count a failed authentication from ``address``."""
        now = time.monotonic() if now is None else now
        times = self.failures.get(address)
        if times is None:
            if len(self.failures) >= self.max_addresses:
                del self.failures[next(iter(self.failures))]
            times = self.failures[address] = deque(maxlen=self.max_failures)
        times.append(now)
        if len(times) == self.max_failures and self.retry_after(address, now) is not None:
            self._note(
                f"{self.max_failures} failed authentications from {address} within {self.window:g} s: "
                f"its attempts get 429 until they are older than that"
            )

    def refusal(self, wait: int) -> HTTPError:
        return HTTPError(
            429,
            f"Too many failed authentications from this address; retry in {wait} s with a valid key.",
            "too_many_failed_authentications",
            "rate_limit_error",
            headers=[(b"retry-after", str(wait).encode())],
        )
