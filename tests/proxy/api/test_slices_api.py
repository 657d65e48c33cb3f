"""Slicing through the read API: a real ``prysmai proxy`` subprocess with two projects (and an
admin key) in front of the loopback fake upstream. The new filters, value suggestions and split
series answer the API and the dashboard alike, keep a project's key to its project, and a bad value
is a 400 naming its parameter."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from ..config.test_projects import Proc, auth
from ..conftest import FakeUpstream, ThreadedServer, cli_env
from .test_scores import ADMIN, BATCH, WEB, config

HOSTILE_MODEL = "<img src=x onerror=alert(1)>\"'\x07m"


def send(proc: Any, key: str, model: str, *, meta: dict[str, Any] | None = None, user: str | None = None) -> str:
    headers = auth(key)
    if meta is not None:
        headers["X-Prysm-Metadata"] = json.dumps(meta)
    if user is not None:
        headers["X-Prysm-User-Id"] = user
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{proc.base}/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-prysm-trace-id"]


@pytest.fixture(scope="module")
def proc(tmp_path_factory: Any) -> Any:
    fake = FakeUpstream()
    server = ThreadedServer(fake).start()
    fake.url = server.url + "/v1"  # type: ignore[attr-defined]
    folder = tmp_path_factory.mktemp("slices")
    path = folder / "prysm.toml"
    path.write_text(config(fake))
    started = Proc(str(path), str(folder / "traces.db"), cli_env())
    try:
        for _ in range(3):
            send(started, WEB, "gpt-web", meta={"team": "red", "tier": 2}, user="ann")
        send(started, WEB, HOSTILE_MODEL, meta={"team": HOSTILE_MODEL}, user="bob")
        for _ in range(2):
            send(started, BATCH, "gpt-batch", meta={"team": "secret-batch-team"}, user="cy")
        yield started
    finally:
        started.stop()
        server.stop()


def get(proc: Any, key: str, route: str, **params: str) -> httpx.Response:
    return httpx.get(f"{proc.base}/{route}", params={"since": "1h", **params}, headers=auth(key))


def values(doc: dict[str, Any]) -> dict[str, int]:
    return {v["value"]: v["count"] for v in doc["values"]}


def test_suggestions_are_the_stores_values_in_the_keys_project(proc: Any) -> None:
    web = get(proc, WEB, "suggest", field="model")
    assert web.status_code == 200, web.text
    assert values(web.json()) == {"gpt-web": 3, HOSTILE_MODEL: 1}
    assert values(get(proc, ADMIN, "suggest", field="model").json()) == {"gpt-web": 3, "gpt-batch": 2, HOSTILE_MODEL: 1}
    assert values(get(proc, ADMIN, "suggest", field="model", project="batch").json()) == {"gpt-batch": 2}
    assert values(get(proc, WEB, "suggest", field="user").json()) == {"ann": 3, "bob": 1}
    assert values(get(proc, WEB, "suggest", field="provider").json()) == {"up": 4}
    assert values(get(proc, WEB, "suggest", field="meta_key").json()) == {"team": 4, "tier": 3}
    teams = get(proc, WEB, "suggest", field="meta_value", meta_key="team").json()
    assert values(teams) == {"red": 3, HOSTILE_MODEL: 1} and teams["complete"]
    # A project's key never sees another project's values, even naming it.
    refused = get(proc, WEB, "suggest", field="meta_value", meta_key="team", project="batch")
    assert refused.status_code == 403
    assert values(get(proc, WEB, "suggest", field="model", prefix="GPT").json()) == {"gpt-web": 3}
    # Nothing in a range before the traces.
    assert (
        get(proc, WEB, "suggest", field="model", since=str(time.time() - 7200), until=str(time.time() - 3600)).json()[
            "values"
        ]
        == []
    )


def test_the_new_filters_through_the_api(proc: Any) -> None:
    assert len(get(proc, ADMIN, "traces", provider="up").json()["data"]) == 6
    assert get(proc, ADMIN, "traces", provider="nope").json()["data"] == []
    assert len(get(proc, ADMIN, "traces", stream="false", http_status="200").json()["data"]) == 6
    assert get(proc, ADMIN, "traces", stream="true").json()["data"] == []
    assert len(get(proc, ADMIN, "traces", latency_min="0", tokens_min="1").json()["data"]) == 6
    assert get(proc, ADMIN, "traces", latency_max="0").json()["data"] == []
    listed = get(proc, WEB, "traces", meta="team=red", model="gpt-web").json()
    assert len(listed["data"]) == 3 and listed["total"] == 3
    assert get(proc, WEB, "stats", provider="up").json()["requests"] == 4


@pytest.mark.parametrize(
    ("route", "params", "param"),
    [
        ("traces", {"cost_min": "lots"}, "cost_min"),
        ("traces", {"latency_min": "9", "latency_max": "1"}, "latency_min"),
        ("overview", {"tokens_max": "-3"}, "tokens_max"),
        ("traces", {"stream": "perhaps"}, "stream"),
        ("traces", {"http_status": "abc"}, "http_status"),
        ("suggest", {"field": "colour"}, "field"),
        ("suggest", {"field": "meta_value"}, "meta_key"),
        ("suggest", {"field": "model", "limit": "101"}, "limit"),
        ("series", {"by": "colour"}, "by"),
        ("series", {"by": "model", "top": "11"}, "top"),
        ("series", {"by": "model", "top": "x"}, "top"),
        ("series", {"by": "model", "top": "\u00b2"}, "top"),
        ("traces", {"http_status": "\u00b2\u00b2\u00b2"}, "http_status"),
        ("series", {"by": "model", "latency": "maybe"}, "latency"),
    ],
)
def test_a_bad_value_is_a_400_naming_its_parameter(proc: Any, route: str, params: dict[str, str], param: str) -> None:
    r = get(proc, WEB, route, **params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_parameter", error


@pytest.mark.parametrize("by", ["model", "user", "project", "meta:team"])
def test_split_series_count_each_group(proc: Any, by: str) -> None:
    r = get(proc, ADMIN, "series", by=by, top="2")
    assert r.status_code == 200, r.text
    doc = r.json()
    groups = {("other" if g["other"] else g["key"]): g["requests"] for g in doc["groups"]}
    expected = {
        "model": {"gpt-web": 3, "gpt-batch": 2, "other": 1},
        "user": {"ann": 3, "cy": 2, "other": 1},
        "project": {"web": 4, "batch": 2},
        "meta:team": {"red": 3, "secret-batch-team": 2, "other": 1},
    }[by]
    assert groups == expected
    for g in doc["groups"]:
        assert sum(p["requests"] for p in g["timeseries"]) == g["requests"]
    # A project's key: its own project's groups only.
    mine = get(proc, WEB, "series", by=by, top="5").json()
    assert "secret-batch-team" not in json.dumps(mine) and "gpt-batch" not in json.dumps(mine)
    assert sum(g["requests"] for g in mine["groups"]) == 4
