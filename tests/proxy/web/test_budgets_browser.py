"""The budgets page in headless Chromium over a real ``prysmai proxy`` with a config file of limits
(each answer of the loopback fake upstream costs exactly $1): each project's spend against its
budget, the days left, its last minute against its rate, the 429s its limits gave (a table and a
chart per project), a project without limits shown as such -- for projects whose names are
awkward for a page (``__proto__``, ``constructor``, ``-1``), and a project's log-in sees its own
project only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .. import browser as b
from ..config.test_projects import Proc, auth
from ..conftest import FakeUpstream, cli_env, priced_projects

pytestmark = pytest.mark.timeout(240)

PROTO = "sk-prysm-budget-proto-key-0123456789a"
CTOR = "sk-prysm-budget-ctor-key-0123456789ab"
MINUS = "sk-prysm-budget-minus-key-0123456789a"
ADMIN = "sk-prysm-budget-admin-key-0123456789a"


def config(fake: FakeUpstream) -> str:
    return priced_projects(
        fake,
        [
            ("__proto__", PROTO, "monthly_budget_usd = 2\n"),
            ("constructor", CTOR, "requests_per_minute = 1\n"),
            ("-1", MINUS, ""),
        ],
        admin=ADMIN,
    )


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from b.launch()


@pytest.fixture
def proc(fake: FakeUpstream, tmp_path: Any) -> Any:
    path = tmp_path / "prysm.toml"
    path.write_text(config(fake))
    started = Proc(str(path), str(tmp_path / "traces.db"), cli_env())
    with httpx.Client(base_url=started.base, timeout=30) as client:

        def send(key: str) -> int:
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            return client.post("/chat/completions", content=body, headers=auth(key)).status_code

        assert [send(PROTO) for _ in range(3)] == [200, 200, 429]  # $2 spent, then the budget's 429
        assert [send(CTOR) for _ in range(3)] == [200, 429, 429]  # one a minute: two rate 429s
        assert send(MINUS) == 200
    yield started
    started.stop()


def rows(page: Any) -> dict[str, dict[str, str]]:
    """Each row of the budgets table: its project (the row's attribute) -> field -> text."""
    found = page.eval_on_selector_all(
        "#budgets tbody tr",
        """trs => trs.map(tr => [tr.getAttribute('data-project'),
            Object.fromEntries([...tr.querySelectorAll('[data-field]')].map(
                f => [f.getAttribute('data-field'), f.innerText]))])""",
    )
    return dict(found)


def charts(page: Any) -> dict[str, dict[str, int]]:
    """Each refusal chart: its project -> series -> the sum of the values it drew."""
    found = page.eval_on_selector_all(
        "#refusal-charts figure",
        """figs => figs.map(f => [f.getAttribute('data-project'), Object.fromEntries(
            [...f.querySelectorAll('[data-series]')].map(g => [g.getAttribute('data-series'),
              g.getAttribute('data-values').split(',').filter(Boolean).map(Number).reduce((a, b) => a + b, 0)]))])""",
    )
    return dict(found)


def test_the_budgets_page_shows_each_project_against_its_limits(chromium: Any, proc: Any) -> None:
    base = proc.base.removesuffix("/api/v1")
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
    b.login(page, base, ADMIN, "/budgets")
    page.wait_for_selector("#budgets, #budgets-body .error")
    got = rows(page)
    assert sorted(got) == ["-1", "__proto__", "constructor"]
    proto, ctor, minus = got["__proto__"], got["constructor"], got["-1"]
    assert proto["project"] == "__proto__" and proto["spend"].strip() == "$2.00 of $2.00"
    assert proto["days_left"] == "exhausted" and proto["limits"] == "$2.00/month"
    assert proto["refusals"] == "0 rate · 1 budget"
    assert ctor["rate"] == "1 of 1/min" and ctor["refusals"] == "2 rate · 0 budget"
    assert ctor["spend"] == "$1.00" and ctor["days_left"] == "\u2013"  # (none)
    assert minus["limits"] == "no limits" and minus["spend"] == "$1.00" and minus["rate"] == "1"
    # The meter of a project with a budget is full; the chart per project with limits adds up.
    assert page.get_attribute("#budgets tr[data-project='__proto__'] meter", "value") == "1"
    assert charts(page) == {"__proto__": {"rate": 0, "budget": 1}, "constructor": {"rate": 2, "budget": 0}}
    assert page.evaluate("Object.prototype.spend") is None  # a project named __proto__ changed nothing
    assert page.get_attribute("nav a[data-nav='budgets']", "aria-current") == "page"
    b.screenshot(page, "budgets")
    assert not outside, outside
    context.close()


def test_a_project_log_in_sees_its_own_budget_only(chromium: Any, proc: Any) -> None:
    base = proc.base.removesuffix("/api/v1")
    context = chromium.new_context(viewport=b.PHONE)
    page = context.new_page()
    b.login(page, base, CTOR, "/budgets")
    page.wait_for_selector("#budgets")
    assert list(rows(page)) == ["constructor"]
    assert "__proto__" not in page.inner_text("main")
    # Another project's budget by the URL: the API's 403, said on the page.
    b.goto(page, base + "/budgets?project=__proto__")
    assert "reads project 'constructor' only" in page.inner_text("#budgets-body .error")
    context.close()


HOSTILE_CODE = '<img src=x onerror="document.body.dataset.pwned=1">quota'  # (sent in a header: ASCII)


def test_the_trace_page_says_whose_error_code_a_failure_holds(chromium: Any, proc: Any) -> None:
    """A limit's 429 shows the proxy's own code, said to be this proxy's limit (the provider not
    called); a provider's own error shows the code of its answer, said to be the provider's, as
    text; a success shows none."""
    with httpx.Client(base_url=proc.base, timeout=30) as client:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        theirs = client.post(
            "/chat/completions",
            content=body,
            headers={**auth(MINUS), "x-fake-status": "429", "x-fake-error-code": HOSTILE_CODE},
        )
        assert theirs.status_code == 429
        ok = client.post("/chat/completions", content=body, headers=auth(MINUS))
        assert ok.status_code == 200

        def refused(project: str) -> list[str]:
            found = client.get("/traces", params={"project": project, "status": "error"}, headers=auth(ADMIN))
            return [t["id"] for t in found.json()["data"]]

        budget, (rate, _) = refused("__proto__"), refused("constructor")
    assert len(budget) == 1
    base = proc.base.removesuffix("/api/v1")
    context = chromium.new_context(viewport=b.DESKTOP)
    page = context.new_page()
    b.login(page, base, ADMIN, "/traces/" + budget[0])

    def shown(trace_id: str) -> tuple[str | None, str | None]:
        b.goto(page, f"{base}/traces/{trace_id}")
        page.wait_for_selector("dl.facts")
        found = page.query_selector("#trace-error-code")
        if found is None:
            return None, None
        label = page.evaluate(
            "() => document.querySelector('#trace-error-code').closest('dd').previousSibling.innerText"
        )
        assert label == "error code"
        return found.get_attribute("data-source"), found.inner_text()

    source, text = shown(budget[0])
    assert source == "proxy" and text.startswith("project_budget_exceeded ")
    assert "monthly_budget_usd" in text and "provider was not called" in text
    source, text = shown(rate)
    assert source == "proxy" and text.startswith("project_rate_limit_exceeded ")
    assert "requests_per_minute" in text
    source, text = shown(theirs.headers["x-prysm-trace-id"])
    assert source == "provider" and text == HOSTILE_CODE + " from the provider's answer"
    assert page.query_selector("#trace-error-code img") is None
    assert page.evaluate("document.body.dataset.pwned") is None
    assert shown(ok.headers["x-prysm-trace-id"]) == (None, None)
    context.close()
