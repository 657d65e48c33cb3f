"""Cost of a call: a shipped price table (``pricing.json``, with its date and source) that a user
file can extend or override, and a provider's own prices (``prices =`` in the config), looked up
first. A model with no price costs *unknown* (``None``), never ``$0``; a price of 0 is *known
free* (a local model), and costs ``0.0``."""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_SHIPPED = os.path.join(os.path.dirname(__file__), "pricing.json")


@dataclass(frozen=True)
class Price:
    """USD per one million tokens."""

    input: float
    output: float | None = None
    cached_input: float | None = None


class PricingError(ValueError):
    """A pricing file is unreadable or malformed."""


def _parse(doc: Any, source: str) -> dict[str, Price]:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise PricingError(f'{source}: expected a JSON object with a "models" object')
    prices: dict[str, Price] = {}
    for model, entry in doc["models"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("input"), (int, float)):
            raise PricingError(f'{source}: model {model!r} needs a numeric "input" price')
        values = {}
        for name in ("output", "cached_input"):
            value = entry.get(name)
            if value is not None and not isinstance(value, (int, float)):
                raise PricingError(f"{source}: model {model!r}: {name} must be a number")
            values[name] = None if value is None else float(value)
        prices[model] = Price(float(entry["input"]), values["output"], values["cached_input"])
    return prices


class PriceTable:
    """Prices by model name; look-ups fall back from a dated snapshot to its base model."""

    def __init__(self, prices: dict[str, Price], as_of: str = "", source: str = "") -> None:
        self.prices = prices
        self.as_of = as_of
        self.source = source

    @classmethod
    def load(cls, override_path: str | None = None) -> PriceTable:
        """The shipped table, updated with ``override_path`` (same format) when given."""
        with open(_SHIPPED, encoding="utf-8") as fh:
            doc = json.load(fh)
        table = cls(_parse(doc, "pricing.json"), str(doc.get("as_of", "")), str(doc.get("source", "")))
        if override_path:
            try:
                with open(override_path, encoding="utf-8") as fh:
                    extra = json.load(fh)
            except (OSError, ValueError) as exc:
                raise PricingError(f"cannot read pricing file {override_path}: {exc}") from None
            table.prices.update(_parse(extra, override_path))
            table.source += f" + {override_path}"
        return table

    def lookup(self, model: str | None) -> Price | None:
        return lookup(self.prices, model)

    def cost(
        self,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None = None,
    ) -> float | None:
        """Cost in USD, or ``None`` when the model or the token counts are unknown."""
        return cost_of(self.lookup(model), prompt_tokens, completion_tokens, cached_tokens)


def lookup(prices: Mapping[str, Price], model: str | None) -> Price | None:
    """``model``'s price in ``prices``; a dated snapshot (``gpt-4o-2024-08-06``, ``gpt-4-0613``)
    falls back to its base model's."""
    if not model:
        return None
    price = prices.get(model)
    if price is None:
        base = _base_model(model)
        if base != model:
            price = prices.get(base)
    return price


@functools.lru_cache(maxsize=4096)
def _base_model(model: str) -> str:
    # Memoized: an unpriced model (a local one, say) is looked up on every trace; bounded, since
    # model names come from clients.
    return _SNAPSHOT.sub("", model)


def first_price(tables: Iterable[Mapping[str, Price] | None], models: Iterable[str | None]) -> Price | None:
    """The first price found, table by table and, within a table, model name by model name."""
    names = [m for m in models if m]
    for table in tables:
        if table:
            for name in names:
                price = lookup(table, name)
                if price is not None:
                    return price
    return None


def cost_of(
    price: Price | None, prompt_tokens: int | None, completion_tokens: int | None, cached_tokens: int | None = None
) -> float | None:
    """Cost in USD at ``price``, or ``None`` when the price or the token counts are unknown."""
    if price is None or prompt_tokens is None:
        return None
    cached = min(cached_tokens or 0, prompt_tokens)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    total = (prompt_tokens - cached) * price.input + cached * cached_rate
    if completion_tokens:
        if price.output is None:
            return None
        total += completion_tokens * price.output
    return total / 1_000_000
