"""What the dashboard says is what happened, in a real browser over a real proxy's traffic: a
failure of a priced model is "no usage", never "unpriced"; a tiny cost is written out, never in
scientific notation; a cancelled request is its own status, count and colour; a session of more
traces than a page shows all its totals and loads the rest; a prefix filter typed as "ali*"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .. import browser as b
from ..conftest import KEY, FakeUpstream

pytestmark = pytest.mark.timeout(300)

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {KEY}"}
SESSION_TRACES = 520


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


def test_the_dashboard_says_what_happened(chromium: Any, fake: FakeUpstream, start_proxy: Any) -> None:
    from playwright.sync_api import expect

    b.chromium_path()
    proxy = start_proxy(fake.url)
    ids: dict[str, str] = {}
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=30) as client:

        def send(name: str, body: dict[str, Any], **headers: str) -> None:
            r = client.post("/chat/completions", json=body, headers=headers)
            ids[name] = r.headers["x-prysm-trace-id"]

        send("priced", CHAT, **{"X-Prysm-User-Id": "alice"})  # 10 + 3 tokens of gpt-4o-mini: $0.0000033
        send("failed", CHAT, **{"x-fake-status": "500", "X-Prysm-User-Id": "alfred"})  # priced model, no usage
        send("unpriced", {**CHAT, "model": "my-local-model"}, **{"X-Prysm-User-Id": "bob"})
        for _ in range(SESSION_TRACES):
            assert (
                client.post("/chat/completions", json=CHAT, headers={"X-Prysm-Session-Id": "long"}).status_code == 200
            )
    # A client that leaves mid-stream: cancelled.
    headers = {**AUTH, "x-fake-chunks": "200", "x-fake-gap-ms": "20"}
    with httpx.stream(
        "POST", f"{proxy.base_url}/chat/completions", json={**CHAT, "stream": True}, headers=headers, timeout=30
    ) as r:
        ids["cancelled"] = r.headers["x-prysm-trace-id"]
        for chunk in r.iter_raw():
            if b"tok2" in chunk:
                break
    assert fake.disconnected.wait(5)
    statuses = {t["id"]: t["status"] for t in proxy.traces()}
    assert statuses[ids["cancelled"]] == "cancelled" and statuses[ids["failed"]] == "error"

    base = proxy.server.url
    page = chromium.new_context(viewport=b.DESKTOP).new_page()
    b.login(page, base, KEY, "/traces?since=all&limit=10")

    # -- each trace's cost for what it is ------------------------------------------------------------
    for name, says, never in (
        ("priced", "$0.0000033", "unpriced"),
        ("failed", "no usage reported by the provider", "unpriced"),
        ("unpriced", "unpriced: no price for this model", "no usage"),
    ):
        b.goto(page, f"{base}/traces/{ids[name]}")
        side = page.inner_text(".detail-side")
        assert says in side and never not in side, (name, side)
        assert not re.search(r"\d[eE]-\d", side)
    b.goto(page, f"{base}/traces?since=all&user~=al")  # the URL's prefix form
    assert page.input_value("#f-user") == "al*"
    assert page.locator("#traces-table tbody tr").count() == 2  # alice and alfred, not bob
    # the cost column (time, model, endpoint, status, asked, answer, latency, TTFT, tokens, cost)
    costs = page.locator("#traces-table tbody tr td:nth-child(10)").all_inner_texts()
    assert sorted(costs) == ["$0.0000033", "no usage"], costs
    # Typing a prefix with a star.
    b.goto(page, f"{base}/traces?since=all")
    page.fill("#f-user", "BO*")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*user(~|%7E)=BO.*"))  # the form encodes the ~
    b.wait_ready(page)
    assert page.locator("#traces-table tbody tr").count() == 1
    assert page.locator("#traces-table tbody tr td:nth-child(10)").inner_text() == "unpriced"

    # -- cancelled: its own status, colour and count ---------------------------------------------------
    b.goto(page, f"{base}/traces?since=all&status=cancelled")
    badge = page.locator("#traces-table tbody tr .badge")
    assert badge.count() == 1 and "cancelled" in badge.inner_text()
    assert badge.get_attribute("class") == "badge badge-cancelled"
    b.goto(page, f"{base}/traces?since=all&status=error")
    assert page.locator("#traces-table tbody tr").count() == 1
    assert page.locator("#traces-table tbody tr .badge").get_attribute("class") == "badge badge-bad"
    b.goto(page, f"{base}/?since=all")
    overview = page.request.get(f"{base}/ui/api/overview").json()["overview"]
    assert (overview["errors"], overview["cancelled"], overview["unpriced"], overview["no_usage"]) == (1, 1, 1, 2)
    assert overview["error_rate"] == pytest.approx(1 / overview["requests"])
    card = page.inner_text("[data-metric=error_rate]")
    assert "1 errors · 1 cancelled" in card
    cost = page.inner_text("[data-metric=cost_usd]")
    assert "+ 1 unpriced" in cost and "1 request(s) of models without a price · 2 reported no usage" in cost
    assert not re.search(r"\d[eE]-\d", cost)
    drawn = page.get_attribute("svg[data-chart=requests] g[data-series=cancelled]", "data-values") or ""
    assert sum(float(v) for v in drawn.split(",") if v) == 1

    # -- a session of more traces than a page ----------------------------------------------------------
    b.goto(page, f"{base}/sessions/long")
    assert page.inner_text("#session-requests") == f"{SESSION_TRACES:,}"
    assert page.locator("#timeline > li").count() == 100
    expect(page.locator("#shown")).to_have_text(f"showing 100 of {SESSION_TRACES:,} traces")
    while page.locator("#load-more").is_visible():
        before = page.locator("#timeline > li").count()
        page.click("#load-more")
        expect(page.locator("#timeline > li")).to_have_count(min(before + 100, SESSION_TRACES))
    expect(page.locator("#shown")).to_have_text(f"showing {SESSION_TRACES:,} of {SESSION_TRACES:,} traces")
    turns = page.locator("#timeline > li").evaluate_all("ls => ls.map(l => l.dataset.trace)")
    assert len(set(turns)) == SESSION_TRACES
    assert page.inner_text("#session-cost").startswith("$0.00")  # 520 x $0.0000033
    page.context.close()
