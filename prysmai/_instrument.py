"""``instrument()``: redirect every OpenAI client that targets OpenAI's API, process-wide.

Imported at interpreter start-up under ``PRYSM_AUTO``: it imports neither openai nor wrapt until
openai itself is imported (see ``_import_hook``).
"""

from __future__ import annotations

import _thread
import os
import sys

from ._config import resolve_base_url_list, resolve_route

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import ModuleType

    from ._config import Route
    from ._fallback import Policy
    from ._patches import PatchRegistry


class Instrumentation:
    """What ``instrument()`` configured: read by the request hooks on every request."""

    __slots__ = ("authorization", "policy", "route", "targets")

    def __init__(self, route: Route, targets: frozenset[str], policy: Policy) -> None:
        self.route = route
        self.targets = targets
        self.authorization = "Bearer " + route.prysm_key
        self.policy = policy

    def __repr__(self) -> str:
        return f"Instrumentation(route={self.route!r}, targets={sorted(self.targets)!r})"


#: The live instrumentation, or None. Replaced whole, never mutated, so readers need no lock.
current: Instrumentation | None = None
_lock = _thread.RLock()
_registry: PatchRegistry | None = None


def instrument(
    prysm_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    *,
    upstream_api_key: str | None = None,
    include_base_urls: Iterable[str] = (),
    fallback: bool | None = None,
    fallback_cooldown: float | None = None,
) -> None:
    """Route every ``openai.OpenAI``/``AsyncOpenAI`` client that targets OpenAI's API via Prysm.

    Call it once at start-up, before or after ``import openai`` (it never imports openai itself).
    Clients created before and after the call are redirected at request time, whatever http
    client they use, as long as their base URL is OpenAI's default
    (``https://api.openai.com/v1``). Clients with another base URL (``base_url=`` or
    ``OPENAI_BASE_URL``), Azure and provider clients are left alone; list extra base URLs to
    redirect in ``include_base_urls``. Calling it again replaces the settings.

    Args:
        prysm_key: the ``sk-prysm-...`` key; defaults to ``PRYSM_API_KEY``.
        base_url: the proxy URL; defaults to ``PRYSM_BASE_URL``, then ``https://prysmai.io/api/v1``.
        timeout: seconds per request for redirected calls that set none; ``None`` keeps the client's.
        upstream_api_key: a provider key the proxy should use instead of its stored one.
        include_base_urls: more base URLs (say, an OpenAI-compatible gateway) to redirect too.
        fallback: when the proxy cannot be reached (or answers a 502/503/504 of its own), send the
            request straight to where the client pointed, with its own key, and keep doing so for
            ``fallback_cooldown`` seconds before trying the proxy again. Defaults to
            ``PRYSM_FALLBACK``, else on; ``False`` never sends a request uncaptured.
        fallback_cooldown: seconds between tries of a failed proxy; defaults to
            ``PRYSM_FALLBACK_COOLDOWN``, else 30.

    Raises:
        ValueError: a missing or malformed key or URL (nothing is patched then).
    """
    global current
    route = resolve_route(prysm_key, base_url, timeout, upstream_api_key)
    with _lock:
        # Imported under the lock the fork handlers hold: a child is never forked half-way through
        # these imports (a module lock would be held there by a thread the child does not have).
        from ._fallback import instrument_policy
        from ._notices import instrumented
        from ._openai_compat import OPENAI_DEFAULT_BASE_URL

        targets = frozenset({OPENAI_DEFAULT_BASE_URL}) | resolve_base_url_list(include_base_urls, "include_base_urls")
        policy = instrument_policy(route, fallback, fallback_cooldown)
        current = Instrumentation(route, targets, policy)
        instrumented(route, targets, policy)
        module = sys.modules.get("openai")
        if module is not None and hasattr(module, "AsyncOpenAI"):
            _patch(module)
        else:
            from . import _import_hook

            _import_hook.install("openai", _on_openai_imported)


def uninstrument() -> None:
    """Undo ``instrument()``: openai's original methods are back and no request is redirected.

    Clients made by ``monitor()`` or ``PrysmClient`` keep going through the proxy.
    """
    global current
    with _lock:
        current = None
        from . import _import_hook

        _import_hook.uninstall("openai")
        if _registry is not None:
            for patch in _registry.lost():
                from ._patches import log_lost

                log_lost(patch, "uninstrument() had nothing to undo there")
            left = _registry.undo_all()
            if left:
                from ._log import log_once

                log_once(
                    "uninstrument-left",
                    "uninstrument(): another library wrapped openai on top of prysmai; prysmai's wrappers "
                    f"stay in place but are switched off: {left!r}",
                )


def is_instrumented() -> bool:
    """Whether ``instrument()`` is in effect: called, not undone, and its hooks still on openai's classes.

    A cheap check (two class attributes): false when another library has removed prysmai's hook
    (restoring the method it saw before prysmai's), in which case calling ``instrument()`` again
    puts it back. True before openai is imported, once ``instrument()`` waits for it.
    """
    if current is None:
        return False
    registry = _registry
    if registry is None:
        return True
    lost = registry.lost()
    if lost:
        from ._log import log_once

        log_once(
            f"lost-{id(lost[0])}",
            f"prysmai's hook on {lost[0].owner.__qualname__}.{lost[0].name} was removed by another library: "
            "requests are not routed through Prysm; call prysmai.instrument() again to restore it",
        )
    return not lost


def _on_openai_imported(module: ModuleType) -> None:
    with _lock:
        if current is not None:
            _patch(module)


def _patch(module: ModuleType) -> None:
    global _registry
    from ._hooks import class_wrapper, response_wrapper
    from ._patches import PatchRegistry

    if _registry is None:
        _registry = PatchRegistry()
    _registry.wrap(module.OpenAI, "_prepare_options", class_wrapper(is_async=False))
    _registry.wrap(module.AsyncOpenAI, "_prepare_options", class_wrapper(is_async=True))
    _registry.wrap(module.OpenAI, "_process_response", response_wrapper)
    _registry.wrap(module.AsyncOpenAI, "_process_response", response_wrapper)
    from ._fallback import request_method, retry_delay_wrapper
    from ._hooks import instrumented_policy

    _registry.replace(module.OpenAI, "request", request_method(False, instrumented_policy))
    _registry.replace(module.AsyncOpenAI, "request", request_method(True, instrumented_policy))
    _registry.wrap(module.OpenAI, "_calculate_retry_timeout", retry_delay_wrapper)
    _registry.wrap(module.AsyncOpenAI, "_calculate_retry_timeout", retry_delay_wrapper)


def _before_fork() -> None:
    # Held across fork(), in the order instrument() takes them: a child never starts with a lock
    # held by a thread that does not exist there, nor with a half-applied instrument().
    _lock.acquire()
    if _registry is not None:
        _registry.acquire_for_fork()


def _after_fork(in_child: bool) -> None:
    global _lock
    if _registry is not None:
        _registry.release_after_fork(in_child)
    if in_child:
        _lock = _thread.RLock()
    else:
        _lock.release()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=lambda: _after_fork(in_child=False),
        after_in_child=lambda: _after_fork(in_child=True),
    )
