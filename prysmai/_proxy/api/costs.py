"""How a cost is said: one trace's, and a total's.

The terminal (``prysmai traces`` / ``stats``, the demo) says costs through these functions; the
dashboard's JavaScript says them the same way (``fmtCost``, ``traceCost`` and ``costText`` in
``web/static/dom.js``), and ``tests/proxy/web/test_costs_contract.py`` runs both on the same
values. The JSON keeps the numbers as numbers; only their text is made here.

A cost is written in fixed notation, never in scientific notation and never as ``$0`` when it is
not zero: three significant digits below a dollar (at least two decimals: ``$0.50``, ``$0.0123``,
``$0.00000008``), cents from a dollar up (``$1,234.50``), rounded half up on the exact value.

A trace without a cost is one of two things, never shown alike:

* ``unpriced`` -- the provider reported usage (``total_tokens`` is known), but no cost could be
  computed from it: the model has no price in the price table;
* ``no usage`` -- the provider reported no usage (a failed or cancelled request, a call such as
  ``GET models``): there is nothing to price, whatever the model.

Standard library only: the CLI imports it without the proxy's extra.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: A trace's cost status (the ``cost_status`` of a trace in the JSON).
PRICED, UNPRICED, NO_USAGE = "priced", "unpriced", "no_usage"
#: Below this a cost is shown as less than it (ten decimals are enough for any real price).
SMALLEST = 1e-10


def usd(cost: float) -> str:
    """``cost`` in dollars, in fixed notation (see the module docstring)."""
    if not math.isfinite(cost):
        return "unknown"
    if cost < 0:
        return "-" + usd(-cost)
    if cost == 0:
        return "$0.00"
    if cost < SMALLEST:
        return "<$0.0000000001"
    if cost >= 1:
        return "${:,.2f}".format(Decimal(cost).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    # Three significant digits: the exponent of the shortest form that reads back as this float
    # (what JavaScript's toExponential() gives), the rounding on the float's exact value (what
    # toFixed() does).
    exponent = Decimal(repr(cost)).adjusted()
    decimals = 2 - exponent
    text = format(Decimal(cost).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP), "f")
    while text.endswith("0") and len(text.split(".")[1]) > 2:
        text = text[:-1]
    return "$" + text


def cost_status(trace: Mapping[str, Any]) -> str:
    """Whether a trace's cost is known (``priced``), unknown for want of a price (``unpriced``)
    or there was no usage to price (``no_usage``)."""
    if trace.get("cost_usd") is not None:
        return PRICED
    return UNPRICED if trace.get("total_tokens") is not None else NO_USAGE


def trace_cost(trace: Mapping[str, Any]) -> str:
    """One trace's cost: dollars, ``unpriced`` or ``no usage``."""
    status = cost_status(trace)
    if status == PRICED:
        return usd(float(trace["cost_usd"]))
    return "unpriced" if status == UNPRICED else "no usage"


def total_cost(cost: float | None, unpriced: int) -> str:
    """A sum of costs: dollars, with ``+ N unpriced`` when requests of unpriced models are not in
    it (a sum over priced requests is never presented as the total); ``unknown (N unpriced)``
    with no priced request; ``no usage`` when nothing had usage to price."""
    if cost is None:
        return f"unknown ({unpriced:,} unpriced)" if unpriced else "no usage"
    return usd(cost) + (f" + {unpriced:,} unpriced" if unpriced else "")


__all__ = ["NO_USAGE", "PRICED", "UNPRICED", "cost_status", "total_cost", "trace_cost", "usd"]
