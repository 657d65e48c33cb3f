"""The dashboard's everyday comforts, in a real browser (Debian's chromium under Playwright): times
that say their zone, exact in UTC and in a forced local zone, with a remembered switch; a dark theme
that follows the system and a remembered switch, readable in both; the keyboard (``/``, ``j``/``k``,
Enter, Escape); an empty store's first-trace snippets, with the address the browser used (or
``--public-url``) and never a key; and a phone's screen: no page wider than the screen, charts that
fit, and tooltips on a tap."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from .. import browser as b
from ..api.test_download import AUTH, NOW, fill, make_rows
from ..conftest import KEY, FakeUpstream, Proxy, free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


def shown(unix: float, zone: tzinfo, ms: bool = False) -> str:
    """A time as the dashboard must show it: 24-hour, with its zone (``UTC``, or the local offset
    of that very date, ``UTC+05:45``), to the millisecond when asked."""
    at = datetime.fromtimestamp(round(unix * 1000) / 1000, timezone.utc).astimezone(zone)
    clock = at.strftime("%Y-%m-%d %H:%M:%S") + (f".{at.microsecond // 1000:03d}" if ms else "")
    if zone is timezone.utc:
        return f"{clock} UTC"
    offset = at.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{clock} UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def rows_at(times: list[float]) -> list[dict[str, Any]]:
    rows = make_rows(len(times))
    for i, (row, t) in enumerate(zip(rows, times)):
        row["created_at"] = t
        row["session_id"] = f"session-{i % 3}"
        row["user_id"] = f"user-{i % 4}"
    return rows


@pytest.fixture
def served(tmp_path: Any, fake: FakeUpstream, start_proxy: Any) -> Any:
    """A proxy over a few traces: one in northern summer, one in winter (a zone's offset differs),
    and some in the last hour; each time with milliseconds."""
    times = [NOW - 0.123 - i * 61.5 for i in range(12)]
    times += [1783000000.457, 1796000000.009]  # 2026-07-02 and 2026-12-01 (UTC)
    path = str(tmp_path / "traces.db")
    fill(path, rows_at(times))
    return start_proxy(fake.url, db_path=path)


#: Each page's script errors (``errors_of``): a test ends with none.
_ERRORS: dict[int, list[str]] = {}


def new_page(context: Any) -> Any:
    page = context.new_page()
    errors = _ERRORS.setdefault(id(page), [])
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page


def errors_of(page: Any) -> list[str]:
    return _ERRORS.get(id(page), [])


def first_cells(page: Any) -> list[str]:
    return [c.strip() for c in page.locator("#traces-table tbody tr td:first-child").all_text_contents()]


def test_times_say_their_zone_exactly_in_local_time_and_in_utc(chromium: Any, served: Any) -> None:
    base = served.server.url
    api = httpx.get(f"{served.base_url}/traces", params={"limit": "100"}, headers=AUTH).json()["data"]
    assert len(api) == 14
    for zone_name in ("Asia/Kathmandu", "America/New_York"):
        local = ZoneInfo(zone_name)
        context = chromium.new_context(viewport=b.DESKTOP, timezone_id=zone_name)
        page = new_page(context)
        b.login(page, base, KEY, "/traces?since=all")
        # Local time by default, with each date's own offset (New York: -04:00 in July, -05:00 in December).
        assert first_cells(page) == [shown(t["created_at"], local) for t in api]
        assert page.locator("#zone-switch").input_value() == "local"

        # The switch: UTC, on this page and (remembered) on the next ones.
        page.select_option("#zone-switch", "utc")
        b.wait_ready(page)
        assert first_cells(page) == [shown(t["created_at"], timezone.utc) for t in api]
        trace = api[-1]
        b.goto(page, f"{base}/traces/{trace['id']}")
        assert page.text_content("#trace-time") == shown(trace["created_at"], timezone.utc, ms=True)
        fresh = new_page(context)
        b.goto(fresh, f"{base}/traces/{trace['id']}")
        assert fresh.text_content("#trace-time") == shown(trace["created_at"], timezone.utc, ms=True)

        # A link may name its zone; it then becomes this browser's choice.
        b.goto(fresh, f"{base}/traces/{api[0]['id']}?tz=local")
        assert fresh.text_content("#trace-time") == shown(api[0]["created_at"], local, ms=True)
        b.goto(fresh, f"{base}/sessions")
        cells = fresh.locator("#sessions-table tbody tr td:last-child").all_text_contents()
        assert cells and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC[+-]\d\d:\d\d", c) for c in cells), cells

        # The custom range's fields are read in the zone shown: 09:30 there is 09:30 local.
        b.goto(fresh, f"{base}/traces")
        fresh.select_option("#f-range", "custom")
        fresh.fill("#f-since", "2026-07-02T09:30")
        assert fresh.text_content("#range-zone") == shown(NOW, local).split(" ")[-1]
        fresh.click("#filters button[type=submit]")
        b.wait_ready(fresh)
        since = datetime(2026, 7, 2, 9, 30, tzinfo=local).timestamp()
        assert f"since={int(since)}" in fresh.url
        assert not errors_of(page), errors_of(page)
        context.close()


def luminance(rgb: str) -> float:
    values = [int(v) / 255 for v in re.findall(r"\d+(?:\.\d+)?", rgb)[:3]]
    lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in values]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b_: str) -> float:
    la, lb = sorted((luminance(a), luminance(b_)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


COLOURS = """() => {
  const bg = (el) => {
    for (let n = el; n; n = n.parentElement) {
      const c = getComputedStyle(n).backgroundColor;
      if (c !== "rgba(0, 0, 0, 0)" && c !== "transparent") return c;
    }
    return "rgb(255, 255, 255)";
  };
  const get = (sel, prop, box) => {
    const n = document.querySelector(sel);
    return n && [getComputedStyle(n)[prop], bg(box ? n.closest(box) : n)];
  };
  const mark = (sel, prop) => get(sel, prop, "figure");
  return {
    body: get("body", "color"), muted: get("main .muted", "color"), link: get("main a", "color"),
    ok: get(".badge-ok", "color"), bad: get(".badge-bad", "color"), cancelled: get(".badge-cancelled", "color"),
    bar0: mark(".chart .series-0 rect", "fill"), bar1: mark(".chart .series-1 rect", "fill"),
    bar2: mark(".chart .series-2 rect", "fill"), line0: mark(".chart .series-0 polyline", "stroke"),
    line1: mark(".chart .series-1 polyline", "stroke"), line2: mark(".chart .series-2 polyline", "stroke"),
    axis: mark(".chart .axis", "fill"),
  };
}"""


def readable(page: Any, shown_: set[str]) -> dict[str, float]:
    """Every colour pair's contrast (``shown_`` must be among them); text and badges must reach
    4.5:1, chart marks 3:1 (WCAG)."""
    found = page.evaluate(COLOURS)
    ratios = {name: contrast(*pair) for name, pair in found.items() if pair}
    assert set(ratios) >= shown_, found
    for name, ratio in ratios.items():
        assert ratio >= (3.0 if name.startswith(("bar", "line")) else 4.5), (name, ratio, found[name])
    return ratios


OVERVIEW_COLOURS = {"body", "muted", "bar0", "bar1", "bar2", "line0", "line1", "line2", "axis"}
TRACES_COLOURS = {"body", "muted", "link", "ok", "bad", "cancelled"}


def page_background(page: Any) -> float:
    return luminance(page.evaluate("getComputedStyle(document.body).backgroundColor"))


def test_dark_mode_follows_the_system_with_a_remembered_switch_and_stays_readable(
    chromium: Any, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    rows = rows_at([NOW - i * 30 for i in range(40)])
    for i, row in enumerate(rows):
        row["status"] = ("success", "error", "cancelled")[i % 3]
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    base = start_proxy(fake.url, db_path=path).server.url
    for scheme in ("light", "dark"):
        context = chromium.new_context(viewport=b.DESKTOP, color_scheme=scheme)
        page = new_page(context)
        b.login(page, base, KEY, "/")
        assert (page_background(page) > 0.8) == (scheme == "light"), scheme
        readable(page, OVERVIEW_COLOURS)
        b.screenshot(page, f"comforts-overview-{scheme}")
        b.goto(page, f"{base}/traces")
        readable(page, TRACES_COLOURS)

        # The switch overrides the system, at once and on every later page.
        other = "dark" if scheme == "light" else "light"
        page.select_option("#theme-switch", other)
        assert (page_background(page) > 0.8) == (other == "light")
        page.keyboard.press("/")  # the switch let go of the keyboard
        assert page.evaluate("document.activeElement.id") == "f-q"
        b.goto(page, f"{base}/")
        assert page.locator("#theme-switch").input_value() == other
        assert (page_background(page) > 0.8) == (other == "light")
        readable(page, OVERVIEW_COLOURS)
        # The log-in page too (theme.js runs before the first paint, without the modules).
        login = new_page(context)
        login.goto(f"{base}/login")
        assert (page_background(login) > 0.8) == (other == "light")
        page.select_option("#theme-switch", "system")
        b.goto(page, f"{base}/")
        assert (page_background(page) > 0.8) == (scheme == "light")
        assert not errors_of(page), errors_of(page)
        context.close()


def test_the_keyboard_moves_opens_and_goes_back_but_never_while_typing(chromium: Any, served: Any) -> None:
    base = served.server.url
    api = httpx.get(f"{served.base_url}/traces", params={"since": "24h"}, headers=AUTH).json()["data"]
    context = chromium.new_context(viewport=b.DESKTOP)
    page = new_page(context)
    b.login(page, base, KEY, "/traces")
    selected = "#traces-table tbody tr.kb-selected"

    # "/" focuses the search field; letters typed there are text, not shortcuts.
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "f-q"
    page.keyboard.type("jk")
    assert page.input_value("#f-q") == "jk" and page.locator(selected).count() == 0
    page.keyboard.press("Escape")  # leaves the field; does not leave the page
    assert page.evaluate("document.activeElement.id") != "f-q" and page.url.startswith(base + "/traces")
    page.fill("#f-q", "")
    page.keyboard.press("Escape")

    ids = page.locator("#traces-table tbody tr td:first-child a").evaluate_all(
        "links => links.map(a => decodeURIComponent(new URL(a.href).pathname.split('/')[2]))"
    )
    assert ids == [t["id"] for t in api]
    for key, index in (("j", 0), ("j", 1), ("j", 2), ("k", 1)):
        page.keyboard.press(key)
        rows = page.locator("#traces-table tbody tr")
        assert [rows.nth(i).evaluate("tr => tr.classList.contains('kb-selected')") for i in range(4)] == [
            i == index for i in range(4)
        ], (key, index)
    page.keyboard.press("Enter")
    b.wait_ready(page)
    assert page.url.split("?")[0] == f"{base}/traces/{ids[1]}"
    # Along the list: j is the next trace, k the previous one.
    page.keyboard.press("j")
    b.wait_ready(page)
    assert page.url.split("?")[0] == f"{base}/traces/{ids[2]}"
    page.keyboard.press("k")
    b.wait_ready(page)
    assert page.url.split("?")[0] == f"{base}/traces/{ids[1]}"
    # Escape: back to the list it came from, with its filters.
    page.keyboard.press("Escape")
    b.wait_ready(page)
    assert page.url.split("?")[0] == f"{base}/traces" and page.locator("#traces-table").count() == 1

    # The users list: j, Enter opens the user's page, Escape goes back to the users.
    b.goto(page, f"{base}/users")
    users = page.locator("#users-table tbody tr td:first-child").all_text_contents()
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    b.wait_ready(page)
    assert page.url == f"{base}/users/{users[1]}"
    page.keyboard.press("/")  # the user's page has no search field: "/" does nothing there
    page.keyboard.press("Escape")
    b.wait_ready(page)
    assert page.url == f"{base}/users"
    # Sessions: "/" is the id search.
    b.goto(page, f"{base}/sessions")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.press("Escape")
    page.keyboard.press("k")  # from no selection, k selects the last row
    assert page.locator("#sessions-table tbody tr").last.evaluate("tr => tr.classList.contains('kb-selected')")
    assert not errors_of(page), errors_of(page)
    context.close()


class Relay:
    """A TCP relay on its own loopback port to ``port``: the address a browser reaches the proxy
    at is then not the proxy's own (as behind a port forward or a reverse proxy). With ``host``,
    it replaces the ``Host`` header of every request with it (a request's head arrives in one
    piece from a browser on loopback)."""

    def __init__(self, port: int, host: bytes | None = None) -> None:
        self.port = port
        self.host = host
        #: Host headers replaced so far.
        self.replaced = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            for a, b_, host in ((client, upstream, self.host), (upstream, client, None)):
                threading.Thread(target=self._pipe, args=(a, b_, host), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, host: bytes | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if host is not None:
                    data, n = re.subn(rb"(?im)^host:[^\r\n]*\r\n", b"Host: " + host + b"\r\n", data)
                    self.replaced += n
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def welcome_of(page: Any) -> dict[str, str]:
    return {
        "base": page.get_attribute("#welcome", "data-base-url") or "",
        "python": page.text_content("#snippet-python") or "",
        "curl": page.text_content("#snippet-curl") or "",
        "text": page.text_content("main") or "",
    }


def test_an_empty_store_shows_how_to_send_the_first_trace_with_this_proxys_address(
    chromium: Any, tmp_path: Any
) -> None:
    db = str(tmp_path / "empty.db")
    proxy = Proxy("--db", db, "--upstream", "demo", "--key", KEY).start()
    try:
        base = proxy.base.removesuffix("/api/v1")
        context = chromium.new_context(viewport=b.DESKTOP)
        page = new_page(context)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        b.login(page, base, KEY, "/")
        shown_ = welcome_of(page)
        assert shown_["base"] == proxy.base
        assert f'base_url="{proxy.base}"' in shown_["python"] and "prysmai.monitor(" in shown_["python"]
        assert shown_["curl"].startswith(f"curl {proxy.base}/chat/completions")
        assert "$PRYSM_API_KEY" in shown_["curl"]
        assert KEY not in page.content()  # never a key
        # Reached at another address (a port forward): the snippets say that one, the browser's.
        relay = Relay(int(base.rsplit(":", 1)[1]))
        try:
            forwarded = chromium.new_context(viewport=b.DESKTOP)
            other = new_page(forwarded)
            b.login(other, relay.url, KEY, "/")
            assert welcome_of(other)["base"] == relay.url + "/api/v1" != proxy.base
            assert f'base_url="{relay.url}/api/v1"' in welcome_of(other)["python"]
            assert not errors_of(other), errors_of(other)
            forwarded.close()
        finally:
            relay.close()
        # A hostile Host header cannot put anything into the page: the address is not taken from it.
        hostile = 'x.test"><img src=y onerror="window.__pwned=1">'
        relay = Relay(int(base.rsplit(":", 1)[1]), hostile.encode())
        try:
            forwarded = chromium.new_context(viewport=b.DESKTOP)
            other = new_page(forwarded)
            b.login(other, relay.url, KEY, "/")
            assert welcome_of(other)["base"] == relay.url + "/api/v1"
            assert "x.test" not in other.content()
            assert other.evaluate("window.__pwned") is None
            assert other.evaluate("document.querySelectorAll('main img, main script').length") == 0
            assert relay.replaced >= 4  # (the page, its files, /me: every request came with it)
            assert not errors_of(other), errors_of(other)
            forwarded.close()
        finally:
            relay.close()
        # The snippet is usable: the same request, sent, makes the first trace (and the help goes).
        r = httpx.post(
            f"{proxy.base}/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]},
        )
        assert r.status_code == 200
        b.goto(page, f"{base}/traces?since=all")
        page.wait_for_function("document.querySelectorAll('#traces-table tbody tr').length === 1", timeout=10000)
        assert page.locator("#welcome").count() == 0

        # Nor does a Host header sent to the proxy directly come back.
        hostile = 'x.test"><img src=y onerror="window.__pwned=1">'
        cookies = {c["name"]: c["value"] for c in context.cookies()}
        me = httpx.get(f"{base}/ui/api/me", cookies=cookies, headers={"Host": hostile})
        assert "x.test" not in me.text and me.json()["public_url"] is None
        page_html = httpx.get(f"{base}/", cookies=cookies, headers={"Host": hostile})
        assert page_html.status_code == 200 and "x.test" not in page_html.text
        assert all(u.startswith(base + "/") for u in requests), requests
        assert not errors_of(page), errors_of(page)
        context.close()
    finally:
        proxy.stop()


def test_the_configured_public_url_goes_into_the_snippets(chromium: Any, tmp_path: Any) -> None:
    public = "https://llm.example.com/prysm"
    proxy = Proxy(
        "--db", str(tmp_path / "e.db"), "--upstream", "demo", "--key", KEY, "--public-url", public + "/"
    ).start()
    try:
        base = proxy.base.removesuffix("/api/v1")
        context = chromium.new_context(viewport=b.PHONE, has_touch=True, is_mobile=True)
        page = new_page(context)
        b.login(page, base, KEY, "/traces")  # the empty traces list shows it too
        shown_ = welcome_of(page)
        assert shown_["base"] == public + "/api/v1"
        assert f'base_url="{public}/api/v1"' in shown_["python"]
        assert shown_["curl"].startswith(f"curl {public}/api/v1/chat/completions")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert not errors_of(page), errors_of(page)
        context.close()
    finally:
        proxy.stop()


def test_prysmai_ui_over_an_empty_store_says_where_traces_come_from(chromium: Any, tmp_path: Any) -> None:
    """``prysmai ui`` only reads a store: its address is no proxy's, so it offers no snippet."""
    db = str(tmp_path / "empty.db")
    fill(db, [])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "ui", "--db", db, "--port", str(port), "--key", KEY],
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/login")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prysmai ui did not start"
                time.sleep(0.05)
        context = chromium.new_context(viewport=b.DESKTOP)
        page = new_page(context)
        b.login(page, base, KEY, "/")
        assert "only reads its store" in (page.text_content("#welcome") or "")
        assert "prysmai proxy" in (page.text_content("#welcome") or "")
        assert page.locator("#snippet-python, #snippet-curl").count() == 0
        assert not errors_of(page), errors_of(page)
        context.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("ftp://llm.example.com", "must be an http:// or https:// URL with a host"),
        ("llm.example.com", "must be an http:// or https:// URL with a host"),
        ("https://llm.example.com:99999", "must be an http:// or https:// URL with a host"),
        ("https://user:secret@llm.example.com", "must not hold a user or password"),
        ("https://llm.example.com/?a=1", "must have no query or fragment"),
        ('https://llm.example.com/"><script>', "must not contain spaces, quotes, angle brackets"),
        ("https://llm.example.com/api/v1", "is the proxy's address without /api/v1"),
    ],
)
def test_a_bad_public_url_is_refused_at_start_up(tmp_path: Any, value: str, says: str) -> None:
    proxy = Proxy("--db", str(tmp_path / "e.db"), "--upstream", "demo", "--key", KEY, "--public-url", value)
    _, err = proxy.proc.communicate(timeout=60)
    assert proxy.proc.returncode == 2, err
    assert f"--public-url {says}" in err and "secret" not in err, err
    assert not (tmp_path / "e.db").exists()
    # The variable is checked the same way.
    proxy = Proxy("--db", str(tmp_path / "e.db"), "--upstream", "demo", "--key", KEY, PRYSM_PUBLIC_URL=value)
    _, err = proxy.proc.communicate(timeout=60)
    assert proxy.proc.returncode == 2 and f"--public-url {says}" in err, err


