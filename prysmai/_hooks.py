"""What happens to each request: the wrappers around openai's ``_prepare_options`` hook.

Every openai release from 1.0.0 to 3.x calls ``client._prepare_options(options)`` once per attempt
(retries included) for every request of every resource, sync and async, streamed or not, raw or
parsed, before it builds the HTTP request. Working there, rather than on the http client or its
transport, keeps the user's http client (proxies, TLS, pool) and survives a library swapping it.
1.x mutates ``options`` in place and returns ``None``; later releases return the options to use.

Two kinds of wrapper:

* class-level, applied by ``instrument()`` through the patch registry: if the client targets
  OpenAI's default API, point the request at the proxy, authenticate with the Prysm key and tag it;
* instance-level, applied by ``monitor()`` to the clients it creates (already pointed at the proxy
  by construction): tag each request.

We never mutate the caller's header dict: each request gets a new one.
"""

from __future__ import annotations

import functools

from . import _fallback, _instrument, _scores
from ._context import current_headers
from ._openai_compat import custom_default_headers, is_given, omit_shadowed_defaults, redirectable
from ._wire import UPSTREAM_KEY_HEADER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from ._config import Route
    from ._patches import Patch, WrapperFunction

MONITOR_ATTR = "_prysm_monitor_route"
#: What a monitored client was copied from. Early openai 1.x releases (1.0.0 among them) close a
#: client's own http client in ``__del__``, and ``copy()`` shares that http client:
#: ``monitor(OpenAI())`` would break once the temporary original is collected, unless the copy
#: keeps it alive.
SOURCE_ATTR = "_prysm_copied_from"
_DECISION_ATTR = "_prysm_redirect_decision"
_UPSTREAM_KEY_LOWER = UPSTREAM_KEY_HEADER.lower()


