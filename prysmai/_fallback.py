"""Fail-open: when the Prysm hop fails, send the request straight to where the client pointed.

Only a failure of the proxy hop itself, seen before openai handed anything to the caller, is a
trigger (:func:`hop_failure`): the connection could not be made (refused, DNS, TLS, connect
timeout), was reset or closed before the answer was complete, or the proxy answered a 502/503/504
of its own (marked with ``X-Prysm-Origin: proxy``). A provider's error relayed by the proxy, a 401
for a bad Prysm key, a 429 and a read timeout are answers, not trigger. A stream that has begun is
never replayed: openai returns it to the caller once its headers arrive, so its later failures
happen outside the request and never reach this module.

Where the fallback takes place, and how it meets openai's own retries: openai's ``request()``
loops over attempts and computes the back-off of each retry inside its ``except`` block. We wrap
that computation (``_calculate_retry_timeout``, in every release 1.0.0..3.x): when the attempt that
just failed went to the proxy and failed at the hop, the breaker opens and the retry goes direct
at once, without back-off: the fallback takes the place of one of openai's retries, never adds
to them. When no retry is left (``max_retries=0``, or the hop failed on the last one), the wrapper
around ``request()`` sends the request direct once more, with openai's retries off. So a request
is sent at most ``max_retries + 2`` times, and a down proxy costs one failed connect per
cool-down, not one per retry.

The direct attempt cannot be redirected again: routing is decided per call in the one place that
redirects (the ``_prepare_options`` hooks read this call's state), not by a second, patched client.
For ``instrument()`` the direct attempt is the client's own request, untouched (its URL, its key);
for ``monitor()`` the request goes to the source client's base URL with the source client's key,
and the Prysm key and ``X-Prysm-*`` headers are removed. The provider key never goes to the proxy.
"""

from __future__ import annotations

import contextvars
import sys

from ._breaker import DIRECT, PROBE, PROXY, Breaker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._patches import Patch, WrapperFunction

FALLBACK_ENV = "PRYSM_FALLBACK"
COOLDOWN_ENV = "PRYSM_FALLBACK_COOLDOWN"
POLICY_ATTR = "_prysm_fallback_policy"

#: Transport errors (httpx and httpx2 share the names) that mean the proxy hop failed. Read and
#: write timeouts are not among them: the proxy took the request and the provider may be slow.
_HOP_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "RemoteProtocolError", "ReadError", "WriteError"})
_PROXY_FAILURE_STATUS = frozenset({502, 503, 504})
_ORIGIN = "x-prysm-origin"


class Direct:
    """Where a client's requests go when they skip the proxy.

    ``base_url`` ``None`` means the client's own request, untouched (``instrument()``); otherwise
    the source client's base URL (with its slash) and ``authorization`` its ``Bearer`` header.
    """

    __slots__ = ("authorization", "base_url")

    def __init__(self, base_url: str | None, authorization: str | None) -> None:
        self.base_url = base_url
        self.authorization = authorization

    def __repr__(self) -> str:  # never the key
        return f"Direct(base_url={self.base_url!r})"


class Policy:
    """One client's (or ``instrument()``'s) fail-open settings and the breaker of its proxy."""

    __slots__ = ("breaker", "direct", "fallback")

    def __init__(self, breaker: Breaker, fallback: bool, direct: Direct | None) -> None:
        self.breaker = breaker
        self.fallback = fallback and direct is not None
        self.direct = direct
        breaker.fallback = self.fallback

    def __repr__(self) -> str:
        return f"Policy(proxy={self.breaker.url!r}, fallback={self.fallback}, direct={self.direct!r})"


class _Call:
    """One call of ``request()``: where its attempts went, so the hooks and the wrappers agree."""

    __slots__ = ("at_proxy", "fell_back", "policy", "route", "saved")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.route: int | None = None  # decided by the first attempt that would go to the proxy
        self.at_proxy = False  # where the latest attempt went
        self.fell_back = False
        self.saved: tuple[Any, Any, Any] | None = None  # url, headers, timeout before redirection


#: The call being made in this thread / task. A new object is set per call and reset after it.
current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("prysm_call", default=None)