def point_of(page: Any, selector: str) -> dict[str, float]:
    """The middle of an element, scrolled into view (as a user scrolls to a chart to tap it)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    assert box is not None
    return {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}


def test_a_phone_shows_the_charts_whole_with_tooltips_on_a_tap(chromium: Any, served: Any) -> None:
    base = served.server.url
    overview = httpx.get(f"{served.base_url}/overview", params={"since": "24h"}, headers=AUTH).json()
    context = chromium.new_context(viewport=b.PHONE, has_touch=True, is_mobile=True, timezone_id="Asia/Kathmandu")
    page = new_page(context)
    b.login(page, base, KEY, "/")
    width = page.evaluate("innerWidth")
    assert width == 390
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    charts = page.locator("svg.chart")
    assert charts.count() == 3
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
        # Readable labels: at least 10 px tall on the screen, not overlapping one another.
        labels = (
            charts.nth(i)
            .locator("text.axis")
            .evaluate_all(
                "ts => ts.map(t => { const r = t.getBoundingClientRect(); return [r.left, r.right, r.top, r.height]; })"
            )
        )
        assert labels and all(h >= 10 for *_, h in labels), labels
        bottom = sorted((lft, rgt) for lft, rgt, top, _ in labels if top > box["y"] + box["height"] * 0.8)
        assert all(a[1] <= b_[0] for a, b_ in zip(bottom, bottom[1:])), bottom
    b.screenshot(page, "comforts-phone-overview")

    # A tap on a bar: its time (in the zone shown) and every series' value there.
    bars = page.locator("[data-chart=requests] .series-0 rect")
    bar = bars.nth(bars.count() - 1)
    t = float(bar.get_attribute("data-t") or "nan")
    page.touchscreen.tap(**point_of(page, f"[data-chart=requests] .series-0 rect >> nth={bars.count() - 1}"))
    tip = page.locator("[data-chart=requests] ~ .chart-tip, .chart-box:has([data-chart=requests]) .chart-tip")
    assert tip.is_visible()
    point = next(p for p in overview["timeseries"] if p["t"] == t)
    assert tip.locator(".tip-time").text_content() == shown(t, ZoneInfo("Asia/Kathmandu"))
    requests_row = tip.locator("[data-series=requests]")
    assert requests_row.get_attribute("data-value") == str(point["requests"])
    assert requests_row.text_content() == f"requests: {point['requests']:,}"
    tip_box = tip.bounding_box()
    assert tip_box is not None and tip_box["x"] >= 0 and tip_box["x"] + tip_box["width"] <= width
    b.screenshot(page, "comforts-phone-tooltip")
    # A tap elsewhere hides it.
    page.touchscreen.tap(5, 5)
    assert not tip.is_visible()

    # The other pages fit the screen too.
    for path in ("/traces", f"/traces/{served.traces()[0]['id']}", "/users", "/sessions"):
        b.goto(page, base + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
    assert not errors_of(page), errors_of(page)
    context.close()


def test_a_mouse_hover_shows_the_latency_of_a_bucket(chromium: Any, served: Any) -> None:
    base = served.server.url
    overview = httpx.get(f"{served.base_url}/overview", params={"since": "24h"}, headers=AUTH).json()
    context = chromium.new_context(viewport=b.DESKTOP, timezone_id="UTC")
    page = new_page(context)
    b.login(page, base, KEY, "/")
    dot = page.locator("[data-chart=latency] .series-0 circle").first
    t = float(dot.get_attribute("data-t") or "nan")
    page.mouse.move(**point_of(page, "[data-chart=latency] .series-0 circle >> nth=0"))
    tip = page.locator(".chart-box:has([data-chart=latency]) .chart-tip")
    assert tip.is_visible()
    point = next(p for p in overview["timeseries"] if p["t"] == t)
    assert tip.locator(".tip-time").text_content() == shown(t, ZoneInfo("UTC"))  # local time: UTC+00:00
    assert tip.locator("[data-series=latency_p50]").get_attribute("data-value") == str(point["latency_p50"])
    page.mouse.move(2, 2)
    assert not tip.is_visible()
    assert not errors_of(page), errors_of(page)
    context.close()


def test_nothing_hides_the_zone_in_a_chart_axis(chromium: Any, served: Any) -> None:
    """The chart's last axis label names the zone: the other labels are read against it."""
    base = served.server.url
    context = chromium.new_context(viewport=b.DESKTOP, timezone_id="Asia/Kathmandu")
    page = new_page(context)
    b.login(page, base, KEY, "/")
    labels = page.locator("[data-chart=requests] text.axis").all_text_contents()
    assert labels[-1].endswith(" UTC+05:45"), labels
    page.select_option("#zone-switch", "utc")
    b.wait_ready(page)
    labels = page.locator("[data-chart=requests] text.axis").all_text_contents()
    assert labels[-1].endswith(" UTC") and not any("+" in label for label in labels), labels
    assert not errors_of(page), errors_of(page)
    context.close()


