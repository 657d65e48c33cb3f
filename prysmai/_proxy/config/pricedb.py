"""Prices the shipped table does not know, from ``genai-prices`` (pydantic's price database: data
bundled with the package, no network), by provider: the same model name can cost differently on
OpenAI, Azure, Groq or OpenRouter.

Looked up where rows are built (the writer process, or the writer thread), after a provider's own
prices, the ``--pricing`` file and the shipped table, so a price the operator wrote down always
wins. ``genai_prices`` is imported on first use (~0.2 s, once; a proxy building rows on its
thread does it at start-up: ``server.freeze_startup_objects``).
Finding a model there takes ~0.1 ms, so each (provider, model) is
found once and kept (in a bounded cache: model names come from clients); a flat price is then
turned into a :class:`~.pricing.Price` and costed like any other, and only a tiered one (a
higher rate past some prompt length) goes back to the database for each trace.
"""

from __future__ import annotations

import functools
import logging
import threading
from decimal import Decimal

from .pricing import Price, cost_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("prysmai.proxy")

#: (provider models, model) pairs remembered; beyond it the least recently used are forgotten.
CACHE_SIZE = 2048
_import_lock = threading.Lock()
_module: Any = None  # genai_prices, once imported; False when it is not installed


def _genai() -> Any:
    global _module
    if _module is None:
        with _import_lock:
            if _module is None:
                try:
                    import genai_prices

                    _module = genai_prices
                except ImportError:  # an optional extra: without it, such models stay unpriced
                    _module = False
    return _module


def available() -> bool:
    """Whether ``genai-prices`` can be used here."""
    return bool(_genai())


@functools.lru_cache(maxsize=CACHE_SIZE)
def _find(provider_id: str | None, api_url: str | None, model: str) -> tuple[Price | None, bool]:
    """(flat price, False), (None, True) for a tiered price, or (None, False) if unknown."""
    genai = _genai()
    if not genai:
        return None, False
    try:
        found = genai.calc_price(
            genai.Usage(input_tokens=1, output_tokens=1),
            model_ref=model,
            provider_id=provider_id,
            provider_api_url=api_url,
        )
    except LookupError:
        return None, False
    except Exception:  # a bug or a surprise in the database: unpriced, never a lost trace
        log.debug("genai-prices failed on %r", model, exc_info=True)
        return None, False
    mp = found.model_price
    values = (mp.input_mtok, mp.output_mtok, mp.cache_read_mtok)
    if all(v is None or isinstance(v, Decimal) for v in values) and mp.input_mtok is not None:
        return Price(
            float(mp.input_mtok),
            None if mp.output_mtok is None else float(mp.output_mtok),
            None if mp.cache_read_mtok is None else float(mp.cache_read_mtok),
        ), False
    return None, True  # tiered: priced by the database, call by call


def cost(
    provider_id: str | None,
    api_url: str | None,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None = None,
) -> float | None:
    """Cost in USD of a call to ``model`` on the provider named by ``provider_id`` (genai-prices'
    id: ``openai``, ``azure``…) or found by ``api_url``; ``None`` if unknown."""
    if not model or prompt_tokens is None or (provider_id is None and api_url is None):
        return None
    flat, tiered = _find(provider_id, api_url, model)
    if flat is not None:
        return cost_of(flat, prompt_tokens, completion_tokens, cached_tokens)
    if not tiered:
        return None
    genai = _genai()
    try:
        usage = genai.Usage(
            input_tokens=prompt_tokens, output_tokens=completion_tokens or 0, cache_read_tokens=cached_tokens or None
        )
        found = genai.calc_price(usage, model_ref=model, provider_id=provider_id, provider_api_url=api_url)
        return float(found.total_price)
    except Exception:
        log.debug("genai-prices failed on %r", model, exc_info=True)
        return None