# -- settings ------------------------------------------------------------------------------------
def resolve_fallback(value: bool | None, default: bool) -> bool:
    """The fallback switch from the argument, ``PRYSM_FALLBACK``, or ``default``."""
    if value is not None:
        if not isinstance(value, bool):
            raise TypeError(f"fallback must be True or False, not {type(value).__name__}.")
        return value
    import os

    raw = os.environ.get(FALLBACK_ENV, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ValueError(f"{FALLBACK_ENV} must be 1/true/yes or 0/false/no, got {raw!r}.")


def resolve_cooldown(value: float | None) -> float | None:
    """The breaker's cool-down in seconds from the argument or ``PRYSM_FALLBACK_COOLDOWN`` (else None)."""
    source = "fallback_cooldown"
    if value is None:
        import os

        raw = os.environ.get(COOLDOWN_ENV, "").strip()
        if not raw:
            return None
        source = COOLDOWN_ENV
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{COOLDOWN_ENV} must be a number of seconds, got {raw!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{source} must be a number of seconds, not {type(value).__name__}.")
    if not 0 <= value < float("inf"):  # also rejects NaN
        raise ValueError(f"{source} must be a non-negative number of seconds, got {value!r}.")
    return float(value)


# -- classifying failures ------------------------------------------------------------------------
def _from_proxy(response: Any) -> bool:
    try:
        return str(response.headers.get(_ORIGIN, "")).lower() == "proxy"
    except Exception:
        return False


def hop_failure(exc: BaseException | None) -> str | None:
    """Why ``exc`` is a failure of the proxy hop (a short text for the log), or ``None`` if it is not.

    Takes openai's exceptions (the transport error is their ``__cause__``) and the http library's.
    """
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        if status in _PROXY_FAILURE_STATUS and _from_proxy(response):
            return f"HTTP {status} from the proxy"
        return None
    seen: BaseException | None = exc
    for _ in range(4):  # openai's error -> the http library's -> (httpcore's) ...
        if seen is None:
            break
        for klass in type(seen).__mro__:
            if klass.__name__ in _HOP_ERRORS:
                text = str(seen)[:200]
                return f"{type(seen).__name__}: {text}" if text else type(seen).__name__
        seen = seen.__cause__
    return None


def rejected_by_proxy(exc: BaseException) -> bool:
    """A 401 the proxy made itself: the Prysm key is wrong. Loud, never fallen back on."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 401 and _from_proxy(response)


def _answered_by_proxy(exc: BaseException) -> bool:
    return isinstance(getattr(getattr(exc, "response", None), "status_code", None), int)


# -- per attempt (called from the _prepare_options hooks) ---------------------------------------
def to_proxy(call: _Call) -> bool:
    """Whether this attempt of ``call`` goes to the proxy; the first one asks the breaker."""
    if call.route is None:
        call.route = call.policy.breaker.route(call.policy.fallback)
    go = call.route != DIRECT and not call.fell_back
    call.at_proxy = go
    return go


def save_original(call: _Call, options: Any) -> None:
    """Remember the options as the client made them, before the first redirection of this call."""
    if call.saved is None:
        call.saved = (options.url, options.headers, options.timeout)


def restore_original(call: _Call, options: Any, proxy_base: str) -> None:
    """For ``instrument()``'s direct attempt: undo a redirection already applied to ``options``.

    openai 1.0.0 prepares the same options object on every attempt (later releases copy it), and
    a re-sent request starts from options the failed attempt changed: either way they may still
    point at the proxy with the Prysm key.
    """
    saved = call.saved
    url = options.url
    if saved is not None and isinstance(url, str) and url.startswith(proxy_base):
        options.url, options.headers, options.timeout = saved


def go_direct(options: Any, direct: Direct, proxy_base: str) -> None:
    """For ``monitor()``'s direct attempt: the source client's URL and key, no Prysm header."""
    from ._openai_compat import is_given

    base = str(direct.base_url)
    url: str = options.url
    new_url = url
    if "://" not in url:
        new_url = base + url.lstrip("/")
    elif url.startswith(proxy_base):
        new_url = base + url[len(proxy_base) :]
    custom = options.headers if is_given(options.headers) and options.headers else {}
    headers = {
        name: value
        for name, value in custom.items()
        if name.lower() != "authorization" and not name.lower().startswith("x-prysm-")
    }
    headers["Authorization"] = direct.authorization
    # Both computed before either is assigned: never the Prysm key to the provider, nor the reverse.
    options.headers = headers
    options.url = new_url


# -- the wrappers ---------------------------------------------------------------------------------
def _hop_failed_in_loop(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Body of the ``_calculate_retry_timeout`` wrapper (see the module docstring)."""
    call = current.get()
    if call is not None and call.at_proxy:
        try:
            cause = hop_failure(sys.exc_info()[1])
            if cause is not None:
                policy = call.policy
                policy.breaker.hop_failed(call.route or 0, cause, policy.fallback)
                if policy.fallback:
                    call.fell_back = True
                    return 0.0  # the retry goes direct, at once
        except Exception:
            _log_own_error()
    return wrapped(*args, **kwargs)


def retry_delay_wrapper(patch: Patch | None = None) -> WrapperFunction:
    """The wrapper for openai's ``_calculate_retry_timeout`` (a plain method on sync and async clients)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if patch is not None and not patch.active:
            return wrapped(*args, **kwargs)
        return _hop_failed_in_loop(wrapped, args, kwargs)

    return wrapper


def _ended(call: _Call, exc: BaseException | None) -> bool:
    """Account for a finished call; return True when it must be re-sent direct (no retry was left)."""
    route = call.route
    if route is None:
        return False  # it never went to the proxy (not redirected, or it failed before sending)
    policy = call.policy
    breaker = policy.breaker
    if not call.at_proxy:
        breaker.count_direct()
        if route == PROBE and not call.fell_back:  # the probe never reached the proxy (our own failure)
            breaker.released(route)
        return False
    if exc is None:
        breaker.answered(route)
        return False
    cause = hop_failure(exc)
    if cause is not None:
        breaker.hop_failed(route, cause, policy.fallback)
        if policy.fallback:
            call.fell_back = True
            return True
        breaker.count_failed()
        return False
    if rejected_by_proxy(exc):
        from ._log import log_once

        log_once(
            f"rejected-{breaker.url}",
            f"prysmai: the Prysm proxy at {breaker.url} rejected the Prysm key (HTTP 401): check PRYSM_API_KEY "
            "(or prysm_key=...) against the keys the proxy accepts. Such requests are not sent direct.",
        )
        breaker.answered(route, rejected=True)
    elif _answered_by_proxy(exc):
        breaker.answered(route)
    else:
        breaker.count_failed()
        breaker.released(route)
    return False


def _safe_ended(call: _Call, exc: BaseException | None) -> bool:
    try:
        return _ended(call, exc)
    except Exception:
        _log_own_error()
        return False


def _resend(
    call: _Call, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The arguments to send a failed call again, direct and without openai's retries, or None."""
    if not _safe_ended(call, exc):
        return None
    try:
        from ._openai_compat import options_without_retries

        if len(args) > 1:
            return (args[0], options_without_retries(args[1]), *args[2:]), kwargs
        return args, {**kwargs, "options": options_without_retries(kwargs["options"])}
    except Exception:
        _log_own_error()
        call.policy.breaker.count_failed()
        return None


def request_method(is_async: bool, policy_of: Callable[[Any], Policy | None]) -> Callable[[Patch | None, Any], Any]:
    """A replacement factory for openai's ``request()``: one :class:`_Call` per call, fallback when due.

    ``make(patch, original)`` returns a plain function taking the client first (as a method; see
    ``PatchRegistry.replace``); with ``patch`` None, ``original`` is already bound (``monitor()``).
    """

    def make(patch: Patch | None, original: Any) -> Callable[..., Any]:
        def bind(instance: Any) -> Callable[..., Any]:
            bound: Callable[..., Any] = original.__get__(instance, type(instance))
            return bound

        if is_async:

            async def async_request(instance: Any, *args: Any, **kwargs: Any) -> Any:
                wrapped = bind(instance) if patch is not None else original
                policy = policy_of(instance) if patch is None or patch.active else None
                if policy is None:
                    return await wrapped(*args, **kwargs)
                call = _Call(policy)
                token = current.set(call)
                try:
                    try:
                        result = await wrapped(*args, **kwargs)
                    except BaseException as exc:
                        resend = _resend(call, exc, args, kwargs)
                        if resend is None:
                            raise
                    else:
                        if call.at_proxy and call.route == PROXY:  # the happy path, kept short
                            policy.breaker.count_routed()
                        else:
                            _safe_ended(call, None)
                        return result
                    # Outside the except block: a failure of the direct attempt is not chained to ours.
                    try:
                        return await wrapped(*resend[0], **resend[1])
                    finally:
                        policy.breaker.count_direct()
                finally:
                    current.reset(token)

            return _named(async_request, original)

        def request(instance: Any, *args: Any, **kwargs: Any) -> Any:
            wrapped = bind(instance) if patch is not None else original
            policy = policy_of(instance) if patch is None or patch.active else None
            if policy is None:
                return wrapped(*args, **kwargs)
            call = _Call(policy)
            token = current.set(call)
            try:
                try:
                    result = wrapped(*args, **kwargs)
                except BaseException as exc:
                    resend = _resend(call, exc, args, kwargs)
                    if resend is None:
                        raise
                else:
                    if call.at_proxy and call.route == PROXY:  # the happy path, kept short
                        policy.breaker.count_routed()
                    else:
                        _safe_ended(call, None)
                    return result
                try:
                    return wrapped(*resend[0], **resend[1])
                finally:
                    policy.breaker.count_direct()
            finally:
                current.reset(token)

        return _named(request, original)

    return make


def _named(function: Callable[..., Any], original: Any) -> Callable[..., Any]:
    import functools

    return functools.update_wrapper(function, original, updated=())


def _log_own_error() -> None:
    from ._log import log_once

    log_once("fallback", "prysmai's fail-open logic failed; the request proceeds as openai sends it", exc_info=True)


# -- policies --------------------------------------------------------------------------------------
def instrument_policy(route: Any, fallback: bool | None, cooldown: float | None) -> Policy:
    """``instrument()``'s policy: fail-open on by default; direct = the client's own request."""
    from ._breaker import breaker_for

    on = resolve_fallback(fallback, default=True)
    return Policy(breaker_for(route.base_url, resolve_cooldown(cooldown)), on, Direct(None, None) if on else None)


def monitor_policy(source: Any, route: Any, fallback: bool | None, cooldown: float | None) -> Policy:
    """``monitor()``'s policy: off unless ``fallback=True``, which needs the source client's own key.

    The direct URL and key are read now, from ``source`` (the client as the user built it).
    """
    from ._breaker import breaker_for

    on = resolve_fallback(fallback, default=False)
    breaker = breaker_for(route.base_url, resolve_cooldown(cooldown))
    if not on:
        return Policy(breaker, False, None)
    key = getattr(source, "api_key", None)
    if not isinstance(key, str) or not key or key.startswith("sk-prysm-"):
        raise ValueError(
            "monitor(fallback=True) sends requests straight to the client's own base URL with the client's own "
            "API key while the Prysm proxy is down, but this client has no such key (give it api_key='sk-...' or "
            "set OPENAI_API_KEY), or drop fallback=True."
        )
    base = str(source.base_url)
    if not base.endswith("/"):
        base += "/"
    if base.rstrip("/") == route.base_url:
        raise ValueError("monitor(fallback=True): the client points at the Prysm proxy already; no other place to go.")
    return Policy(breaker, True, Direct(base, "Bearer " + key))


def factory_policy(route: Any, fallback: bool, cooldown: float | None) -> Policy:
    """``PrysmClient``'s policy: with ``fallback=True``, direct = ``OPENAI_BASE_URL`` (else OpenAI's
    API) with ``upstream_api_key`` (else ``OPENAI_API_KEY``)."""
    import os

    from ._breaker import breaker_for
    from ._config import validate_url
    from ._openai_compat import OPENAI_DEFAULT_BASE_URL

    breaker = breaker_for(route.base_url, resolve_cooldown(cooldown))
    if not resolve_fallback(fallback, default=False):
        return Policy(breaker, False, None)
    key = route.upstream_api_key or os.environ.get("OPENAI_API_KEY") or None
    if key is None or key.startswith("sk-prysm-"):
        raise ValueError(
            "PrysmClient(fallback=True) sends requests straight to the provider while the Prysm proxy is down, "
            "and needs a provider key for that: pass upstream_api_key='sk-...' or set OPENAI_API_KEY."
        )
    env_base = os.environ.get("OPENAI_BASE_URL")
    base = validate_url(env_base, "OPENAI_BASE_URL") + "/" if env_base else OPENAI_DEFAULT_BASE_URL
    return Policy(breaker, True, Direct(base, "Bearer " + key))