AXIS_SIZES = """() => [...document.querySelectorAll('svg.chart text.axis')].map(t => {
  const r = t.getBoundingClientRect();
  // The size the text is drawn at on the screen: its font size in the drawing's units, times
  // the drawing's scale to CSS pixels.
  return [t.closest('svg').dataset.chart, parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a,
          r.left, r.right, r.top, t.closest('svg').getBoundingClientRect().left];
})"""


@pytest.mark.parametrize("width", [1280, 1920])
def test_the_desktop_overview_draws_its_chart_axes_at_a_readable_size(chromium: Any, served: Any, width: int) -> None:
    """On a desktop screen, light and dark, every axis label of the overview's charts is drawn at
    12 CSS pixels or more (its font size times the chart's scale), inside its chart, none over
    another."""
    base = served.server.url
    for scheme in ("light", "dark"):
        context = chromium.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
        page = new_page(context)
        b.login(page, base, KEY, "/")
        sizes = page.evaluate(AXIS_SIZES)
        assert {s[0] for s in sizes} >= {"requests", "latency", "cost"}, sizes
        assert all(size >= 12 - 0.01 for _, size, *_ in sizes), (scheme, width, sizes)
        assert all(left >= svg_left - 0.5 for _, _, left, _, _, svg_left in sizes), sizes  # not cut at the left
        for chart in {s[0] for s in sizes}:
            bottom = sorted(
                (lft, rgt)
                for name, _, lft, rgt, top, _ in sizes
                if name == chart and top == max(s[4] for s in sizes if s[0] == chart)
            )
            assert all(a[1] <= b_[0] for a, b_ in zip(bottom, bottom[1:])), bottom
        ratios = readable(page, OVERVIEW_COLOURS)
        assert ratios["axis"] >= 4.5
        if width == 1280:
            b.screenshot(page, f"comforts-overview-axes-{scheme}")
        assert not errors_of(page), errors_of(page)
        context.close()
