"""Dashboard log-in: a proxy key is exchanged for a signed, expiring session cookie.

The browser never holds the key. The cookie carries ``<expiry>.<key id>.<signature>``: the expiry
(unix seconds), the id of the key that logged in (``key_`` + 12 hex of its SHA-256, never the key)
and an HMAC-SHA256 of both under a secret that lives only in this process, so a restart logs
everyone out and a cookie cannot be forged or extended without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

COOKIE_NAME = "prysm_session"
#: How long a log-in lasts.
SESSION_SECONDS = 12 * 3600


class Sessions:
    """Issues and checks session cookies."""

    __slots__ = ("_secret", "lifetime")

    def __init__(self, secret: bytes | None = None, lifetime: float = SESSION_SECONDS) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"Sessions(lifetime={self.lifetime:.0f}s)"

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, now: float | None = None) -> str:
        """A cookie value for the key (by its public id, :func:`..config.keys.key_id`) that was just accepted."""
        expiry = int((time.time() if now is None else now) + self.lifetime)
        payload = f"{expiry}.{key_id}"
        return f"{payload}.{self._sign(payload)}"

    def check(self, value: str | None, now: float | None = None) -> str | None:
        """The key id of a valid, unexpired cookie; ``None`` otherwise."""
        if not value or len(value) > 200:
            return None
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(payload), parts[2]):
            return None
        if int(parts[0]) <= (time.time() if now is None else now):
            return None
        return parts[1]

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


def read_cookie(header: bytes | None, name: str) -> str | None:
    """The value of cookie ``name`` from a ``Cookie`` request header."""
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
