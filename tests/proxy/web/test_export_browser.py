"""The traces list's export links in a real browser: the file Chromium downloads holds every trace
of the page's filters and order (not its one page), the same bytes the read API exports; with
"with bodies", the bodies too. Over hostile captured content: the page stays on its origin and the
CSV's cells are neutralised."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .. import browser as b
from ..api.test_download import AUTH, fill, make_rows
from ..conftest import KEY, FakeUpstream

pytestmark = pytest.mark.timeout(240)

HOSTILE = ['=HYPERLINK("http://203.0.113.9/x","click")', "<img src=x onerror=alert(1)>", "@SUM(1)", "-1+2"]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


def test_the_export_links_download_every_match_of_the_pages_filters(
    chromium: Any, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    rows = make_rows(260)
    for i, row in enumerate(rows):
        row["user_id"] = HOSTILE[i % len(HOSTILE)]
        row["error"] = HOSTILE[(i + 1) % len(HOSTILE)]
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    base = proxy.server.url
    context = chromium.new_context(viewport=b.DESKTOP, accept_downloads=True)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    # A list of 50 rows a page, filtered and sorted: the export holds all of its matches.
    b.login(page, base, KEY, "/traces?since=all&model=o3&sort=cost&order=asc&limit=50")
    assert page.locator("#traces-table tbody tr").count() == 50
    with page.expect_download() as info:
        page.click("#export-csv")
    download = info.value
    assert download.suggested_filename.startswith("prysm-traces-") and download.suggested_filename.endswith(".csv")
    got = Path(download.path()).read_bytes()
    params = {"since": "all", "model": "o3", "sort": "cost", "order": "asc", "format": "csv"}
    expected = httpx.get(f"{proxy.base_url}/traces", params=params, headers=AUTH)
    assert got == expected.content
    records = list(csv.reader(io.StringIO(got.decode("utf-8"), newline="")))
    o3 = [r for r in rows if r["model"] == "o3"]
    assert len(records) == len(o3) + 1 > 51
    user = records[0].index("user_id")
    assert {rec[user] for rec in records[1:]} <= {"'" + h if h[0] in "=@-" else h for h in HOSTILE}
    assert page.url.startswith(base + "/traces?")  # the download did not navigate away

    # With the bodies, as JSON Lines.
    page.check("#export-bodies")
    with page.expect_download() as info:
        page.click("#export-jsonl")
    lines = Path(info.value.path()).read_text("utf-8").splitlines()
    by_id = {r["id"]: r for r in o3}
    assert len(lines) == len(o3)
    for line in lines:
        doc = json.loads(line)
        assert doc["response_body"] == by_id[doc["id"]]["response_body"] and "request_body" in doc
        assert doc["user_id"] == by_id[doc["id"]]["user_id"]
    assert page.evaluate("window.__pwned") is None
    assert all(u.startswith(base + "/") for u in requests), [u for u in requests if not u.startswith(base)]
    context.close()
