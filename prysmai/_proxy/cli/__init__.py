"""The proxy's commands of ``prysmai``: ``proxy``, ``traces`` (and ``traces show``), ``stats``,
``demo``, ``ui``, ``keys`` and ``store``, one module each, with their shared helpers (:mod:`.common`) and the
terminal's tables (:mod:`.report`).

``prysmai._cli`` calls :func:`register` on every invocation, including ``prysmai run`` where the
proxy's extra may be absent: nothing imported at module level here needs more than the standard
library; each command imports what it needs when it runs.
"""

from __future__ import annotations

from . import demo, keys, proxy, reads, store, ui

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def register(subparsers: Any) -> None:
    """Add the proxy's commands to ``prysmai``."""
    proxy.add_parser(subparsers)
    reads.add_parsers(subparsers)
    demo.add_parser(subparsers)
    ui.add_parser(subparsers)
    keys.add_parser(subparsers)
    store.add_parser(subparsers)


__all__ = ["register"]
