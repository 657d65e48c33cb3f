"""What prysmai tells the application's log about where its traffic goes (never a key).

* DEBUG, once per ``instrument()``/``monitor()`` call: where requests will go;
* WARNING, once per base URL: an OpenAI client left alone by ``instrument()`` because
  ``OPENAI_BASE_URL`` points it elsewhere;
* WARNING at construction: a proxy URL with no path (the proxy serves its API under ``/api/v1``).

Failures of the proxy hop itself are logged by the circuit breaker (``_breaker``).
"""

from __future__ import annotations

import logging
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._config import Route
    from ._fallback import Policy

_log = logging.getLogger("prysmai")


def _fallback_text(policy: Policy) -> str:
    if not policy.fallback:
        return "fallback off: if the proxy is down, requests fail"
    direct = policy.direct
    where = direct.base_url if direct is not None and direct.base_url is not None else "where each client points"
    return f"fallback on: if the proxy is down, requests go to {where} for {policy.breaker.cooldown:g} s at a time"


def instrumented(route: Route, targets: Iterable[str], policy: Policy) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "prysmai: instrument(): requests of OpenAI clients that target %s go through the Prysm proxy at %s (%s).",
            ", ".join(sorted(targets)),
            route.base_url,
            _fallback_text(policy),
        )


def monitored(source_base: str, route: Route, policy: Policy) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "prysmai: monitor(): this client's requests, meant for %s, go through the Prysm proxy at %s (%s).",
            source_base,
            route.base_url,
            _fallback_text(policy),
        )


def left_alone(client_base: str) -> None:
    """``instrument()`` decided not to redirect a client with this base URL: say so if the reason
    is ``OPENAI_BASE_URL`` (a set-up where the user likely expects the client to be observed)."""
    env = os.environ.get("OPENAI_BASE_URL")
    if not env or env.rstrip("/") + "/" != client_base:
        return
    from ._log import log_once

    log_once(
        f"left-alone-{client_base}",
        f"prysmai: instrument() leaves OpenAI clients that target {client_base} (from OPENAI_BASE_URL) alone: "
        "their requests are not observed. To route them through the Prysm proxy too, pass "
        "include_base_urls=[that URL] to instrument(), or unset OPENAI_BASE_URL.",
    )


def check_path(url: str, source: str) -> None:
    """Warn about a proxy URL without a path: the proxy answers 404 outside ``/api/v1``."""
    from urllib.parse import urlsplit

    if urlsplit(url).path.strip("/"):
        return
    _log.warning(
        "prysmai: %s %r has no path, but the Prysm proxy serves its API under /api/v1: requests would get 404. "
        "Did you mean %r?",
        source,
        url,
        url.rstrip("/") + "/api/v1",
    )