def _options_of(result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if result is not None:
        return result
    return args[0] if args else kwargs["options"]


def _tag(
    options: Any,
    route: Route,
    authorization: str | None,
    client_base: str | None,
    defaults: Mapping[str, object] | None = None,
    set_timeout: bool = False,
) -> None:
    """Add the context (and route) headers to ``options``, and send it to ``route.base_url``.

    ``client_base`` is the client's own base URL (with its slash), or ``None`` to leave the URL
    alone. A relative URL becomes absolute either way: openai then skips joining it to the base
    URL, which costs more than everything else done here. With ``authorization``, the request
    authenticates with the Prysm key whatever the client's own key or headers say, so the user's
    provider key never reaches the proxy. ``defaults`` are the client's own ``default_headers``:
    one of them spelt in another case than a header set here is omitted (openai < 3 would send
    both). Everything is computed before anything is assigned, so a failure half-way cannot send
    the user's own OpenAI key to the proxy, nor a Prysm key to OpenAI.
    """
    context = current_headers()
    upstream_key = route.upstream_api_key
    headers: dict[str, Any] | None = None
    if context or upstream_key is not None or authorization is not None:
        custom = options.headers
        if not is_given(custom) or not custom:
            custom = {}
        # An explicit per-call header wins over the context (names are case-insensitive).
        explicit = {name.lower() for name in custom} if custom else ()
        headers = {}
        for name, value in context:
            if name.lower() not in explicit:
                headers[name] = value
        if upstream_key is not None and _UPSTREAM_KEY_LOWER not in explicit:
            headers[UPSTREAM_KEY_HEADER] = upstream_key
        headers.update(custom)
        if authorization is not None:
            if "authorization" in explicit:
                headers = {name: value for name, value in headers.items() if name.lower() != "authorization"}
            headers["Authorization"] = authorization
        if defaults:
            headers = omit_shadowed_defaults(defaults, headers)

    new_url = None
    if client_base is not None:
        url: str = options.url
        if "://" not in url:
            new_url = route.base_url + "/" + url.lstrip("/")
        elif url.startswith(client_base):
            new_url = route.base_url + "/" + url[len(client_base) :]

    if set_timeout and route.timeout is not None and not is_given(options.timeout):
        options.timeout = route.timeout
    if headers is not None:
        options.headers = headers
    if new_url is not None:
        options.url = new_url


def _redirect(client: Any, options: Any) -> None:
    """For ``instrument()``: redirect and tag ``options`` if ``client`` targets a redirected URL."""
    try:
        active = _instrument.current
        if active is None:
            return
        state = client.__dict__
        if MONITOR_ATTR in state:
            return  # monitor()'s own instance hook tags it
        base = client.base_url
        cached = state.get(_DECISION_ATTR)
        if cached is not None and cached[0] is base and cached[1] is active:
            client_base = cached[2]
        else:
            # Decided per client and cached until its base URL or the instrumentation changes.
            client_base = str(base)
            if client_base not in active.targets or not redirectable(client):
                if client_base not in active.targets:
                    from ._notices import left_alone

                    left_alone(client_base)
                client_base = None
            state[_DECISION_ATTR] = (base, active, client_base)
        if client_base is not None:
            call = _fallback.current.get()
            if call is None or _fallback.to_proxy(call):
                if call is not None:
                    _fallback.save_original(call, options)
                _tag(options, active.route, active.authorization, client_base, custom_default_headers(client), True)
            else:  # fail-open: this attempt goes where the client points, as the client made it
                _fallback.restore_original(call, options, active.route.base_url + "/")
    except Exception:
        from ._log import log_once

        call = _fallback.current.get()
        if call is not None:
            call.at_proxy = False  # it goes where the client points: counted as sent direct
        log_once("redirect", "prysmai failed to redirect a request; it proceeds unobserved", exc_info=True)


def instrumented_policy(client: Any) -> _fallback.Policy | None:
    """The fail-open policy for a call of ``client`` under ``instrument()`` (None: not ours)."""
    active = _instrument.current
    if active is None or MONITOR_ATTR in client.__dict__:
        return None  # monitor()'s clients have their own
    return active.policy


def class_wrapper(is_async: bool) -> Callable[[Patch], WrapperFunction]:
    """The wrapper factory ``instrument()`` gives the patch registry for ``_prepare_options``."""

    def make(patch: Patch) -> WrapperFunction:
        if is_async:

            async def async_wrapper(
                wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                result = await wrapped(*args, **kwargs)
                if patch.active:
                    _scores.forget()
                    _redirect(instance, _options_of(result, args, kwargs))
                return result

            return async_wrapper

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            result = wrapped(*args, **kwargs)
            if patch.active:
                _scores.forget()
                _redirect(instance, _options_of(result, args, kwargs))
            return result

        return wrapper

    return make


def response_wrapper(patch: Patch) -> WrapperFunction:
    """The wrapper ``instrument()`` gives the patch registry for ``_process_response`` (sync on
    sync clients, a coroutine function on async ones: the wrapper only looks at the response and
    returns what the original returns)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if patch.active and MONITOR_ATTR not in instance.__dict__:
            _scores.remember(kwargs.get("response"))
        return wrapped(*args, **kwargs)

    return wrapper


def _remember_response(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    _scores.remember(kwargs.get("response"))
    return wrapped(*args, **kwargs)


def _tag_monitored(
    client: Any, route: Route, authorization: str, expected_base: object, proxy_base: str, options: Any
) -> None:
    try:
        call = _fallback.current.get()
        if call is not None and not _fallback.to_proxy(call):
            direct = call.policy.direct
            if direct is not None:  # fail-open: the source client's URL and key
                _fallback.go_direct(options, direct, proxy_base)
            return
        # The URL is made absolute only while the client still has the base URL monitor() gave it.
        client_base = proxy_base if getattr(client, "_base_url", None) is expected_base else None
        # Authenticated with the Prysm key even if the client's default_headers or the call's
        # extra_headers carry an Authorization of the user's own.
        _tag(options, route, authorization, client_base, custom_default_headers(client))
    except Exception:
        from ._log import log_once

        log_once("tag", "prysmai failed to tag a request with prysm_context; it proceeds untagged", exc_info=True)


def attach(client: Any, route: Route, is_async: bool, policy: _fallback.Policy | None = None) -> None:
    """Make a client created by ``monitor()``/``PrysmClient`` tag each of its requests.

    Instance attributes shadow the class's methods, so the class stays untouched and the client
    keeps its type. ``copy()``/``with_options()`` results pointing at the same proxy are attached too.
    ``policy``: fail-open settings (default: off, the proxy's failures surface as openai errors).
    """
    import wrapt

    cls = type(client)
    state = client.__dict__
    state[MONITOR_ATTR] = route
    if policy is None:
        from ._breaker import breaker_for

        policy = _fallback.Policy(breaker_for(route.base_url), fallback=False, direct=None)
    state[_fallback.POLICY_ATTR] = policy
    policy.breaker.monitored = True
    request = _fallback.request_method(is_async, lambda _: policy)(None, cls.request.__get__(client, cls))
    state["request"] = functools.partial(request, client)
    state["_calculate_retry_timeout"] = wrapt.FunctionWrapper(
        cls._calculate_retry_timeout.__get__(client, cls), _fallback.retry_delay_wrapper()
    )
    prepare = cls._prepare_options.__get__(client, cls)
    expected_base = getattr(client, "_base_url", None)
    proxy_base = route.base_url + "/"  # as openai stores it; built once, not per request
    authorization = "Bearer " + route.prysm_key

    if is_async:

        async def async_prepare(
            wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            result = await wrapped(*args, **kwargs)
            _scores.forget()
            _tag_monitored(client, route, authorization, expected_base, proxy_base, _options_of(result, args, kwargs))
            return result

        state["_prepare_options"] = wrapt.FunctionWrapper(prepare, async_prepare)
    else:

        def sync_prepare(
            wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            result = wrapped(*args, **kwargs)
            _scores.forget()
            _tag_monitored(client, route, authorization, expected_base, proxy_base, _options_of(result, args, kwargs))
            return result

        state["_prepare_options"] = wrapt.FunctionWrapper(prepare, sync_prepare)
    # The trace id of each answer (prysmai.last_trace_id()).
    state["_process_response"] = wrapt.FunctionWrapper(cls._process_response.__get__(client, cls), _remember_response)

    def copy_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        new = wrapped(*args, **kwargs)
        new.__dict__[SOURCE_ATTR] = client  # it shares client's http client (see SOURCE_ATTR)
        # A copy re-targeted elsewhere (another base_url) is no longer ours to tag.
        if str(new.base_url).rstrip("/") == route.base_url and MONITOR_ATTR not in new.__dict__:
            attach(new, route, is_async, policy)
        return new

    for name in ("copy", "with_options"):
        method = getattr(cls, name, None)
        if method is not None:
            state[name] = wrapt.FunctionWrapper(method.__get__(client, cls), copy_wrapper)
