"""The connection to the provider: one pooled ``httpx.AsyncClient`` and header filtering."""

from __future__ import annotations

import httpx

from .config import DEMO_UPSTREAM, ProxyConfig

#: Hop-by-hop and framing headers that must not cross the proxy, plus everything that carries
#: credentials or Prysm's own metadata (the upstream gets its own Authorization).
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"authorization",
        b"accept-encoding",
        b"cookie",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
    }
)
DEMO_BASE_URL = "http://prysm-demo.invalid/v1"


def base_url(config: ProxyConfig) -> str:
    return DEMO_BASE_URL if config.upstream == DEMO_UPSTREAM else config.upstream.rstrip("/")


def make_client(config: ProxyConfig) -> httpx.AsyncClient:
    """The shared client: generous pool, keep-alive, no redirects, no env proxies for the demo."""
    timeout = httpx.Timeout(config.upstream_timeout, connect=config.connect_timeout, pool=config.connect_timeout)
    limits = httpx.Limits(
        max_connections=config.max_connections,
        max_keepalive_connections=config.max_keepalive,
        keepalive_expiry=60.0,
    )
    if config.upstream == DEMO_UPSTREAM:
        from .demo_model import DemoTransport

        return httpx.AsyncClient(transport=DemoTransport(), timeout=timeout)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


def request_headers(headers: list[tuple[bytes, bytes]], upstream_key: bytes | None) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream should see them."""
    out = [(k, v) for k, v in headers if k not in _DROP_REQUEST and not k.startswith(b"x-prysm-")]
    out.append((b"accept-encoding", b"identity"))  # the proxy must read what it forwards
    if upstream_key:
        out.append((b"authorization", b"Bearer " + upstream_key))
    return out


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the client should see them (lower-cased names)."""
    return [(k.lower(), v) for k, v in raw if k.lower() not in _DROP_RESPONSE]
