"""What is kept, end to end, through a real ``prysmai proxy``: redaction and the body cap change
what is stored -- and so what the read API, the dashboard's JSON and the CLI show -- but never what
the provider receives or what the client gets back."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from typing import Any

from ..conftest import KEY, PRYSMAI, FakeUpstream, Proxy, cli_env

SECRETS = {
    "key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "email": "grace.hopper@example.org",
    "card": "4111 1111 1111 1111",
    "aws": "AKIAIOSFODNN7EXAMPLE",
}


def _post(base: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        base + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def _get(base: str, path: str) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _everything_shown(base: str, db: str, trace_ids: list[str]) -> str:
    """What a person can see of the traces: the read API (what the dashboard's pages fetch), the
    dashboard's own JSON twin, and the CLI's table and JSON."""
    shown = [json.dumps(_get(base, "/traces?limit=50"))]
    for trace_id in trace_ids:
        shown.append(json.dumps(_get(base, f"/traces/{trace_id}"), ensure_ascii=False))
    env = cli_env()
    for args in (["traces", "--db", db, "--json"], ["traces", "--db", db]):
        shown.append(subprocess.run([*PRYSMAI, *args], capture_output=True, text=True, env=env, check=True).stdout)
    for trace_id in trace_ids:
        for extra in ([], ["--json"]):
            done = subprocess.run(
                [*PRYSMAI, "traces", "show", trace_id, "--db", db, *extra],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            shown.append(done.stdout)
    return "\n".join(shown)


def test_secrets_never_reach_the_store_or_anything_that_reads_it(fake: FakeUpstream, tmp_path: Any) -> None:
    db = str(tmp_path / "t.db")
    proxy = Proxy(
        "--db",
        db,
        "--upstream",
        fake.url,  # type: ignore[attr-defined]
        "--key",
        KEY,
        "--redact",
        "secrets,email,card",
        OPENAI_API_KEY="sk-upstream-credential-0000",
    ).start()
    try:
        prompt = " | ".join(SECRETS.values())
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
        status, headers, answer = _post(proxy.base, body, **{"x-fake-echo": "1", "X-Prysm-Metadata": "{}"})
        assert status == 200
        # The provider got the request as sent, the client the answer as the provider wrote it.
        assert fake.last().json()["messages"][0]["content"] == prompt
        assert json.loads(answer)["choices"][0]["message"]["content"] == prompt
        streamed = dict(body, stream=True)
        request = urllib.request.Request(
            proxy.base + "/chat/completions",
            data=json.dumps(streamed).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "x-fake-echo": "1"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            stream = response.read().decode()
            stream_id = response.headers["x-prysm-trace-id"]
        # The client's stream carries the secrets, cut across chunks (x-fake-chunks: 3).
        deltas = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in stream.splitlines()
            if line.startswith("data: {") and json.loads(line[6:])["choices"]
        )
        assert deltas == prompt
        ids = [headers["x-prysm-trace-id"], stream_id]
        shown = _everything_shown(proxy.base, db, ids)
        with open(db, "rb") as fh:
            stored = fh.read()
        for name in (db + "-wal",):
            if os.path.exists(name):
                with open(name, "rb") as fh:
                    stored += fh.read()
        for secret in SECRETS.values():
            assert secret.encode() not in stored, secret
            assert secret not in shown, secret
        assert "[redacted:secret]" in shown and "[redacted:email]" in shown and "[redacted:card]" in shown
        one = _get(proxy.base, f"/traces/{ids[1]}")
        assert "[redacted:card]" in one["response_body"]["choices"][0]["message"]["content"]
    finally:
        proxy.stop()


def test_a_large_body_reaches_the_provider_and_the_client_whole_and_is_stored_cut(
    fake: FakeUpstream, tmp_path: Any
) -> None:
    db = str(tmp_path / "t.db")
    proxy = Proxy(
        "--db",
        db,
        "--upstream",
        fake.url,  # type: ignore[attr-defined]
        "--key",
        KEY,
        "--max-stored-body-bytes",
        "65536",
        OPENAI_API_KEY="sk-upstream-credential-0000",
    ).start()
    try:
        big = "word " * 1_000_000  # 5 MB
        status, headers, answer = _post(
            proxy.base, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]}, **{"x-fake-echo": "1"}
        )
        assert status == 200
        assert fake.last().json()["messages"][0]["content"] == big
        assert json.loads(answer)["choices"][0]["message"]["content"] == big
        trace = _get(proxy.base, f"/traces/{headers['x-prysm-trace-id']}")
        for column in ("request_body", "response_body"):
            doc = trace[column]
            assert isinstance(doc, dict), "still a JSON document"
            assert len(json.dumps(doc, ensure_ascii=False).encode()) <= 65536
        content = trace["request_body"]["messages"][0]["content"]
        assert content.startswith("word word") and "…[truncated: " in content
        assert any(n.startswith("request body: ") and "bytes cut" in n for n in trace["notes"])
        assert trace["total_tokens"] == 13  # usage was read from the whole answer
    finally:
        proxy.stop()
    assert os.path.getsize(db) < 2 * 1024 * 1024


def test_capture_metadata_and_bad_flags(fake: FakeUpstream, tmp_path: Any) -> None:
    db = str(tmp_path / "t.db")
    for args, message in (
        (["--redact", "secret"], "'secret' is not a redaction set"),
        (["--redact-pattern", "x"], "NAME=REGEX"),
        (["--retention", "30"], "like 30d"),
        (["--max-stored-body-bytes", "-1"], "0 (no limit) or more"),
        (["--otlp-sample", "2"], "--otlp-sample must be from 0 to 1"),
    ):
        done = subprocess.run(
            [*PRYSMAI, "proxy", "--port", "0", "--db", db, *args], capture_output=True, text=True, env=cli_env()
        )
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    proxy = Proxy(
        "--db",
        db,
        "--upstream",
        fake.url,  # type: ignore[attr-defined]
        "--key",
        KEY,
        "--capture",
        "metadata",
        OPENAI_API_KEY="sk-upstream-credential-0000",
    ).start()
    try:
        body = {"model": "gpt-4o-mini", "temperature": 0.3, "messages": [{"role": "user", "content": "my diary"}]}
        _, headers, _ = _post(proxy.base, body, **{"x-fake-echo": "1"})
        trace = _get(proxy.base, f"/traces/{headers['x-prysm-trace-id']}")
        assert "my diary" not in json.dumps(trace)
        assert trace["request_body"] == {"model": "gpt-4o-mini", "temperature": 0.3}
        assert trace["response_body"]["choices"] == [{"index": 0, "finish_reason": "stop"}]
        assert trace["total_tokens"] == 13 and trace["cost_usd"] is not None
    finally:
        proxy.stop()
