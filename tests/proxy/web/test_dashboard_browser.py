"""The dashboard in a real browser, over the demo's traffic through a real proxy.

``prysmai demo --serve`` runs in a subprocess (plain, streamed, async, two users, a tool call and
an error); the test logs in through the form, checks the overview's numbers and charts against the
JSON API, filters and sorts the traces table, opens a trace, follows its session, visits every page
at 1280x800 and on a phone-sized screen, and saves screenshots (test-output/screenshots/; the
README's, in docs/screenshots/, are made by docs/screenshots/make.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from .. import browser as b
from ..conftest import KEY, ProxyHandle

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: Any) -> Iterator[tuple[str, str]]:
    """``prysmai demo --serve`` in a subprocess: (dashboard URL, key)."""
    b.chromium_path()  # skip/fail before starting anything
    db = str(tmp_path_factory.mktemp("demo") / "demo.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "demo", "--serve", "--keep-db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        out = ""
        deadline = time.monotonic() + 90
        while "Dashboard:" not in out:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, f"demo --serve ended early:\n{out}"
            out += line
        m = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)/\s+\(log in with the demo's key: (sk-prysm-\S+)\)", out)
        assert m, out
        assert "tool call" in out and "bad request" in out
        yield m.group(1), m.group(2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, rest
    assert "Captured 10 trace(s)" in rest  # the demo's 8 and the test's 2; Ctrl+C ends it as a plain demo ends


def api(page: Any, base: str, route: str, **params: str) -> Any:
    """The dashboard's JSON, fetched with the browser's own session cookie."""
    r = page.request.get(f"{base}/ui/api/{route}", params=params)
    assert r.ok, r.text()
    return r.json()


def floats(csv: str) -> list[float | None]:
    return [None if v == "" else float(v) for v in csv.split(",")] if csv else []


def close(a: list[float | None], b_: list[float | None]) -> bool:
    return len(a) == len(b_) and all(
        (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 1e-9 * max(1, abs(y)))
        for x, y in zip(a, b_)
    )


def test_demo_through_the_dashboard(chromium: Any, demo: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    base, key = demo
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(base + "/login")
    b.screenshot(page, "login")
    b.login(page, base, key)

    # -- overview: the numbers and the charts are the API's ----------------------------------------
    doc = api(page, base, "overview", since="24h")
    o = doc["overview"]
    assert o["requests"] == 8 and o["errors"] == 1  # the demo's traffic
    assert page.text_content("[data-metric=requests] .card-value") == str(o["requests"])
    assert "1 errors" in page.text_content("[data-metric=error_rate]")
    assert page.text_content("[data-metric=total_tokens] .card-value") == f"{o['total_tokens']:,}"
    series = doc["timeseries"]
    assert sum(p["requests"] for p in series) == 8
    for chart_id, key_ in (
        ("requests", "requests"),
        ("requests", "errors"),
        ("latency", "latency_p50"),
        ("latency", "latency_p95"),
        ("latency", "latency_p99"),
        ("cost", "cost_usd"),
    ):
        drawn = page.get_attribute(f"svg[data-chart={chart_id}] g[data-series={key_}]", "data-values")
        assert drawn is not None
        assert close(floats(drawn), [p[key_] for p in series]), (chart_id, key_, drawn, series)
    t_attr = page.get_attribute("svg[data-chart=requests]", "data-t")
    assert [int(float(t)) for t in t_attr.split(",")] == [int(p["t"]) for p in series]
    bars = page.locator("svg[data-chart=requests] g[data-series=requests] rect")
    assert sum(float(bars.nth(i).get_attribute("data-value")) for i in range(bars.count())) == 8
    models = page.locator("[data-breakdown=model] tbody tr")
    assert models.count() == len(doc["breakdowns"]["model"]) >= 1
    users = [r["key"] for r in doc["breakdowns"]["user_id"]]
    assert {"alice", "bob"} <= set(users)
    b.screenshot(page, "overview")

    # -- auto-refresh picks up new traffic, and stops when paused ---------------------------------
    b.goto(page, base + "/?refresh=2")
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one more"}]}
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{base}/api/v1/chat/completions", json=chat, headers=auth).status_code == 200
    expect(page.locator("[data-metric=requests] .card-value")).to_have_text("9", timeout=10000)
    page.click("#pause")
    assert page.get_attribute("#pause", "aria-pressed") == "true"
    assert httpx.post(f"{base}/api/v1/chat/completions", json=chat, headers=auth).status_code == 200
    page.wait_for_timeout(3000)
    assert page.text_content("[data-metric=requests] .card-value") == "9"
    page.click("#pause")  # resume: refreshes at once
    expect(page.locator("[data-metric=requests] .card-value")).to_have_text("10", timeout=10000)
    page.click("#pause")

    # -- traces: filters live in the URL, sorting, one user's traces ----------------------------
    page.select_option("#f-range", "1h")
    page.wait_for_url(re.compile(r".*since=1h.*"))
    b.wait_ready(page)
    b.goto(page, base + "/traces")
    rows = page.locator("#traces-table tbody tr")
    assert rows.count() == 10
    page.fill("#f-user", "alice")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*/traces\?user=alice$"))
    b.wait_ready(page)
    alice = api(page, base, "traces", user="alice", since="24h")["data"]
    assert rows.count() == len(alice) == 3
    assert all(t["user_id"] == "alice" for t in alice)
    page.click("a.sort[data-sort=latency]")
    page.wait_for_url(re.compile(r".*sort=latency.*"))
    b.wait_ready(page)
    by_latency = api(page, base, "traces", user="alice", since="24h", sort="latency", order="desc")["data"]
    assert [r["latency_ms"] for r in by_latency] == sorted((r["latency_ms"] for r in by_latency), reverse=True)
    shown = [page.get_attribute(f"#traces-table tbody tr:nth-child({i + 1}) td a", "href") for i in range(3)]
    # Each link carries the list's filters and order (the trace page's previous / next).
    assert [h.split("?")[0] for h in shown] == [f"/traces/{r['id']}" for r in by_latency]  # type: ignore[union-attr]
    assert all("list=1" in h and "sort=latency" in h for h in shown)  # type: ignore[operator]
    b.screenshot(page, "traces")
    # A shared URL reproduces the view.
    shared = page.url
    other = context.new_page()
    b.goto(other, shared)
    assert other.locator("#traces-table tbody tr").count() == 3 and other.input_value("#f-user") == "alice"
    other.close()

    # -- cursor pagination: pages of 3, 3, 3 and 1, no trace twice ---------------------------------
    b.goto(page, base + "/traces?limit=3")
    seen: list[str] = []
    for size in (3, 3, 3, 1):
        ids = page.eval_on_selector_all("#traces-table tbody tr td:first-child a", "as => as.map(a => a.pathname)")
        assert len(ids) == size, ids
        seen += ids
        if size == 1:
            assert page.locator("#next-page").count() == 0
        else:
            page.click("#next-page")
            page.wait_for_url(re.compile(r".*cursor=.*"))
            b.wait_ready(page)
    everything = api(page, base, "traces", since="24h")["data"]
    assert seen == [f"/traces/{t['id']}" for t in everything]

    # -- a custom time range: from the first trace's minute to the next minute --------------------
    first = min(t["created_at"] for t in everything)
    b.goto(page, base + "/traces")
    page.select_option("#f-range", "custom")
    start = time.strftime("%Y-%m-%dT%H:%M", time.localtime(first))
    end = time.strftime("%Y-%m-%dT%H:%M", time.localtime(first + 120))
    page.fill("#f-since", start)
    page.fill("#f-until", end)
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*since=\d+&until=\d+.*"))
    b.wait_ready(page)
    since_q = re.search(r"since=(\d+)", page.url).group(1)  # type: ignore[union-attr]
    until_q = re.search(r"until=(\d+)", page.url).group(1)  # type: ignore[union-attr]
    in_range = api(page, base, "traces", since=since_q, until=until_q)["data"]
    assert page.locator("#traces-table tbody tr").count() == len(in_range) >= 1
    assert page.input_value("#f-since") == start and page.input_value("#f-until") == end

    # -- text in bodies, a metadata key=value, a breakdown's link: each the API's answer -----------
    for query, expected in (({"q": "search_docs"}, 2), ({"meta": "feature=search"}, 3), ({"user": "bob"}, 1)):
        b.goto(page, base + "/traces?" + urlencode(query))
        assert page.locator("#traces-table tbody tr").count() == expected, query
        assert len(api(page, base, "traces", since="24h", **query)["data"]) == expected
        field = "f-" + next(iter(query))
        assert page.input_value("#" + field) == next(iter(query.values()))
    b.goto(page, base + "/")
    page.click("[data-breakdown=user_id] a:text-is('bob')")
    b.wait_ready(page)
    assert "user=bob" in page.url and page.locator("#traces-table tbody tr").count() == 1

    # -- the error, filtered by status --------------------------------------------------------
    b.goto(page, base + "/traces?status=error")
    assert page.locator("#traces-table tbody tr").count() == 1
    page.click("#traces-table tbody tr td a")
    b.wait_ready(page)
    assert "must contain at least one message" in page.text_content(".detail-side")

    # -- the tool call: conversation, timing, raw JSON, then its session -------------------------
    full = [api(page, base, f"traces/{t['id']}") for t in alice]
    tool = next(t for t in full if t["response_body"] and "tool_calls" in json.dumps(t["response_body"]))
    b.goto(page, base + "/traces?user=alice")
    page.click(f"a[href^='/traces/{tool['id']}?']")  # (the link carries the list's query)
    b.wait_ready(page)
    assert page.url.split("?")[0] == f"{base}/traces/{tool['id']}"
    roles = page.locator("#request .msg").evaluate_all("ms => ms.map(m => m.dataset.role)")
    assert roles == ["system", "user"]
    call = page.locator("#response .tool-call")
    assert "search_docs" in call.text_content()
    assert json.loads(call.locator(".args").text_content()) == {"query": "How do I see my traces?"}
    assert float(page.get_attribute("#timing", "data-latency")) == tool["latency_ms"]
    raw = page.text_content("#raw-request")
    assert json.loads(raw) == tool["request_body"]  # the read API gives a JSON body as its value
    # "Copy" puts the raw JSON on the clipboard.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.click("details:has(#raw-response) summary")
    page.click("button[data-copy=raw-response]")
    expect(page.locator("button[data-copy=raw-response]")).to_have_text("Copied")
    assert json.loads(page.evaluate("navigator.clipboard.readText()")) == tool["response_body"]
    assert tool["provider_request_id"] is None or tool["provider_request_id"] in page.text_content(".detail-side")
    assert "feature" in page.text_content(".meta") and "search" in page.text_content(".meta")
    b.screenshot(page, "trace")
    page.click(".detail-side a[href^='/sessions/']")
    b.wait_ready(page)
    assert page.url == f"{base}/sessions/session-a1"
    session = api(page, base, "sessions/session-a1")["traces"]
    turns = page.locator("#timeline > li")
    assert turns.count() == len(session) == 3
    assert [turns.nth(i).get_attribute("data-trace") for i in range(3)] == [t["id"] for t in session]
    assert [t["created_at"] for t in session] == sorted(t["created_at"] for t in session)
    # Each turn shows what it added: the tool's answer turn repeats three earlier messages.
    roles = [turns.nth(i).locator(".msg").evaluate_all("ms => ms.map(m => m.dataset.role)") for i in range(3)]
    assert roles == [["user", "assistant"], ["system", "user", "assistant"], ["tool", "assistant"]]
    assert "3 earlier message(s)" in turns.nth(2).text_content()
    b.screenshot(page, "session")

    # -- the streamed call's TTFT is drawn in its timing bar -------------------------------------
    streamed = next(t for t in api(page, base, "traces", since="24h")["data"] if t["stream"])
    b.goto(page, f"{base}/traces/{streamed['id']}")
    assert streamed["ttft_ms"] is not None and float(page.get_attribute("#timing", "data-ttft")) == streamed["ttft_ms"]
    assert "reassembled stream" in page.text_content("#response h2")

    # -- sessions and users --------------------------------------------------------------------
    b.goto(page, base + "/sessions")
    sessions = api(page, base, "sessions", since="24h")["data"]
    assert page.locator("#sessions-table tbody tr").count() == len(sessions) >= 2
    b.screenshot(page, "sessions")
    b.goto(page, base + "/users")
    assert page.locator("#users-table tbody tr").count() == len(api(page, base, "users", since="24h")["data"]) >= 2
    b.screenshot(page, "users")

    # -- a phone-sized screen: nothing wider than the screen ---------------------------------------
    phone = chromium.new_context(viewport=b.PHONE, storage_state=context.storage_state())
    small = phone.new_page()
    small.on("request", lambda r: requests.append(r.url))
    for path, name in (("/", "phone-overview"), (f"/traces/{tool['id']}", "phone-trace"), ("/traces", "phone-traces")):
        b.goto(small, base + path)
        width = small.evaluate("document.documentElement.scrollWidth")
        assert width <= b.PHONE["width"], (path, width)
        b.screenshot(small, name)
    phone.close()

    # -- log out: the cookie is gone, the pages ask for a login again ------------------------------
    page.click(".logout button")
    page.wait_for_url(re.compile(r".*/login\?out=1$"))
    page.goto(base + "/traces")
    assert "/login?next=" in page.url
    context.close()

    assert not dialogs
    assert all(u.startswith(base + "/") for u in requests), [u for u in requests if not u.startswith(base)]


def test_other_request_shapes_render_as_conversations(chromium: Any, fake: Any, start_proxy: Any) -> None:
    """Responses API (plain and streamed), embeddings, legacy completions, images and audio."""
    from ..conftest import KEY

    proxy = start_proxy(fake.url)
    auth = {"Authorization": f"Bearer {KEY}"}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo" + "A" * 500}}
    audio = {"type": "input_audio", "input_audio": {"data": "UklGR" + "A" * 500, "format": "wav"}}
    sent = [
        (
            "chat/completions",
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image, audio]}],
            },
        ),
        ("responses", {"model": "gpt-4o", "instructions": "Be brief.", "input": "Say hi"}),
        ("responses", {"model": "gpt-4o", "input": [{"role": "user", "content": "Stream hi"}], "stream": True}),
        ("embeddings", {"model": "text-embedding-3-small", "input": "embed me"}),
        ("completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon"}),
    ]
    for endpoint, body in sent:
        r = httpx.post(f"{proxy.base_url}/{endpoint}", json=body, headers=auth)
        assert r.status_code == 200, r.text
    traces = proxy.traces()
    base = proxy.server.url
    page = chromium.new_context(viewport=b.DESKTOP).new_page()
    b.login(page, base, KEY, "/traces?since=all")
    expected = [
        ("[image] data:image/png;base64,…", "[audio]", "what is this?", "Hello there!"),
        ("Be brief.", "(instructions)", "Say hi", "Hi you"),
        ("Stream hi", "Hi you", "reassembled stream"),
        ("embed me", "[1 embedding vector(s)]"),
        ("Once upon", "Hi"),
    ]
    for trace, texts in zip(traces, expected):
        b.goto(page, f"{base}/traces/{trace['id']}")
        text = page.inner_text("main")
        for t in texts:
            assert t in text, (trace["endpoint"], t)
        assert "A" * 100 not in text  # the image and audio data are not dumped into the conversation
    assert page.evaluate("document.querySelectorAll('img, audio, video').length") == 0
    page.context.close()


def test_a_malformed_session_address_shows_an_error_not_loading_for_ever(chromium: Any, proxy: ProxyHandle) -> None:
    page = chromium.new_page()
    b.login(page, proxy.server.url, KEY, "/sessions")
    for path in ("/sessions/%E0%A4%A", "/sessions/a%ZZ"):
        response = page.goto(proxy.server.url + path)
        assert response is not None and response.status == 200
        b.wait_ready(page)
        text = page.inner_text("#main")
        assert "Loading" not in text and "not valid" in text, text
    page.close()
