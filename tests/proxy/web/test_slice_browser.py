"""Slicing in the dashboard, in headless Chromium against a real proxy: the filter inputs'
suggestions come from the store, a click on a value (list, trace page, a split chart's legend)
adds it as a filter in the URL, and the overview's charts split by model, user or a metadata key
show the API's numbers. Hostile captured values (HTML, quotes, control characters) flow through
every one of these and stay text: no script runs, no element is injected, nothing leaves the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from prysmai import _wire

from .. import browser as b
from ..conftest import KEY, FakeUpstream, ProxyHandle

pytestmark = pytest.mark.timeout(240)

HOSTILE_MODEL = "<img src=x onerror=\"window.__pwned='model'\">\"q'\x07m"
HOSTILE_TEAM = "<script>window.__pwned='meta'</script>\u202e'&quot;\x01t"
HOSTILE_USER = "<b onmouseover=\"window.__pwned='user'\">u</b>"
OUTSIDE = "http://203.0.113.9"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


@pytest.fixture
def sliced(fake: FakeUpstream, start_proxy: Any) -> ProxyHandle:
    proxy: ProxyHandle = start_proxy(fake.url)  # type: ignore[attr-defined]
    sends = [
        ("gpt-4o-mini", "ann", {"team": "red"}),
        ("gpt-4o-mini", "ann", {"team": "red"}),
        ("gpt-4o-mini", "bob", {"team": "blue"}),
        ("gpt-4.1", "bob", {"team": HOSTILE_TEAM, "img": f"<img src={OUTSIDE}/x.png>"}),
        (HOSTILE_MODEL, HOSTILE_USER, {"team": HOSTILE_TEAM}),
    ]
    for model, user, meta in sends:
        headers = {
            "Authorization": f"Bearer {KEY}",
            "X-Prysm-User-Id": _wire.encode_id(user),
            "X-Prysm-Metadata": _wire.encode_metadata(meta),
        }
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers).status_code == 200
    return proxy


def api(page: Any, base: str, route: str, **params: str) -> Any:
    r = page.request.get(f"{base}/ui/api/{route}", params=params)
    assert r.ok, r.text()
    return r.json()


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def untouched(page: Any) -> None:
    """Nothing captured ran or was turned into an element."""
    page.wait_for_timeout(100)
    assert page.evaluate("window.__pwned") is None
    count = "document.querySelectorAll('script:not([src]), img, iframe, b, main style').length"
    assert page.evaluate(count) == 0


def listed_by_the_hostile_model(page: Any) -> None:
    """The filter was submitted: the URL and the list hold the one trace of the hostile model."""
    page.wait_for_url(re.compile(r".*model=.*"))
    b.wait_ready(page)
    assert query_of(page.url)["model"] == [HOSTILE_MODEL]
    assert page.locator("#traces-table tbody tr").count() == 1
    untouched(page)


def test_suggestions_click_to_filter_and_split_charts(chromium: Any, sliced: ProxyHandle) -> None:
    base = sliced.server.url
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    b.login(page, base, KEY, "/traces?since=1h")

    # -- suggestions: the store's models, as text, the hostile one marked ------------------------
    page.focus("#f-model")
    page.wait_for_selector("#suggest-model li.suggestion")
    shown = page.eval_on_selector_all("#suggest-model li.suggestion", "bs => bs.map(b => b.dataset.value)")
    expected = [v["value"] for v in api(page, base, "suggest", field="model", since="1h")["values"]]
    assert shown == expected == ["gpt-4o-mini", HOSTILE_MODEL, "gpt-4.1"]  # ties by value
    hostile = page.locator("#suggest-model li.suggestion").nth(1)
    assert hostile.inner_text().startswith(HOSTILE_MODEL.replace("\x07", "\u27e8U+0007\u27e9"))
    untouched(page)
    page.fill("#f-model", "GPT-4.")  # the list narrows to what is typed, any case
    expect_values(page, "#suggest-model", ["gpt-4.1"])
    page.fill("#f-model", "")
    page.keyboard.type("<")
    expect_values(page, "#suggest-model", [HOSTILE_MODEL])
    page.locator("#suggest-model li.suggestion").first.click()
    assert page.input_value("#f-model") == HOSTILE_MODEL
    page.click("#filters button[type=submit]")
    listed_by_the_hostile_model(page)

    # -- metadata: a key, then its values ---------------------------------------------------------
    b.goto(page, base + "/traces?since=1h")
    page.focus("#f-meta")
    page.wait_for_selector("#suggest-meta li.suggestion")
    keys = page.eval_on_selector_all("#suggest-meta li.suggestion", "bs => bs.map(b => b.dataset.value)")
    assert keys == ["team", "img"]
    page.click("#suggest-meta li.suggestion[data-value=team]")
    assert page.input_value("#f-meta") == "team="
    expect_values(page, "#suggest-meta", [HOSTILE_TEAM, "red", "blue"])
    untouched(page)
    page.locator("#suggest-meta li.suggestion").first.click()
    assert page.input_value("#f-meta") == "team=" + HOSTILE_TEAM
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*meta=.*"))
    b.wait_ready(page)
    assert query_of(page.url)["meta"] == ["team=" + HOSTILE_TEAM]
    assert page.locator("#traces-table tbody tr").count() == 2
    untouched(page)

    # -- click to filter in the list: the filters add up ------------------------------------------
    b.goto(page, base + "/traces?since=1h&status=success")
    page.click("#traces-table a.filter-link[data-filter=user]:text-is('bob')")
    page.wait_for_url(re.compile(r".*user=bob.*"))
    b.wait_ready(page)
    assert query_of(page.url)["status"] == ["success"]  # kept
    assert page.locator("#traces-table tbody tr").count() == 2
    page.click("#traces-table a.filter-link[data-filter=model]:text-is('gpt-4.1')")
    page.wait_for_url(re.compile(r".*model=gpt-4\.1.*"))
    b.wait_ready(page)
    assert query_of(page.url)["user"] == ["bob"] and page.locator("#traces-table tbody tr").count() == 1
    b.goto(page, base + "/traces?since=1h")
    page.locator("#traces-table a.filter-link[data-filter=model]").filter(has_text="onerror").click()
    page.wait_for_url(re.compile(r".*model=.*"))
    b.wait_ready(page)
    assert query_of(page.url)["model"] == [HOSTILE_MODEL]
    untouched(page)

    # -- and on the trace page: a metadata member ---------------------------------------------------
    page.click("#traces-table tbody tr td:first-child a")
    b.wait_ready(page)
    untouched(page)
    page.click(".meta a.filter-link[data-filter=meta]")
    page.wait_for_url(re.compile(r".*meta=.*"))
    b.wait_ready(page)
    got = query_of(page.url)
    assert got["meta"] == ["team=" + HOSTILE_TEAM] and got["model"] == [HOSTILE_MODEL]
    assert page.locator("#traces-table tbody tr").count() == 1

    # -- the overview split by model: the API's groups and numbers; a legend entry filters --------
    b.goto(page, base + "/?since=1h&split=model&refresh=600")  # (no refresh mid-test)
    page.wait_for_selector("[data-chart=split-requests]")
    doc = api(page, base, "series", since="1h", by="model", top="5")
    legend = page.locator("[data-chart=split-requests] + .legend .key")
    labels = [legend.nth(i).get_attribute("data-filter") for i in range(legend.count())]
    assert labels == ["model"] * 3
    texts = legend.evaluate_all("ks => ks.map(k => k.textContent)")
    assert texts == [g["key"].replace("\x07", "\u27e8U+0007\u27e9") for g in doc["groups"]]
    for i, g in enumerate(doc["groups"]):
        values = page.get_attribute(f"[data-chart=split-requests] [data-series=g{i}]", "data-values")
        assert values == ",".join(str(p["requests"]) for p in g["timeseries"])
    page.wait_for_selector("[data-chart=split-latency]")  # read second: the histograms
    for i, g in enumerate(doc["groups"]):
        values = page.get_attribute(f"[data-chart=split-latency] [data-series=g{i}]", "data-values")
        assert values == ",".join("" if p["latency_p50"] is None else str(p["latency_p50"]) for p in g["timeseries"])
    untouched(page)
    page.locator("[data-chart=split-requests] + .legend a.key").filter(has_text="gpt-4o-mini").click()
    page.wait_for_url(re.compile(r".*model=gpt-4o-mini.*"))
    b.wait_ready(page)
    assert query_of(page.url)["split"] == ["model"]
    page.wait_for_selector("[data-chart=split-requests]")
    assert page.text_content("[data-metric=requests] .card-value") == "3"

    # -- by a metadata key (and by user): hostile legends are text, "other" is not a link ----------
    b.goto(page, base + "/?since=1h&split=meta%3Ateam&refresh=600")
    page.wait_for_selector("[data-chart=split-cost]")
    assert page.input_value("#split-key") == "team"
    legend = page.locator("[data-chart=split-cost] + .legend .key")
    assert legend.evaluate_all("ks => ks.map(k => k.textContent)") == [
        HOSTILE_TEAM.replace("\u202e", "\u27e8U+202E\u27e9").replace("\x01", "\u27e8U+0001\u27e9"),
        "red",
        "blue",
    ]
    untouched(page)
    legend.first.click()
    page.wait_for_url(re.compile(r".*meta=.*"))
    b.wait_ready(page)
    assert query_of(page.url)["meta"] == ["team=" + HOSTILE_TEAM]
    assert page.text_content("[data-metric=requests] .card-value") == "2"
    b.goto(page, base + "/?since=1h&refresh=600")
    page.select_option("#split-by", "user")
    page.wait_for_url(re.compile(r".*split=user.*"))
    b.wait_ready(page)
    page.wait_for_selector("[data-chart=split-latency]")
    b.goto(page, base + "/?since=1h&split=user&refresh=600")
    page.wait_for_selector("[data-chart=split-latency]")
    keys = page.locator("[data-chart=split-latency] + .legend .key").evaluate_all("ks => ks.map(k => k.textContent)")
    assert sorted(keys) == sorted(["ann", "bob", HOSTILE_USER])
    assert page.inner_text("#split-body").startswith("Requests by user")  # (no stray text before the charts)
    untouched(page)
    page.locator("#split").scroll_into_view_if_needed()
    b.screenshot(page, "overview-split")

    context.close()
    assert not dialogs
    outside = [u for u in requests if not u.startswith(base + "/")]
    assert not outside, outside


def expect_values(page: Any, selector: str, values: list[str]) -> None:
    """Wait until the suggestion list ``selector`` offers exactly ``values``."""
    script = "([s, v]) => JSON.stringify([...document.querySelectorAll(s + ' li.suggestion')]"
    script += ".map(b => b.dataset.value)) === JSON.stringify(v)"
    page.wait_for_function(script, arg=[selector, values], timeout=10000)


def test_suggestions_work_from_the_keyboard_alone(chromium: Any, sliced: ProxyHandle) -> None:
    """The model field is an ARIA combobox over a listbox of the store's models: ArrowDown / ArrowUp
    move the highlighted option (aria-activedescendant, aria-selected; wrapping round), Enter picks
    it without submitting the filters, Escape closes the list and a second Escape leaves the field;
    metadata goes from a key to its values the same way. Hostile values stay text."""
    base = sliced.server.url
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    b.login(page, base, KEY, "/traces?since=1h")
    models = [v["value"] for v in api(page, base, "suggest", field="model", since="1h")["values"]]
    assert models == ["gpt-4o-mini", HOSTILE_MODEL, "gpt-4.1"]
    page.keyboard.press("/")  # the keyboard only, from here: "/" is the search field
    assert page.evaluate("document.activeElement.id") == "f-q"
    for _ in range(30):
        if page.evaluate("document.activeElement.id") == "f-model":
            break
        page.keyboard.press("Shift+Tab")  # (the model field is before the words field)
    field = page.locator("#f-model")
    assert field.get_attribute("role") == "combobox" and field.get_attribute("aria-controls") == "suggest-model"
    expect_values(page, "#suggest-model", models)
    assert page.get_attribute("#suggest-model", "role") == "listbox"
    assert field.get_attribute("aria-expanded") == "true" and field.get_attribute("aria-activedescendant") is None

    def active() -> Any:
        """The highlighted option's value, checked against the ARIA state."""
        return page.evaluate(
            """() => {
              const input = document.getElementById('f-model');
              const id = input.getAttribute('aria-activedescendant');
              const selected = [...document.querySelectorAll('#suggest-model [role=option][aria-selected=true]')];
              if (!id) return selected.length ? 'stray selection' : null;
              const option = document.getElementById(id);
              const one = selected.length === 1 && selected[0] === option;
              if (!one || option.getAttribute('role') !== 'option') return 'bad state';
              return option.dataset.value;
            }"""
        )

    page.keyboard.press("ArrowDown")
    assert active() == models[0]
    page.keyboard.press("ArrowDown")
    assert active() == HOSTILE_MODEL
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")  # round to the first
    assert active() == models[0]
    page.keyboard.press("ArrowUp")  # and back round to the last
    assert active() == models[2]
    page.keyboard.press("ArrowUp")
    assert active() == HOSTILE_MODEL
    untouched(page)
    page.keyboard.press("Enter")  # picks it; the filters are not submitted
    assert page.input_value("#f-model") == HOSTILE_MODEL
    assert "model=" not in page.url
    assert page.is_hidden("#suggest-model") and field.get_attribute("aria-expanded") == "false"
    assert field.get_attribute("aria-activedescendant") is None
    assert page.evaluate("document.activeElement.id") == "f-model"
    page.keyboard.press("Enter")  # the list closed: now Enter submits
    listed_by_the_hostile_model(page)

    # Escape closes the list, and only the list; a second Escape leaves the field.
    b.goto(page, base + "/traces?since=1h")
    page.focus("#f-model")
    expect_values(page, "#suggest-model", models)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Escape")
    assert page.is_hidden("#suggest-model") and page.evaluate("document.activeElement.id") == "f-model"
    assert page.input_value("#f-model") == "" and page.url.endswith("/traces?since=1h")
    page.keyboard.press("ArrowDown")  # opens it again, on the first
    assert page.is_visible("#suggest-model") and active() == models[0]
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement === document.body")
    assert page.url.endswith("/traces?since=1h")  # (not "back up" to another page)

    # Metadata: a key, then its values, by the keyboard.
    page.focus("#f-meta")
    expect_values(page, "#suggest-meta", ["team", "img"])
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    assert page.input_value("#f-meta") == "team="
    expect_values(page, "#suggest-meta", [HOSTILE_TEAM, "red", "blue"])
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    assert page.input_value("#f-meta") == "team=" + HOSTILE_TEAM
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*meta=.*"))
    b.wait_ready(page)
    assert query_of(page.url)["meta"] == ["team=" + HOSTILE_TEAM]
    untouched(page)
    assert not dialogs
    context.close()
