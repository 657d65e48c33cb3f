"""One way to say a cost: the CLI's formatter (``api/costs.py``) and the dashboard's
(``web/static/dom.js``) give the same text for the same values, run side by side -- the JavaScript
in Debian's chromium, on the module the proxy serves.

Costs are in fixed notation (never ``8.00e-8``), never ``$0`` for a cost that is not zero, rounded
half up on the float's exact value; a trace without a cost is ``unpriced`` (usage, no price) or
``no usage``; a total names what it leaves out.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.api import costs

from .. import browser as b

pytestmark = pytest.mark.timeout(240)

#: (value, what it must read): by hand, so both implementations are held to it.
EXPECTED = [
    (0.0, "$0.00"),
    (8e-08, "$0.00000008"),
    (7e-07, "$0.0000007"),
    (3.3e-06, "$0.0000033"),
    (1.234567e-05, "$0.0000123"),
    (0.000123456, "$0.000123"),
    (0.05, "$0.05"),
    (0.5, "$0.50"),
    (0.123456, "$0.123"),
    (0.03125, "$0.0313"),  # a tie in binary: half up
    (0.9996, "$1.00"),
    (1.0, "$1.00"),
    (1.125, "$1.13"),
    (1234.5, "$1,234.50"),
    (1234567.891, "$1,234,567.89"),
    (1e-10, "$0.0000000001"),
    (2.5e-10, "$0.00000000025"),
    (9e-11, "<$0.0000000001"),
    (-0.5, "-$0.50"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory: Any) -> Iterator[Any]:
    """A browser page of a running proxy's dashboard, with its dom.js module loaded."""
    from prysmai._proxy.config.settings import ProxyConfig
    from prysmai._proxy.server.serve import BackgroundServer

    from ..conftest import KEY

    b.chromium_path()
    db = str(tmp_path_factory.mktemp("costs") / "t.db")
    with BackgroundServer(ProxyConfig(keys=[KEY], db_path=db, upstream="demo", port=0)) as server:
        launched = b.launch()
        chromium = next(launched)
        try:
            p = chromium.new_page()
            p.goto(server.url + "/login")
            p.evaluate("async () => { window.dom = await import('/static/dom.js'); }")
            yield p
        finally:
            launched.close()  # closes the browser


def js(page: Any, fn: str, values: list[Any]) -> list[str]:
    out: list[str] = page.evaluate(f"(values) => values.map((v) => window.dom.{fn}(...v))", values)
    return out


def test_the_expected_texts_in_python_and_in_the_browser(page: Any) -> None:
    values = [v for v, _ in EXPECTED]
    want = [text for _, text in EXPECTED]
    assert [costs.usd(v) for v in values] == want
    assert js(page, "fmtCost", [[v] for v in values]) == want


def test_a_trace_and_a_total_read_the_same_in_both(page: Any) -> None:
    traces = [
        {"cost_usd": 8e-08, "total_tokens": 5},
        {"cost_usd": None, "total_tokens": 13},  # usage, no price
        {"cost_usd": None, "total_tokens": None},  # failed: no usage
        {"cost_usd": 0.0, "total_tokens": 100},  # a free model: known, $0
    ]
    assert [costs.trace_cost(t) for t in traces] == ["$0.00000008", "unpriced", "no usage", "$0.00"]
    assert js(page, "traceCost", [[t] for t in traces]) == [costs.trace_cost(t) for t in traces]
    assert js(page, "costStatus", [[t] for t in traces]) == [costs.cost_status(t) for t in traces]
    totals = [(1.5, 0), (1.5, 3), (None, 2), (None, 0), (7e-07, 1234)]
    assert [costs.total_cost(*t) for t in totals] == [
        "$1.50",
        "$1.50 + 3 unpriced",
        "unknown (2 unpriced)",
        "no usage",
        "$0.0000007 + 1,234 unpriced",
    ]
    assert js(page, "costText", [list(t) for t in totals]) == [costs.total_cost(*t) for t in totals]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False),
            st.floats(min_value=1e-12, max_value=1.0),
            st.integers(min_value=0, max_value=10**6).map(lambda n: n / 1_000_000),  # whole micro-dollars
            st.integers(min_value=1, max_value=10**7).map(lambda n: n * 0.15 / 1_000_000),  # tokens at a price
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_cost_reads_the_same_in_both_and_is_never_zero_when_not_zero(page: Any, values: list[float]) -> None:
    python = [costs.usd(v) for v in values]
    assert js(page, "fmtCost", [[v] for v in values]) == python
    for v, text in zip(values, python):
        assert "e" not in text.lower() or text == "unknown"
        if v > 0:
            assert text != "$0.00" and any(c in "123456789" for c in text)
        if v >= costs.SMALLEST:
            shown = Decimal(text.lstrip("$").replace(",", ""))
            # Three significant digits below a dollar, cents above: within rounding of the value.
            tolerance = Decimal("0.005") if v >= 1 else Decimal(10) ** (Decimal(v).adjusted() - 2) / 2
            assert abs(shown - Decimal(v)) <= tolerance, (v, text)
