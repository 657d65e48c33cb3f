"""The circuit breaker in front of each Prysm proxy, and the process-wide request counters.

One breaker per proxy URL, shared by every client that routes there (``instrument()`` and
``monitor()`` clients alike): what one client learns about the proxy's health, all know.

* closed -- requests go to the proxy;
* open -- after a failure of the proxy hop: clients with fallback on send their requests straight
  to the provider for ``cooldown`` seconds (clients with fallback off keep trying the proxy);
* half-open -- the cool-down is over: the next request is the probe and tries the proxy while
  the others keep going direct; its answer closes the breaker, its failure opens it again.

A down proxy therefore costs one failed connect per cool-down, and traffic returns to it by
itself. Every method holds the lock for a few attribute updates and never waits inside it, so the
breaker is safe to share between threads and between asyncio tasks. The WARNING lines on the
``prysmai`` logger come when the breaker opens and when it closes, never per request.
"""

from __future__ import annotations

import logging
import os
import threading
import time

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"

#: How a request is to be sent, as decided by :meth:`Breaker.route`.
PROXY = 0
PROBE = 1
DIRECT = 2

DEFAULT_COOLDOWN = 30.0

_log = logging.getLogger("prysmai")


class Breaker:
    """The health of one proxy as this process sees it, and what its requests became."""

    def __init__(self, url: str, cooldown: float = DEFAULT_COOLDOWN) -> None:
        self.url = url
        self.cooldown = cooldown
        self.state = CLOSED
        self.routed = 0
        self.sent_direct = 0
        self.failed = 0
        self.cause: str | None = None  # why it last opened
        self.monitored = False  # used by a client of monitor()/PrysmClient (for status())
        self.fallback = False  # whether the latest client configured for it falls back (for status())
        self._opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def route(self, fallback: bool) -> int:
        """Where the next request goes: ``PROXY``, ``PROBE`` (try the proxy, and tell) or ``DIRECT``."""
        if self.state == CLOSED:  # the happy path reads one attribute and takes no lock
            return PROXY
        with self._lock:
            if self.state == CLOSED:
                return PROXY
            if not fallback:
                return PROBE  # it goes to the proxy anyway: let its answer tell whether the proxy is back
            if self._probing or time.monotonic() - self._opened_at < self.cooldown:
                return DIRECT
            self.state = HALF_OPEN
            self._probing = True
            return PROBE

    def answered(self, route: int, rejected: bool = False) -> None:
        """The proxy answered a request (whatever the status): count it; a probe closes the breaker.

        ``rejected``: the answer was the proxy's own 401 (bad Prysm key), counted as failed.
        """
        with self._lock:
            if rejected:
                self.failed += 1
            else:
                self.routed += 1
            if route != PROBE:
                return
            self._probing = False
            if self.state == CLOSED:
                return
            self.state = CLOSED
            self.cause = None
        _log.warning("prysmai: the Prysm proxy at %s answers again; requests go through it again.", self.url)

    def hop_failed(self, route: int, cause: str, fallback: bool) -> None:
        """The proxy hop failed (see ``_fallback.hop_failure``): open, or re-open after a probe."""
        with self._lock:
            was = self.state
            if route == PROBE:
                self._probing = False
            if was == OPEN and route != PROBE:
                return  # a request already on its way when the breaker opened: nothing new
            self.state = OPEN
            self._opened_at = time.monotonic()
            self.cause = cause
        if was == CLOSED:
            if fallback:
                then = (
                    f"requests are sent directly to the provider for {self.cooldown:g} s, then the proxy is "
                    "tried again; they are not captured meanwhile"
                )
            else:
                then = "requests fail until it is back (fallback is off)"
            _log.warning("prysmai: the Prysm proxy at %s failed (%s); %s.", self.url, cause, then)
        else:
            _log.info("prysmai: the Prysm proxy at %s still fails (%s).", self.url, cause)

    def released(self, route: int) -> None:
        """A probe ended with neither an answer nor a failure of the proxy (cancelled, say)."""
        if route == PROBE:
            with self._lock:
                self._probing = False
                if self.state == HALF_OPEN:
                    self.state = OPEN  # the cool-down is over: the next request probes again

    def count_routed(self) -> None:
        """The proxy answered a request that was not a probe (the common case of :meth:`answered`)."""
        with self._lock:
            self.routed += 1

    def count_direct(self) -> None:
        with self._lock:
            self.sent_direct += 1

    def count_failed(self) -> None:
        with self._lock:
            self.failed += 1

    def snapshot(self) -> tuple[str, int, int, int]:
        """``(state, routed, sent_direct, failed)``, read together."""
        with self._lock:
            return self.state, self.routed, self.sent_direct, self.failed

    def __repr__(self) -> str:
        return f"<Breaker {self.url} {self.state}>"


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(url: str, cooldown: float | None = None) -> Breaker:
    """The process's breaker for the proxy at ``url``; ``cooldown`` (if given) replaces its cool-down."""
    with _breakers_lock:
        breaker = _breakers.get(url)
        if breaker is None:
            breaker = _breakers[url] = Breaker(url, DEFAULT_COOLDOWN if cooldown is None else cooldown)
        elif cooldown is not None:
            breaker.cooldown = cooldown
        return breaker


def all_breakers() -> list[Breaker]:
    with _breakers_lock:
        return list(_breakers.values())


def reset() -> None:
    """Forget every breaker and counter (for tests)."""
    with _breakers_lock:
        _breakers.clear()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork() stays held forever in the child: start afresh.
    global _breakers_lock
    _breakers_lock = threading.Lock()
    for breaker in _breakers.values():
        breaker._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
