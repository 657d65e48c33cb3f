"""Settings: resolve the Prysm key, proxy URL and timeout from arguments and environment, and
validate them at construction time so a mistake surfaces before the first request.

Imported at interpreter start-up under ``PRYSM_AUTO``: plain string work only, no imports.
"""

from __future__ import annotations

import os

from ._wire import KEY_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT_BASE_URL = "https://prysmai.io/api/v1"
KEY_ENV = "PRYSM_API_KEY"
BASE_URL_ENV = "PRYSM_BASE_URL"

_LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


class InsecureBaseURLWarning(UserWarning):
    """The Prysm key is about to travel in clear text (plain ``http://`` to a non-loopback host)."""


class Route:
    """Where a client's traffic goes and how it authenticates there. Immutable; keys are masked."""

    __slots__ = ("base_url", "prysm_key", "timeout", "upstream_api_key")

    base_url: str
    prysm_key: str
    timeout: object
    upstream_api_key: str | None

    def __init__(self, base_url: str, prysm_key: str, timeout: object, upstream_api_key: str | None) -> None:
        object.__setattr__(self, "base_url", base_url)
        object.__setattr__(self, "prysm_key", prysm_key)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "upstream_api_key", upstream_api_key)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Route is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Route):
            return NotImplemented
        return (self.base_url, self.prysm_key, self.timeout, self.upstream_api_key) == (
            other.base_url,
            other.prysm_key,
            other.timeout,
            other.upstream_api_key,
        )

    def __hash__(self) -> int:
        return hash((self.base_url, self.prysm_key, self.upstream_api_key))

    def __repr__(self) -> str:
        return f"Route(base_url={self.base_url!r}, prysm_key='{mask_key(self.prysm_key)}', timeout={self.timeout!r})"


def mask_key(key: str) -> str:
    """A key as it may be shown: its prefix and nothing that identifies it."""
    return KEY_PREFIX + "***" if key.startswith(KEY_PREFIX) else "***"


def resolve_key(prysm_key: str | None) -> str:
    """The Prysm key from the argument or ``PRYSM_API_KEY``; never echoed in an error.

    The messages start with prysmai 0.1's phrases ("Prysm API key is required", "Invalid Prysm API
    key format"), which its users match on; an empty ``prysm_key`` counts as not given, as it did there.
    """
    prysm_key, source = _argument_or_env(prysm_key or None, "prysm_key", KEY_ENV)
    if prysm_key is None:
        raise ValueError(
            f"Prysm API key is required: pass prysm_key='sk-prysm-...' or set the {KEY_ENV} environment variable."
        )
    if not isinstance(prysm_key, str):
        raise TypeError(f"{source} must be a string, not {type(prysm_key).__name__}.")
    if not prysm_key.startswith(KEY_PREFIX):
        raise ValueError(
            f"Invalid Prysm API key format: the key given by {source} does not start with '{KEY_PREFIX}' (the "
            "value is not shown). Copy the key from your Prysm project settings; an OpenAI key (sk-...) does "
            "not work here."
        )
    if len(prysm_key) == len(KEY_PREFIX) or not _is_header_safe(prysm_key):
        raise ValueError(
            f"Invalid Prysm API key format: the key given by {source} is empty after '{KEY_PREFIX}' or contains "
            "whitespace or control characters (the value is not shown)."
        )
    return prysm_key


def resolve_upstream_key(upstream_api_key: str | None) -> str | None:
    """Validate the optional provider key sent as ``X-Prysm-Upstream-Key``."""
    if upstream_api_key is None:
        return None
    if not isinstance(upstream_api_key, str):
        raise TypeError(f"upstream_api_key must be a string, not {type(upstream_api_key).__name__}.")
    if not upstream_api_key or not _is_header_safe(upstream_api_key):
        raise ValueError(
            "upstream_api_key is empty or contains whitespace or control characters (the value is not shown)."
        )
    return upstream_api_key


