"""Scores through the API: a real ``prysmai proxy`` subprocess with two projects (and an admin key)
in front of the loopback fake upstream. Scores are attached, read back with their trace and in
the list, filtered on, averaged on the overview, validated, deleted, and kept to their project."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..config.test_projects import Proc, auth, key_id, sha
from ..conftest import FakeUpstream, ThreadedServer, cli_env

WEB = "sk-prysm-scores-web-0123456789abcdef"
BATCH = "sk-prysm-scores-batch-0123456789abcd"
ADMIN = "sk-prysm-scores-admin-0123456789abcd"
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def config(fake: FakeUpstream) -> str:
    providers = f"""
  [[projects.providers]]
  name = "up"
  kind = "openai-compatible"
  base_url = "{fake.url}"
"""
    return f"""
[admin]
keys = ["{sha(ADMIN)}"]

[[projects]]
name = "web"
keys = ["{sha(WEB)}"]
default_provider = "up"
{providers}
[[projects]]
name = "batch"
keys = ["{sha(BATCH)}"]
default_provider = "up"
{providers}"""


@pytest.fixture(scope="module")
def proc(tmp_path_factory: Any) -> Any:
    """One proxy for the module (each test makes traces of its own)."""
    fake = FakeUpstream()
    server = ThreadedServer(fake).start()
    fake.url = server.url + "/v1"  # type: ignore[attr-defined]
    folder = tmp_path_factory.mktemp("scores")
    path = folder / "prysm.toml"
    path.write_text(config(fake))
    started = Proc(str(path), str(folder / "traces.db"), cli_env())
    try:
        yield started
    finally:
        started.stop()
        server.stop()


def send(proc: Any, key: str, **headers: str) -> str:
    r = httpx.post(f"{proc.base}/chat/completions", json=CHAT, headers={**auth(key), **headers})
    assert r.status_code == 200, r.text
    return r.headers["x-prysm-trace-id"]


def score(proc: Any, key: str, trace_id: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{proc.base}/traces/{trace_id}/scores", content=content, headers=auth(key))


def test_a_score_is_attached_read_back_with_its_trace_and_deleted(proc: Any) -> None:
    trace_id = send(proc, WEB)
    r = score(proc, WEB, trace_id, {"name": "helpful", "value": 1, "comment": "good answer"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["object"] == "score" and made["id"].startswith("score_")
    assert (made["name"], made["value"], made["type"], made["comment"]) == ("helpful", 1, "number", "good answer")
    assert made["key_id"] == key_id(WEB) and made["source"] == "api" and made["trace_id"] == trace_id
    # A boolean and a category under other names.
    assert score(proc, WEB, trace_id, {"name": "correct", "value": True}).status_code == 201
    assert score(proc, WEB, trace_id, {"name": "tone", "value": "friendly"}).status_code == 201
    trace = httpx.get(f"{proc.base}/traces/{trace_id}", headers=auth(WEB)).json()
    got = {s["name"]: (s["value"], s["type"]) for s in trace["scores"]}
    assert got == {"helpful": (1, "number"), "correct": (True, "boolean"), "tone": ("friendly", "category")}
    assert trace["scores"][0]["id"] == made["id"]  # oldest first
    # Deleted by id: gone from the trace, and a second delete is a 404.
    gone = httpx.delete(f"{proc.base}/scores/{made['id']}", headers=auth(WEB))
    assert gone.status_code == 200 and gone.json() == {"object": "score.deleted", "id": made["id"], "deleted": True}
    trace = httpx.get(f"{proc.base}/traces/{trace_id}", headers=auth(WEB)).json()
    assert "helpful" not in {s["name"] for s in trace["scores"]}
    assert httpx.delete(f"{proc.base}/scores/{made['id']}", headers=auth(WEB)).status_code == 404


def test_another_projects_key_gets_404_and_the_admin_key_may_score_any_trace(proc: Any) -> None:
    trace_id = send(proc, WEB)
    refused = score(proc, BATCH, trace_id, {"name": "helpful", "value": 0})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    mine = score(proc, WEB, trace_id, {"name": "helpful", "value": 0}).json()
    assert httpx.delete(f"{proc.base}/scores/{mine['id']}", headers=auth(BATCH)).status_code == 404
    by_admin = score(proc, ADMIN, trace_id, {"name": "helpful", "value": 1})
    assert by_admin.status_code == 201 and by_admin.json()["key_id"] == key_id(ADMIN)
    names = [s["key_id"] for s in httpx.get(f"{proc.base}/traces/{trace_id}", headers=auth(WEB)).json()["scores"]]
    assert names == [key_id(WEB), key_id(ADMIN)]
    # A prefix of the id works as for reads.
    assert score(proc, WEB, trace_id[:12], {"name": "helpful", "value": 1}).status_code == 201


def test_one_type_per_name_in_a_project(proc: Any) -> None:
    web, batch = send(proc, WEB), send(proc, BATCH)
    assert score(proc, WEB, web, {"name": "kind-test", "value": 3.5}).status_code == 201
    clash = score(proc, WEB, web, {"name": "kind-test", "value": "great"})
    assert clash.status_code == 400
    assert clash.json()["error"]["param"] == "value" and "number" in clash.json()["error"]["message"]
    # Another project has its own names.
    assert score(proc, BATCH, batch, {"name": "kind-test", "value": "great"}).status_code == 201


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "", "value": 1}, "name"),
        ({"name": "<script>", "value": 1}, "name"),
        ({"name": "a" * 65, "value": 1}, "name"),
        ({"name": "ok", "value": None}, "value"),
        ({"name": "ok", "value": [1]}, "value"),
        ({"name": "ok", "value": "<b>x</b>"}, "value"),
        ({"name": "ok", "value": "x" * 65}, "value"),
        ({"name": "ok", "value": 1e300}, "value"),
        ({"name": "ok", "value": 1, "comment": 5}, "comment"),
        ({"name": "ok", "value": 1, "comment": "x" * 2001}, "comment"),
        ({"name": "ok", "value": 1, "comment": "bell\x07"}, "comment"),
        ({"name": "ok", "value": 1, "extra": 1}, "extra"),
        ({"name": "ok", "value": "\ud800"}, "value"),
        ({"name": "ok", "value": 1, "comment": "half a pair \udc00"}, "comment"),
        ([1, 2], "body"),
    ],
)
def test_bad_scores_are_refused_with_the_field_at_fault(proc: Any, body: Any, param: str) -> None:
    trace_id = send(proc, WEB)
    r = score(proc, WEB, trace_id, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]


def test_a_body_that_is_not_json_or_too_large_and_a_wrong_method_are_refused(proc: Any) -> None:
    trace_id = send(proc, WEB)
    assert score(proc, WEB, trace_id, b"{not json").json()["error"]["code"] == "invalid_json"
    big = json.dumps({"name": "ok", "value": 1, "comment": "x" * 20000}).encode()
    assert score(proc, WEB, trace_id, big).status_code == 413
    r = httpx.get(f"{proc.base}/traces/{trace_id}/scores", headers=auth(WEB))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert httpx.post(f"{proc.base}/scores/x", headers=auth(WEB)).status_code == 405
    assert score(proc, WEB, "0" * 32, {"name": "ok", "value": 1}).status_code == 404
    assert httpx.post(f"{proc.base}/traces/{trace_id}/scores", json={"name": "ok", "value": 1}).status_code == 401


def test_the_list_shows_scores_and_filters_by_name_and_range(proc: Any) -> None:
    ids = [send(proc, BATCH, **{"X-Prysm-User-Id": "rangeuser"}) for _ in range(4)]
    for trace_id, value in zip(ids, (0.1, 0.5, 0.9)):
        assert score(proc, BATCH, trace_id, {"name": "quality", "value": value}).status_code == 201

    def listed(**params: str) -> list[str]:
        doc = httpx.get(f"{proc.base}/traces", params={"user": "rangeuser", **params}, headers=auth(BATCH)).json()
        return [t["id"] for t in doc["data"]]

    assert set(listed(score="quality")) == set(ids[:3])
    assert set(listed(score="quality", score_min="0.4")) == set(ids[1:3])
    assert set(listed(score="quality", score_min="0.4", score_max="0.6")) == {ids[1]}
    assert listed(score="nothing") == []
    rows = httpx.get(f"{proc.base}/traces", params={"user": "rangeuser"}, headers=auth(BATCH)).json()["data"]
    by_id = {r["id"]: [s["value"] for s in r["scores"]] for r in rows}
    assert by_id == {ids[0]: [0.1], ids[1]: [0.5], ids[2]: [0.9], ids[3]: []}
    # The same filter narrows the aggregates.
    stats = httpx.get(f"{proc.base}/stats", params={"user": "rangeuser", "score": "quality"}, headers=auth(BATCH))
    assert stats.json()["requests"] == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"score_min": "1"}, "score_min"),
        ({"score": "q", "score_max": "x"}, "score_max"),
        ({"score": "q", "score_min": "nan"}, "score_min"),
        ({"score": "q", "score_min": "2", "score_max": "1"}, "score_min"),
    ],
)
def test_bad_score_filters_are_400s(proc: Any, params: dict[str, str], param: str) -> None:
    r = httpx.get(f"{proc.base}/traces", params=params, headers=auth(WEB))
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_the_overview_averages_scores_by_model_user_and_project(proc: Any) -> None:
    a = send(proc, WEB, **{"X-Prysm-User-Id": "avg-a"})
    b = send(proc, WEB, **{"X-Prysm-User-Id": "avg-b"})
    for trace_id, value in ((a, True), (b, False)):
        assert score(proc, WEB, trace_id, {"name": "thumbs", "value": value}).status_code == 201
    assert score(proc, WEB, a, {"name": "label-only", "value": "x"}).status_code == 201
    doc = httpx.get(f"{proc.base}/overview", params={"since": "1h"}, headers=auth(WEB)).json()
    averages = doc["score_averages"]
    assert set(averages) == {"model", "user"}  # a project's key: its own project only
    by_user = {(r["user"], r["name"]): (r["average"], r["scores"]) for r in averages["user"]}
    assert by_user[("avg-a", "thumbs")] == (1.0, 1) and by_user[("avg-b", "thumbs")] == (0.0, 1)
    assert all(r["name"] != "label-only" for r in averages["model"])  # categories have no average
    admin = httpx.get(f"{proc.base}/overview", params={"since": "1h"}, headers=auth(ADMIN)).json()
    projects = {r["project"] for r in admin["score_averages"]["project"]}
    assert "web" in projects


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.text(max_size=80),
    value=st.one_of(
        st.text(st.characters(blacklist_categories=()), max_size=80),  # lone surrogates too
        st.floats(),
        st.booleans(),
        st.integers(),
    ),
)
def test_hostile_scores_are_stored_exactly_or_refused_cleanly(proc: Any, name: str, value: Any) -> None:
    trace_id = send(proc, WEB)
    r = score(proc, WEB, trace_id, {"name": name, "value": value, "comment": name})
    assert r.status_code in (201, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["param"] in ("name", "value", "comment")
        return
    stored = httpx.get(f"{proc.base}/traces/{trace_id}", headers=auth(WEB)).json()["scores"][0]
    assert (stored["name"], stored["comment"]) == (name, name or None)
    if isinstance(value, float):
        assert stored["value"] == pytest.approx(value)
    else:
        assert stored["value"] == value
