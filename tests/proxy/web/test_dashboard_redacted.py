"""Redaction markers in the dashboard: the writer's ``[redacted:TYPE]`` shows as a marker (its own
styled text, never the value it replaced), in the conversation view and in the raw JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .. import browser as b
from ..conftest import KEY, FakeUpstream

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


def test_markers_show_as_markers_and_the_values_never(chromium: Any, fake: FakeUpstream, start_proxy: Any) -> None:
    proxy = start_proxy(fake.url, redact=("secrets", "email"))  # type: ignore[attr-defined]
    prompt = "write to ada@example.com with key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    r = httpx.post(
        proxy.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
        headers={"Authorization": f"Bearer {KEY}", "x-fake-echo": "1"},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == prompt
    trace_id = r.headers["x-prysm-trace-id"]
    base = proxy.base_url.removesuffix("/api/v1")
    page = chromium.new_page(viewport=b.DESKTOP)
    try:
        b.login(page, base, KEY, f"/traces/{trace_id}")
        marks = page.locator("#request .redacted")
        assert marks.all_text_contents() == ["[redacted:email]", "[redacted:secret]"]
        assert page.locator("#response .redacted").count() == 2
        assert marks.first.get_attribute("title") == "redacted before it was stored"
        page.click("text=Raw request JSON")
        assert page.locator("#raw-request .redacted").count() == 2
        html = page.content()
        assert "ada@example.com" not in html and "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" not in html
        b.screenshot(page, "trace-redacted")
    finally:
        page.close()
