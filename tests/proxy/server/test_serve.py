"""The proxy process at start-up (server/serve.py)."""

from __future__ import annotations

from prysmai._proxy.config.pricing import PriceTable

PRICES = PriceTable.load()


def test_the_proxy_process_freezes_its_startup_objects() -> None:
    import subprocess
    import sys

    code = (
        "import gc, sys; from prysmai._proxy.config import pricedb; from prysmai._proxy.server import serve;"
        "serve.freeze_startup_objects();"
        "loaded = 'genai_prices' in sys.modules; print(gc.get_freeze_count() > 1000, loaded or not pricedb.available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["True", "True"]
