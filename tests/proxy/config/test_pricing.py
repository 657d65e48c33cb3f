"""The shipped price table, an override file, and a provider's own prices (config/pricing.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prysmai._proxy.config.pricing import Price, PriceTable, PricingError
from prysmai._proxy.store.capture import Exchange, finalize

PRICES = PriceTable.load()


# -- pricing -------------------------------------------------------------------------------------
def test_pricing_table_has_date_and_source() -> None:
    assert PRICES.as_of and PRICES.source.startswith("https://")
    assert PRICES.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert PRICES.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)  # snapshot
    assert PRICES.cost("gpt-4-0613", 1_000_000, 0) == pytest.approx(30.0)
    assert PRICES.cost("gpt-4o", 1_000_000, 0, cached_tokens=500_000) == pytest.approx(1.25 + 0.625)
    assert PRICES.cost("text-embedding-3-small", 1_000_000, None) == pytest.approx(0.02)


def test_unknown_model_or_tokens_cost_none_never_zero() -> None:
    assert PRICES.cost("mystery", 10, 10) is None
    assert PRICES.cost(None, 10, 10) is None
    assert PRICES.cost("gpt-4o", None, None) is None
    assert PRICES.cost("text-embedding-3-small", 10, 5) is None  # no output price known


def test_pricing_override_file(tmp_path: Any) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"models": {"my-model": {"input": 1, "output": 2}, "gpt-4o": {"input": 9, "output": 9}}})
    )
    table = PriceTable.load(str(path))
    assert table.cost("my-model", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("gpt-4o", 1_000_000, 0) == pytest.approx(9.0)
    assert table.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # the rest stays
    path.write_text('{"models": {"x": {"output": 1}}}')
    with pytest.raises(PricingError):
        PriceTable.load(str(path))
    with pytest.raises(PricingError):
        PriceTable.load(str(tmp_path / "missing.json"))


def _answered(model: str, answered_by: str | None, prices: dict[str, Price] | None) -> dict[str, Any]:
    """The row of a plain chat completion asking for ``model``, answered by ``answered_by``
    (1M prompt and 1M completion tokens), through a provider with ``prices``."""
    ex = Exchange("t3", 0.0, 0.0, "POST", "chat/completions")
    ex.model = model
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}}
    if answered_by is not None:
        body["model"] = answered_by
    ex.response_body = json.dumps(body).encode()
    ex.http_status = 200
    ex.project, ex.provider, ex.provider_prices = "web", "ollama", prices
    return finalize(ex, PRICES)


def test_a_providers_own_prices_come_first_and_zero_is_known_free() -> None:
    local = {"llama3.1": Price(0, 0), "gpt-4o": Price(1, 2), "mine": Price(3, 4)}
    free = _answered("ollama/llama3.1", "llama3.1", local)
    assert free["cost_usd"] == 0.0 and free["cost_usd"] is not None  # known free, not unknown
    assert (free["project"], free["provider"]) == ("web", "ollama")
    assert _answered("gpt-4o", "gpt-4o", local)["cost_usd"] == pytest.approx(3.0)  # not the table's price
    assert _answered("gpt-4o", "gpt-4o-2024-08-06", local)["cost_usd"] == pytest.approx(3.0)  # a snapshot
    # The model as the provider reported it first, then as the client sent it.
    assert _answered("mine", "gpt-4o", local)["cost_usd"] == pytest.approx(3.0)
    assert _answered("mine", "somebody-else", local)["cost_usd"] == pytest.approx(7.0)
    assert _answered("mine", None, local)["cost_usd"] == pytest.approx(7.0)
    # Neither the provider nor the table knows it: unknown, never $0.
    assert _answered("ollama/qwen", "qwen", local)["cost_usd"] is None
    assert _answered("ollama/qwen", "qwen", None)["cost_usd"] is None
    # What the provider does not price, the table does (the table's gpt-4o-mini: $0.15 + $0.60).
    assert _answered("gpt-4o-mini", "gpt-4o-mini", local)["cost_usd"] == pytest.approx(0.75)
    assert _answered("gpt-4o-mini", "gpt-4o-mini", {})["cost_usd"] == pytest.approx(0.75)
    assert _answered("gpt-4o-mini", "gpt-4o-mini", None)["cost_usd"] == pytest.approx(0.75)
