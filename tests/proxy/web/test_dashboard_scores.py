"""Scores in the dashboard, in headless Chromium over a real proxy on loopback: a reviewer's thumbs
up/down with a comment on the trace page (recorded with the session's key id), the score column
and the score filters of the traces list, the averages on the overview, deleting a score -- and a
cross-origin request that tries to score with the reviewer's session is refused (the page of
another origin submits a form, as a CSRF attack does; and over plain HTTP, with the cookie)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from .. import browser as b
from ..conftest import KEY, ProxyHandle, ThreadedServer

pytestmark = pytest.mark.timeout(240)

AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
HOSTILE = "<img src=x onerror=\"window.__pwned='comment'\"> <script>window.__pwned='s'</script> \u202egnp.exe"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


def _traces(proxy: ProxyHandle, n: int) -> list[str]:
    for i in range(n):
        headers = {**AUTH, "X-Prysm-User-Id": f"user{i % 2}"}
        assert httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=headers).status_code == 200
    return [t["id"] for t in proxy.traces()]


def _scores(proxy: ProxyHandle, trace_id: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{proxy.base_url}/traces/{trace_id}", headers=AUTH).json()["scores"])


def test_a_reviewer_scores_filters_averages_and_deletes(chromium: Any, proxy: ProxyHandle) -> None:
    ids = _traces(proxy, 3)
    base = proxy.server.url
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    b.login(page, base, KEY, f"/traces/{ids[0]}")
    assert "No scores yet." in page.inner_text("#score-list")
    page.fill("#score-comment", HOSTILE)
    page.click("#thumbs-up")
    page.wait_for_selector("#score-list li[data-score='thumbs']")
    stored = _scores(proxy, ids[0])
    assert [(s["name"], s["value"], s["comment"], s["source"]) for s in stored] == [
        ("thumbs", True, HOSTILE, "dashboard")
    ]
    assert stored[0]["key_id"].startswith("key_")
    item = page.inner_text("#score-list li[data-score='thumbs']")
    assert "reviewer " + stored[0]["key_id"] in item and "true" in item
    # The comment is text: the markup shows literally, the bidi override as a visible mark.
    assert "<img src=x onerror=" in item and "\u27e8U+202E\u27e9gnp.exe" in item
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0
    # Thumbs down on another trace (through the page), a number through the API.
    b.goto(page, f"{base}/traces/{ids[1]}")
    page.click("#thumbs-down")
    page.wait_for_selector("#score-list li[data-score='thumbs']")
    r = httpx.post(f"{proxy.base_url}/traces/{ids[2]}/scores", json={"name": "quality", "value": 0.75}, headers=AUTH)
    assert r.status_code == 201
    # The list: a score column, and the filters by name and range.
    b.goto(page, f"{base}/traces?since=all")
    cells = page.eval_on_selector_all(
        "#traces-table tbody tr", "rows => rows.map(r => r.querySelector('.scores-cell').innerText)"
    )
    assert sorted(cells) == sorted(["thumbs: 👍 true", "thumbs: 👎 false", "quality: 0.75"])
    page.fill("#f-score", "thumbs")
    page.fill("#f-score_min", "0.5")
    page.click("#filters button[type=submit]")
    b.wait_ready(page)
    assert "score=thumbs" in page.url and "score_min=0.5" in page.url
    links = page.eval_on_selector_all("#traces-table tbody tr a[href^='/traces/']", "as => as.map(a => a.href)")
    # (a trace's link carries its list's query, for previous / next on the trace page)
    assert [link.rsplit("/", 1)[1].split("?")[0] for link in links] == [ids[0]]
    # The overview: the average of thumbs by model and by user.
    b.goto(page, f"{base}/?since=all")
    page.wait_for_selector("[data-averages='user'] table")
    by_user = page.eval_on_selector_all(
        "[data-averages='user'] tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.innerText))"
    )
    assert ["user0", "thumbs", "1", "1"] in by_user and ["user1", "thumbs", "0", "1"] in by_user
    by_model = page.eval_on_selector_all(
        "[data-averages='model'] tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.innerText))"
    )
    assert ["gpt-4o-mini", "thumbs", "0.5", "2"] in by_model
    b.screenshot(page, "scores-overview")
    # Deleting from the trace page.
    b.goto(page, f"{base}/traces/{ids[0]}")
    page.click("#score-list button[data-delete]")
    page.wait_for_selector("#score-list li[data-score='thumbs']", state="detached")
    assert _scores(proxy, ids[0]) == []
    b.screenshot(page, "scores-trace")
    context.close()


class Attacker:
    """A page of another origin that submits a form to the dashboard's score endpoint: a
    ``text/plain`` form whose body is the JSON of a score, the classic cross-site request."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                starting = message["type"] == "lifespan.startup"
                await send({"type": "lifespan.startup.complete" if starting else "lifespan.shutdown.complete"})
                if not starting:
                    return
        name = json.dumps('{"name": "thumbs", "value": false, "comment": "')[1:-1].replace('"', "&quot;")
        html = (
            f'<form id="f" method="POST" enctype="text/plain" action="{self.target}">'
            f'<input name="{name}" value="csrf&quot;}}"><button id="go">go</button></form>'
        ).encode()
        headers = [(b"content-type", b"text/html"), (b"content-length", str(len(html)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": html})


def test_a_cross_origin_form_cannot_score_with_the_reviewers_session(chromium: Any, proxy: ProxyHandle) -> None:
    (trace_id,) = _traces(proxy, 1)
    base = proxy.server.url
    target = f"{base}/ui/api/traces/{trace_id}/scores"
    attacker = ThreadedServer(Attacker(target)).start()
    try:
        context = chromium.new_context(viewport=b.DESKTOP)
        page = context.new_page()
        b.login(page, base, KEY, f"/traces/{trace_id}")  # the reviewer is logged in
        answers: list[tuple[str, int]] = []
        page.on("response", lambda r: answers.append((r.url, r.status)))
        page.goto(attacker.url + "/")
        page.click("#go")
        page.wait_for_load_state()
        assert (target, 403) in answers, answers
        assert "cross_origin" in page.content()
        context.close()
    finally:
        attacker.stop()
    assert _scores(proxy, trace_id) == []


def test_the_dashboards_writes_check_the_origin(proxy: ProxyHandle) -> None:
    (trace_id,) = _traces(proxy, 1)
    base = proxy.server.url
    with httpx.Client(base_url=base) as client:
        r = client.post("/ui/login", data={"key": KEY}, headers={"Origin": base}, follow_redirects=False)
        client.cookies.update(r.cookies)
        path = f"/ui/api/traces/{trace_id}/scores"
        body = {"name": "thumbs", "value": True}
        for headers in ({"Origin": "http://evil.example"}, {}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            refused = client.post(path, json=body, headers=headers)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_origin", headers
        made = client.post(path, json=body, headers={"Origin": base})
        assert made.status_code == 201 and made.json()["source"] == "dashboard"
        gone = client.delete(f"/ui/api/scores/{made.json()['id']}", headers={"Origin": "http://evil.example"})
        assert gone.status_code == 403
        assert client.delete(f"/ui/api/scores/{made.json()['id']}", headers={"Origin": base}).status_code == 200
        # Without a session, nothing (401), and a write the API does not have is a 405.
        assert httpx.post(base + path, json=body, headers={"Origin": base}).status_code == 401
        assert client.post("/ui/api/overview", json=body, headers={"Origin": base}).status_code == 405
    query = urlencode({"since": "all", "score": "thumbs"})
    assert httpx.get(f"{proxy.base_url}/traces?{query}", headers=AUTH).json()["data"] == []


def test_prysmai_ui_shows_scores_but_refuses_to_write_them(proxy: ProxyHandle) -> None:
    import signal
    import subprocess
    import sys
    import time

    from ..conftest import free_port

    (trace_id,) = _traces(proxy, 1)
    r = httpx.post(f"{proxy.base_url}/traces/{trace_id}/scores", json={"name": "thumbs", "value": True}, headers=AUTH)
    assert r.status_code == 201
    proxy.stop()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "ui", "--db", str(proxy.db_path), "--port", str(port), "--key", KEY],
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{base}/login")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prysmai ui did not start"
                time.sleep(0.05)
        with httpx.Client(base_url=base) as client:
            login = client.post("/ui/login", data={"key": KEY}, headers={"Origin": base}, follow_redirects=False)
            client.cookies.update(login.cookies)
            shown = client.get(f"/ui/api/traces/{trace_id}").json()["scores"]
            assert [(s["name"], s["value"]) for s in shown] == [("thumbs", True)]
            refused = client.post(
                f"/ui/api/traces/{trace_id}/scores", json={"name": "x", "value": 1}, headers={"Origin": base}
            )
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "read_only"
            assert client.delete(f"/ui/api/scores/{shown[0]['id']}", headers={"Origin": base}).status_code == 403
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


HOSTILE_USER = "<img src=x onerror=\"window.__pwned='user'\">u\u202e"
HOSTILE_SESSION = "s/<b>1</b>%"


def test_sessions_and_users_show_their_scores(chromium: Any, proxy: ProxyHandle) -> None:
    """The sessions and users lists, a user's page and a session's page show, per score name, the
    average and the count of the numbers and booleans given to their traces -- the read API's
    figures, as text, for ids that are hostile to a page."""
    from prysmai import _wire

    sent = [(HOSTILE_USER, HOSTILE_SESSION), (HOSTILE_USER, HOSTILE_SESSION), (HOSTILE_USER, "s-2"), ("bob", "s-2")]
    ids = []
    for user, session in sent:
        headers = {**AUTH, "X-Prysm-User-Id": _wire.encode_id(user), "X-Prysm-Session-Id": _wire.encode_id(session)}
        r = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 200
        ids.append(r.headers["x-prysm-trace-id"])
    given = [(0, "quality", 1), (1, "quality", 0.5), (2, "quality", 0), (0, "thumbs", True), (3, "thumbs", False)]
    given += [(1, "tone", "curt")]  # a category: not averaged
    for i, name, value in given:
        r = httpx.post(f"{proxy.base_url}/traces/{ids[i]}/scores", json={"name": name, "value": value}, headers=AUTH)
        assert r.status_code == 201

    def api(route: str, **params: str) -> Any:
        return httpx.get(f"{proxy.base_url}/{route}", params={"since": "all", **params}, headers=AUTH).json()

    users = {u["user_id"]: u["scores"] for u in api("users")["data"]}
    assert users[HOSTILE_USER] == [
        {"name": "quality", "average": 0.5, "scores": 3},
        {"name": "thumbs", "average": 1, "scores": 1},
    ]
    assert users["bob"] == [{"name": "thumbs", "average": 0, "scores": 1}]
    sessions = {s["session_id"]: s["scores"] for s in api("sessions")["data"]}
    assert sessions[HOSTILE_SESSION] == [
        {"name": "quality", "average": 0.75, "scores": 2},
        {"name": "thumbs", "average": 1, "scores": 1},
    ]
    assert sessions["s-2"] == [
        {"name": "quality", "average": 0, "scores": 1},
        {"name": "thumbs", "average": 0, "scores": 1},
    ]

    base = proxy.server.url
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    b.login(page, base, KEY, "/users?since=all")

    def cells(table: str) -> dict[str, str]:
        found = page.eval_on_selector_all(
            f"#{table} tbody tr",
            "rows => rows.map(r => [r.querySelector('td').innerText,"
            " [...r.querySelectorAll('.scores-cell .chip')].map(c => c.innerText).join(' | ')])",
        )
        return dict(found)

    assert cells("users-table") == {
        HOSTILE_USER.replace("\u202e", "\u27e8U+202E\u27e9"): "quality: 0.5 (3) | thumbs: 1 (1)",
        "bob": "thumbs: 0 (1)",
    }
    b.goto(page, f"{base}/sessions?since=all")
    assert cells("sessions-table") == {
        HOSTILE_SESSION: "quality: 0.75 (2) | thumbs: 1 (1)",
        "s-2": "quality: 0 (1) | thumbs: 0 (1)",
    }
    # A user's page: a table of their scores, each name a link to their traces with that score.
    b.goto(page, f"{base}/users/{quote(HOSTILE_USER, safe='')}?since=all")
    page.wait_for_selector("#user-scores")
    rows = page.eval_on_selector_all(
        "#user-scores tbody tr", "rows => rows.map(r => [...r.querySelectorAll('td')].map(c => c.innerText))"
    )
    assert rows == [["quality", "0.5", "3"], ["thumbs", "1", "1"]]
    b.goto(page, f"{base}/users/bob?since=all")
    page.wait_for_selector("#user-scores")
    assert page.eval_on_selector_all("#user-scores tbody tr", "rows => rows.length") == 1
    # A session's page: its scores in its totals, and each turn its own.
    b.goto(page, f"{base}/sessions/{quote(HOSTILE_SESSION, safe='')}")
    page.wait_for_selector("#session-scores")
    chips = "[...document.querySelectorAll('#session-scores .chip')].map(c => c.innerText)"
    assert page.evaluate(chips) == ["quality: 0.75 (2)", "thumbs: 1 (1)"]
    turns = page.eval_on_selector_all(
        "#timeline .turn", "ts => ts.map(t => [...t.querySelectorAll('.turn-scores .chip')].map(c => c.innerText))"
    )
    assert turns == [["quality: 1", "thumbs: 👍 true"], ["quality: 0.5", "tone: curt"]]
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('main img, main b, main script').length") == 0
    context.close()
