"""``monitor()`` and ``PrysmClient``: explicit, per-client routing through the Prysm proxy."""

from __future__ import annotations

from ._config import mask_key, resolve_route

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from openai import AsyncOpenAI, OpenAI

    from ._config import Route

    _ClientT = TypeVar("_ClientT", OpenAI, AsyncOpenAI)

_RESERVED = ("api_key", "base_url")


def monitor(
    client: _ClientT,
    prysm_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = 120.0,
    *,
    upstream_api_key: str | None = None,
    fallback: bool = False,
    fallback_cooldown: float | None = None,
) -> _ClientT:
    """Return a copy of ``client`` whose requests go through the Prysm proxy.

    The copy has the same class and keeps the client's settings (http client with its proxies and
    TLS, retries, default headers and query, organization, project); its bearer token is the
    Prysm key and each request carries the current ``prysm_context``. ``client`` itself is not
    modified. Monitoring a monitored client with the same settings returns it unchanged.

    Example::

        client = prysmai.monitor(openai.OpenAI())
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

    Args:
        client: an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client.
        prysm_key: the ``sk-prysm-...`` key; defaults to ``PRYSM_API_KEY``.
        base_url: the proxy URL; defaults to ``PRYSM_BASE_URL``, then ``https://prysmai.io/api/v1``.
        timeout: seconds per request (``None`` keeps the client's).
        upstream_api_key: a provider key the proxy should use instead of its stored one.
        fallback: when the proxy cannot be reached (or answers a 502/503/504 of its own), send the
            request to ``client``'s own base URL with ``client``'s own API key instead of raising
            ``openai.APIConnectionError`` (off by default).
        fallback_cooldown: seconds between tries of a failed proxy; defaults to
            ``PRYSM_FALLBACK_COOLDOWN``, else 30.

    Raises:
        TypeError: ``client`` cannot be routed through the proxy (Azure, provider runtimes, ...).
        ValueError: a missing or malformed key or URL, or ``fallback=True`` on a client without an API key.
    """
    from . import _hooks
    from ._openai_compat import client_classes, unsupported_reason

    reason = unsupported_reason(client)
    if reason is not None:
        raise TypeError(f"monitor(): {reason}")
    route = resolve_route(prysm_key, base_url, timeout, upstream_api_key)
    if client.__dict__.get(_hooks.MONITOR_ATTR) == route:
        return client  # already monitored this way: wrapping again would tag twice
    from ._fallback import monitor_policy

    policy = monitor_policy(client, route, fallback, fallback_cooldown)
    copy_kwargs: dict[str, Any] = {"api_key": route.prysm_key, "base_url": route.base_url}
    if route.timeout is not None:
        copy_kwargs["timeout"] = route.timeout
    monitored = client.copy(**copy_kwargs)
    monitored.__dict__[_hooks.SOURCE_ATTR] = client  # keeps the shared http client open (see SOURCE_ATTR)
    _hooks.attach(monitored, route, is_async=isinstance(monitored, client_classes()[1]), policy=policy)
    from ._notices import monitored as log_monitored

    log_monitored(str(client.base_url), route, policy)
    return monitored


class PrysmClient:
    """A factory of OpenAI clients already routed through the Prysm proxy.

    Example::

        prysm = prysmai.PrysmClient()                 # PRYSM_API_KEY, PRYSM_BASE_URL
        client = prysm.openai(max_retries=5)          # an openai.OpenAI
        aclient = prysm.async_openai()                # an openai.AsyncOpenAI

    Settings are validated here, at construction; ``**kwargs`` of ``openai()`` and
    ``async_openai()`` go to the openai constructor (anything but ``api_key`` and ``base_url``).
    ``fallback=True``: while the proxy is down, requests go straight to ``OPENAI_BASE_URL`` (else
    OpenAI's API) with ``upstream_api_key`` (else ``OPENAI_API_KEY``); off by default.
    """

    def __init__(
        self,
        prysm_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = 120.0,
        *,
        upstream_api_key: str | None = None,
        fallback: bool = False,
        fallback_cooldown: float | None = None,
    ) -> None:
        from ._fallback import factory_policy

        self._route: Route = resolve_route(prysm_key, base_url, timeout, upstream_api_key)
        self._policy = factory_policy(self._route, fallback, fallback_cooldown)

    @property
    def base_url(self) -> str:
        """The proxy URL the clients use."""
        return self._route.base_url

    @property
    def prysm_key(self) -> str:
        """The Prysm key the clients authenticate with (shown masked in ``repr``)."""
        return self._route.prysm_key

    @property
    def timeout(self) -> Any:
        """Seconds per request the clients get unless given their own (``None``: openai's default)."""
        return self._route.timeout

    def openai(self, **kwargs: Any) -> OpenAI:
        """A new ``openai.OpenAI`` client routed through the proxy."""
        from openai import OpenAI

        client: OpenAI = self._make(OpenAI, kwargs, is_async=False)
        return client

    def async_openai(self, **kwargs: Any) -> AsyncOpenAI:
        """A new ``openai.AsyncOpenAI`` client routed through the proxy."""
        from openai import AsyncOpenAI

        client: AsyncOpenAI = self._make(AsyncOpenAI, kwargs, is_async=True)
        return client

    def _make(self, cls: Any, kwargs: dict[str, Any], *, is_async: bool) -> Any:
        from . import _hooks

        reserved = [name for name in _RESERVED if name in kwargs]
        if reserved:
            raise TypeError(
                f"PrysmClient sets {', '.join(reserved)} itself (the Prysm key and proxy URL); "
                "pass them to PrysmClient(prysm_key=..., base_url=...) instead."
            )
        route = self._route
        if route.timeout is not None:
            kwargs.setdefault("timeout", route.timeout)
        client = cls(api_key=route.prysm_key, base_url=route.base_url, **kwargs)
        _hooks.attach(client, route, is_async=is_async, policy=self._policy)
        return client

    def __repr__(self) -> str:
        return f"PrysmClient(base_url={self._route.base_url!r}, prysm_key='{mask_key(self._route.prysm_key)}')"