def resolve_base_url(base_url: str | None) -> str:
    """The proxy URL from the argument, ``PRYSM_BASE_URL`` or the default, without a trailing slash."""
    base_url, source = _argument_or_env(base_url, "base_url", BASE_URL_ENV)
    if base_url is None:
        return DEFAULT_BASE_URL
    url = validate_url(base_url, source)
    from ._notices import check_path

    check_path(url, source)
    if url.lower().startswith("http://") and not _is_loopback(url):
        import warnings

        warnings.warn(
            f"{source} {url!r} uses plain http to a non-loopback host: the Prysm key would travel in clear "
            "text. Use https, or a loopback address for a local proxy.",
            InsecureBaseURLWarning,
            stacklevel=4,
        )
    return url


def validate_url(url: object, source: str) -> str:
    """Check that ``url`` is an absolute http(s) URL; return it without a trailing slash."""
    if not isinstance(url, str):
        # httpx / httpx2 URL objects are welcome; anything else is a mistake.
        if type(url).__name__ != "URL":
            raise TypeError(f"{source} must be a string URL, not {type(url).__name__}.")
        url = str(url)
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        valid = (
            parts.scheme.lower() in ("http", "https")
            and bool(parts.hostname)
            and (parts.port is None or parts.port > 0)  # .port raises ValueError when malformed
            and "?" not in url  # stricter than an empty .query / .fragment: "http://h/?" is refused too
            and "#" not in url
            and _is_header_safe(url)
        )
    except ValueError:
        valid = False
    if not valid:
        # A key pasted into the wrong setting must not end up in a traceback or a log.
        shown = "a value that looks like a key (not shown)" if "sk-" in url else repr(url)
        raise ValueError(
            f"{source} must be an absolute http(s) URL such as 'https://prysmai.io/api/v1' or "
            f"'http://localhost:3000/api/v1', got {shown}."
        )
    return url.rstrip("/")


def resolve_timeout(timeout: object, source: str = "timeout") -> object:
    """Accept a positive number of seconds, ``None`` (no override) or an httpx/openai ``Timeout``."""
    if timeout is None or type(timeout).__name__ == "Timeout":
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{source} must be a number of seconds, not {type(timeout).__name__}.")
    if not timeout > 0:  # also rejects NaN
        raise ValueError(f"{source} must be a positive number of seconds, got {timeout!r}.")
    return float(timeout)


def resolve_route(prysm_key: str | None, base_url: str | None, timeout: object, upstream_api_key: str | None) -> Route:
    """Resolve and validate every setting of a route, raising at the first bad one."""
    return Route(
        base_url=resolve_base_url(base_url),
        prysm_key=resolve_key(prysm_key),
        timeout=resolve_timeout(timeout),
        upstream_api_key=resolve_upstream_key(upstream_api_key),
    )


def resolve_base_url_list(urls: Iterable[str], source: str) -> frozenset[str]:
    """Normalise a list of base URLs to the form openai stores (trailing slash)."""
    if isinstance(urls, str):
        raise TypeError(f"{source} must be a list of URLs, not a single string.")
    return frozenset(validate_url(url, source) + "/" for url in urls)


def _argument_or_env(value: str | None, argument: str, env: str) -> tuple[str | None, str]:
    """The argument if given, else the environment variable (empty counts as unset), and its name."""
    if value is not None:
        return value, argument
    return os.environ.get(env) or None, env


def _is_header_safe(value: str) -> bool:
    return value.isprintable() and not any(ch.isspace() for ch in value)


def _is_loopback(url: str) -> bool:
    """For a URL ``validate_url`` accepted."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""  # lower-cased, IPv6 brackets and port removed
    # 127.0.0.0/8 as an IPv4 literal only: "127.example.com" is a DNS name like any other.
    is_ipv4_loopback = host.startswith("127.") and host.count(".") == 3 and host.replace(".", "").isdigit()
    return host in _LOOPBACK_HOSTS or is_ipv4_loopback or host.endswith(".localhost")
