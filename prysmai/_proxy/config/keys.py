"""Prysm keys given on the command line: where they come from, how strong they must be, and the
public id a key is known by. (Checking a presented key: :class:`.projects.Tenancy`.)"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys

from ..._wire import KEY_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Protocol

    class _Hash(Protocol):
        def digest(self) -> bytes: ...


def _sha256_constructor() -> Callable[[bytes], _Hash]:
    """CPython's built-in SHA-256 where the interpreter has it, else hashlib's (OpenSSL).

    Same digests; but every forwarded request hashes its key once, and with the caches cold (a
    proxy between two requests of a slow client) OpenSSL's EVP layer takes about twice as long as
    the built-in (``bench/key_hash.py`` measures both). Not on PyPy, whose ``_sha256`` is pure
    Python."""
    if sys.implementation.name == "cpython":
        for name in ("_sha2", "_sha256"):  # Python 3.12+, 3.9-3.11
            try:
                module = __import__(name)
            except ImportError:  # a build without its own hashes: OpenSSL's
                continue
            constructor = getattr(module, "sha256", None)
            if constructor is not None:
                return constructor  # type: ignore[no-any-return]
    return hashlib.sha256


#: SHA-256 of bytes (``sha256(data).digest()``): how keys are held and presented keys checked.
sha256 = _sha256_constructor()

KEYS_ENV = "PRYSM_PROXY_KEYS"
KEYS_FILE_ENV = "PRYSM_PROXY_KEYS_FILE"


class KeyConfigError(ValueError):
    """A configured key is malformed (the message never contains the key)."""


def generate_key() -> str:
    """A fresh random key: ``sk-prysm-`` followed by 32 URL-safe characters."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


#: A key the proxy accepts guards every prompt it stores: at least this many characters after the
#: prefix, with at least ``MIN_DISTINCT_CHARS`` different ones (``generate_key`` makes 32 random).
MIN_SECRET_CHARS = 16
MIN_DISTINCT_CHARS = 8
GENERATE_HINT = "python3 -c \"import secrets; print('sk-prysm-' + secrets.token_urlsafe(24))\""
#: Placeholders seen in docs and examples; refused by name so the message can say why.
_PLACEHOLDERS = frozenset({"...", "xxx", "your-key", "your-key-here", "changeme", "local-dev-key"})


def _validate(key: str, source: str) -> str:
    key = key.strip()
    if not key.startswith(KEY_PREFIX) or len(key) <= len(KEY_PREFIX):
        raise KeyConfigError(f"a key from {source} does not start with {KEY_PREFIX!r} (or is empty after it)")
    if not key.isascii() or any(c.isspace() for c in key):
        raise KeyConfigError(f"a key from {source} contains whitespace or non-ASCII characters")
    secret = key[len(KEY_PREFIX) :]
    if secret.lower() in _PLACEHOLDERS or set(secret) <= set(".x*<>"):
        raise KeyConfigError(
            f"a key from {source} is a documentation placeholder, not a key; make one with: {GENERATE_HINT}"
        )
    if len(secret) < MIN_SECRET_CHARS or len(set(secret)) < MIN_DISTINCT_CHARS:
        raise KeyConfigError(
            f"a key from {source} is too weak: it needs at least {MIN_SECRET_CHARS} characters after "
            f"{KEY_PREFIX!r}, with {MIN_DISTINCT_CHARS} or more different ones; make one with: {GENERATE_HINT}"
        )
    return key


def read_keys_file(path: str) -> list[str]:
    """Keys from a file: one per line; blank lines and lines starting with ``#`` are ignored."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    return [
        _validate(line, f"the keys file {path}") for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]


def collect_keys(
    flag_keys: Iterable[str] = (), keys_file: str | None = None, environ: dict[str, str] | None = None
) -> list[str]:
    """All configured keys: ``--key`` flags, ``PRYSM_PROXY_KEYS`` (comma-separated) and the keys
    file (``--keys-file`` or ``PRYSM_PROXY_KEYS_FILE``). Sources add up; duplicates are removed."""
    env = os.environ if environ is None else environ
    keys = [_validate(k, "--key") for k in flag_keys]
    keys += [_validate(k, KEYS_ENV) for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    path = keys_file or env.get(KEYS_FILE_ENV) or None
    if path:
        keys += read_keys_file(path)
    return list(dict.fromkeys(keys))


def key_digest(key: str) -> bytes:
    """The SHA-256 digest of a key: what the proxy keeps instead of it (a config file's
    ``sha256:`` form is its hex)."""
    return sha256(key.encode("utf-8")).digest()


def digest_key_id(digest: bytes) -> str:
    """A key's stable, public id from its digest: ``key_`` and the first 12 hex digits. Recorded
    with each trace instead of the key; cannot be turned back into the key."""
    return "key_" + digest.hex()[:12]


def key_id(key: str) -> str:
    """The public id of ``key`` (see :func:`digest_key_id`)."""
    return digest_key_id(key_digest(key))
