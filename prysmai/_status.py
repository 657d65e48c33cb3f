"""``prysmai.status()``: what prysmai does with this process's requests, and what became of them."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Status:
    """A snapshot of prysmai's routing in this process (see :func:`status`).

    Attributes:
        mode: ``"instrument"``, ``"monitor"`` (only clients made by ``monitor()``/``PrysmClient``)
            or ``"off"``.
        proxy_url: the Prysm proxy ``instrument()`` routes to (else the first monitored client's), or None.
        fallback: whether requests go straight to the provider while that proxy is down.
        breaker: that proxy's circuit breaker: ``"closed"`` (requests go through the proxy),
            ``"open"`` (the proxy failed; requests go direct until the cool-down ends) or
            ``"half-open"`` (one request is probing the proxy).
        routed: requests the proxy answered (whatever the status), since start-up, all proxies.
        sent_direct: requests sent straight to the provider because a proxy was down (not captured).
        failed: requests that got no answer from a proxy and were not sent direct, or that a proxy
            rejected (HTTP 401, bad Prysm key).
        proxies: the same figures for each proxy URL used, as dicts.
    """

    __slots__ = ("breaker", "failed", "fallback", "mode", "proxies", "proxy_url", "routed", "sent_direct")

    mode: str
    proxy_url: str | None
    fallback: bool
    breaker: str | None
    routed: int
    sent_direct: int
    failed: int
    proxies: tuple[dict[str, Any], ...]

    def __init__(
        self,
        mode: str,
        proxy_url: str | None,
        fallback: bool,
        breaker: str | None,
        routed: int,
        sent_direct: int,
        failed: int,
        proxies: tuple[dict[str, Any], ...],
    ) -> None:
        for name, value in (
            ("mode", mode),
            ("proxy_url", proxy_url),
            ("fallback", fallback),
            ("breaker", breaker),
            ("routed", routed),
            ("sent_direct", sent_direct),
            ("failed", failed),
            ("proxies", proxies),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Status is immutable")

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-serialisable data (for a health endpoint, say)."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["proxies"] = [dict(p) for p in self.proxies]
        return data

    def __repr__(self) -> str:
        return (
            f"Status(mode={self.mode!r}, proxy_url={self.proxy_url!r}, fallback={self.fallback}, "
            f"breaker={self.breaker!r}, routed={self.routed}, sent_direct={self.sent_direct}, "
            f"failed={self.failed})"
        )


def status() -> Status:
    """What prysmai does with this process's OpenAI requests, and what became of them so far.

    Example::

        s = prysmai.status()
        if s.breaker == "open":
            print(f"{s.sent_direct} requests went straight to the provider (not captured)")
    """
    from . import _instrument
    from ._breaker import all_breakers

    breakers = all_breakers()
    rows: list[dict[str, Any]] = []
    totals = [0, 0, 0]
    for b in breakers:
        state, routed, direct, failed = b.snapshot()
        totals[0] += routed
        totals[1] += direct
        totals[2] += failed
        rows.append(
            {
                "url": b.url,
                "breaker": state,
                "cooldown": b.cooldown,
                "routed": routed,
                "sent_direct": direct,
                "failed": failed,
            }
        )
    active = _instrument.current
    mode: str = "off"
    url: str | None = None
    fallback = False
    if active is not None:
        mode, url, fallback = "instrument", active.route.base_url, active.policy.fallback
    else:
        monitored = [b for b in breakers if b.monitored]
        if monitored:
            mode, url, fallback = "monitor", monitored[0].url, monitored[0].fallback
    breaker_state: str | None = next((row["breaker"] for row in rows if row["url"] == url), "closed" if url else None)
    return Status(mode, url, fallback, breaker_state, totals[0], totals[1], totals[2], tuple(rows))
