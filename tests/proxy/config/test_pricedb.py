"""Prices from genai-prices for models the shipped table lacks, by provider (pricedb.py), and
their place in the order: a provider's own prices, then the --pricing file and the shipped
table, then the database; unknown stays NULL."""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest

from prysmai._proxy.config import pricedb
from prysmai._proxy.config.pricing import Price, PriceTable
from prysmai._proxy.store.capture import Exchange, finalize

from ..conftest import KEY, FakeUpstream

if sys.version_info < (3, 11):  # genai-prices needs 3.11+; below it the proxy extra leaves it out
    pytest.skip("genai-prices needs Python 3.11+", allow_module_level=True)
import genai_prices


def reference(model: str, prompt: int, completion: int, cached: int = 0, **provider: Any) -> float:
    """The database's own answer, computed by its own entry point."""
    usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached or None)
    return float(genai_prices.calc_price(usage, model_ref=model, **provider).total_price)


@pytest.mark.parametrize(
    ("provider_id", "api_url", "model"),
    [
        ("openai", None, "gpt-5.1"),
        ("openai", None, "gpt-5.1-2025-11-13"),  # a dated snapshot
        ("azure", None, "gpt-4.1"),
        (None, "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile"),  # found by its URL
        ("anthropic", None, "claude-sonnet-4-5"),  # tiered: a higher rate past 200 k prompt tokens
    ],
)
@pytest.mark.parametrize(("prompt", "completion", "cached"), [(1200, 300, 0), (1200, 300, 1000), (300_000, 10, 5)])
def test_cost_matches_the_database(
    provider_id: str | None, api_url: str | None, model: str, prompt: int, completion: int, cached: int
) -> None:
    expected = reference(model, prompt, completion, cached, provider_id=provider_id, provider_api_url=api_url)
    got = pricedb.cost(provider_id, api_url, model, prompt, completion, cached)
    assert got == pytest.approx(expected, rel=1e-9)


def test_unknown_model_or_provider_stays_unknown() -> None:
    assert pricedb.cost("openai", None, "no-such-model-anywhere", 10, 10) is None
    assert pricedb.cost(None, "http://127.0.0.1:11434/v1", "llama3.1", 10, 10) is None  # a local server
    assert pricedb.cost("openai", None, "gpt-5.1", None, None) is None  # no token counts


def _exchange(model: str, price_ref: Any, provider_prices: Any = None) -> Exchange:
    ex = Exchange("0" * 32, 0.0, 0.0, "POST", "chat/completions")
    ex.model = model
    ex.http_status = 200
    ex.t_end = 0.1
    ex.response_body = b'{"model": "%s", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}' % model.encode()
    ex.response_content_type = "application/json"
    ex.price_ref = price_ref
    ex.provider_prices = provider_prices
    return ex


def test_order_provider_prices_then_table_then_database(tmp_path: Any) -> None:
    table = PriceTable.load(None)
    db = finalize(_exchange("gpt-5.1", ("openai", None)), table)["cost_usd"]
    assert db == pytest.approx(reference("gpt-5.1", 1000, 100, provider_id="openai"))
    # The shipped table knows gpt-4o: its price, not the database's, whatever the database says.
    shipped = table.lookup("gpt-4o")
    assert shipped is not None
    row = finalize(_exchange("gpt-4o", ("openai", None)), table)
    assert row["cost_usd"] == pytest.approx((1000 * shipped.input + 100 * (shipped.output or 0)) / 1e6)
    # A --pricing file beats the database; a provider's own price beats both (0: known free).
    override = tmp_path / "prices.json"
    override.write_text('{"models": {"gpt-5.1": {"input": 1, "output": 2}}}')
    assert finalize(_exchange("gpt-5.1", ("openai", None)), PriceTable.load(str(override)))[
        "cost_usd"
    ] == pytest.approx((1000 * 1 + 100 * 2) / 1e6)
    free = {"gpt-5.1": Price(0.0, 0.0)}
    assert finalize(_exchange("gpt-5.1", ("openai", None), free), table)["cost_usd"] == 0.0
    # Without a provider reference (nothing to ask the database about) it stays unknown.
    assert finalize(_exchange("gpt-5.1", None), table)["cost_usd"] is None


def test_without_the_database_such_models_stay_unpriced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricedb, "_module", False)  # as where genai-prices is not installed
    pricedb._find.cache_clear()
    try:
        assert pricedb.cost("openai", None, "gpt-5.1", 10, 10) is None
        row = finalize(_exchange("gpt-5.1", ("openai", None)), PriceTable.load(None))
        assert row["cost_usd"] is None
    finally:
        pricedb._find.cache_clear()


def test_the_cache_of_model_names_is_bounded() -> None:
    # Model names come from clients: a flood of made-up ones must not grow memory without end.
    for i in range(pricedb.CACHE_SIZE + 50):
        pricedb.cost("openai", None, f"made-up-{i}", 1, 1)
    assert pricedb._find.cache_info().currsize <= pricedb.CACHE_SIZE


def test_a_proxied_call_to_a_model_newer_than_the_table_is_priced(fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url)
    body = {"model": "gpt-5.1", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    (trace,) = proxy.traces()
    # The fake reports 10 prompt and 3 completion tokens.
    assert trace["cost_usd"] == pytest.approx(reference("gpt-5.1", 10, 3, provider_id="openai"))


def test_a_prefix_routed_model_is_priced_by_the_name_sent_upstream() -> None:
    # "ollama/llama3.1" went to the provider as "llama3.1", whose answer names no model.
    ex = _exchange("ollama/llama3.1", (None, "http://127.0.0.1:11434/v1"), {"llama3.1": Price(0.0, 0.0)})
    ex.response_body = b'{"usage": {"prompt_tokens": 1000, "completion_tokens": 100}}'
    assert finalize(ex, PriceTable.load(None))["cost_usd"] is None  # the name the client sent is unknown
    ex.sent_model = "llama3.1"
    assert finalize(ex, PriceTable.load(None))["cost_usd"] == 0.0
