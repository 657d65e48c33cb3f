"""Issue 22, budgets that stop on time: a real ``prysmai proxy`` (its writer in a child process, as
it runs by default) with a $5 monthly budget, in front of the loopback fake upstream, where each
answer costs exactly $1 (10 prompt tokens at the provider's price of $100 000 per million)."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from ..config.test_projects import Proc, auth
from ..conftest import FakeUpstream, cli_env, priced_projects, read_traces

KEY = "sk-prysm-budget-test-key-0123456789ab"
BUDGET = 5


def config(fake: FakeUpstream) -> str:
    return priced_projects(fake, [("p", KEY, f"monthly_budget_usd = {BUDGET}\n")])


@pytest.fixture(params=["process", "thread"])
def proc(fake: FakeUpstream, tmp_path: Any, request: Any) -> Any:
    """The proxy, with each trace writer: neither may count a cost the proxy counted already."""
    path = tmp_path / "prysm.toml"
    path.write_text(config(fake))
    started = Proc(str(path), str(tmp_path / "traces.db"), cli_env(), "--trace-writer", request.param)
    yield started
    started.stop()


def send(client: httpx.Client, stream: bool = False, **headers: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return client.post("/chat/completions", content=json.dumps(body), headers={**auth(KEY), **headers})


@pytest.mark.parametrize("stream", [False, True])
def test_one_client_waiting_for_each_answer_stops_exactly_at_the_budget(proc: Any, tmp_path: Any, stream: bool) -> None:
    with httpx.Client(base_url=proc.base, timeout=30) as client:
        statuses = [send(client, stream).status_code for _ in range(12)]
        refused = send(client, stream)
    assert statuses == [200] * BUDGET + [429] * (12 - BUDGET)
    error = refused.json()["error"]
    assert error["code"] == "project_budget_exceeded" and refused.headers["x-should-retry"] == "false"
    proc.stop()
    rows = read_traces(str(tmp_path / "traces.db"))
    # What the store holds agrees: $1 a request, $5 in all (counted once, not by the proxy and the writer).
    assert sum(r["cost_usd"] or 0 for r in rows) == pytest.approx(BUDGET)
    assert "spent $5.0000 this month" in error["message"]


def test_concurrent_clients_overshoot_by_at_most_the_requests_in_flight(proc: Any, fake: FakeUpstream) -> None:
    workers, each = 8, 5  # 40 requests, 8 at a time, each answered after 30 ms
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=proc.base, timeout=30) as client:
            for _ in range(each):
                code = send(client, **{"x-fake-delay-ms": "30"}).status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == workers * each and set(statuses) <= {200, 429}
    admitted = statuses.count(200)
    # The request that reaches the budget is the 5th counted; at that moment at most 7 others (one
    # per other client) are in flight, and nothing is admitted after it.
    assert BUDGET <= admitted <= BUDGET + workers - 1, statuses
    assert len(fake.seen) == admitted
