"""``prysmai doctor`` against a real proxy, a dead port, and a key the proxy does not accept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from ..conftest import KEY, ProxyHandle, free_port

SECRET_TAIL = KEY[len("sk-prysm-") :]


def doctor(*args: str, **env: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    done = subprocess.run(
        [sys.executable, "-m", "prysmai._cli", "doctor", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def by_name(out: str) -> dict[str, Any]:
    report = json.loads(out)
    return {**{c["check"]: c for c in report["checks"]}, "_ok": report["ok"]}


def test_all_ok_against_a_running_proxy(proxy: ProxyHandle) -> None:
    code, out, err = doctor("--json", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=proxy.base_url, OPENAI_API_KEY="sk-app")
    assert code == 0, out + err
    checks = by_name(out)
    assert checks["_ok"] is True
    for name in ("python", "prysmai", "openai", "wrapt", "prysm key", "proxy url", "PRYSM_AUTO", "fallback"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["proxy health"]["status"] == "ok" and " ms" in checks["proxy health"]["detail"]
    assert checks["key accepted"]["status"] == "ok"
    assert "from the environment" in checks["proxy url"]["detail"]
    assert SECRET_TAIL not in out + err and "sk-app" not in out + err
    assert proxy.traces() == []  # the key check costs nothing: no request reached the provider


def test_a_key_the_proxy_rejects_is_an_error(proxy: ProxyHandle) -> None:
    wrong = "sk-prysm-not-accepted-here-0123456789"
    code, out, err = doctor(PRYSM_API_KEY=wrong, OPENAI_API_KEY="sk-app", PRYSM_AUTO="1")
    assert code == 1
    code, out, err = doctor("--base-url", proxy.base_url, PRYSM_API_KEY=wrong, PRYSM_AUTO="1")
    assert code == 1
    assert "error    key accepted" in out and "HTTP 401" in out
    assert "from the argument" in out
    assert "not-accepted-here" not in out + err


def test_a_dead_proxy_and_bad_settings(tmp_path: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/v1"
    code, out, _ = doctor("--json", PRYSM_BASE_URL=dead, PRYSM_AUTO="on", PRYSM_FALLBACK="perhaps")
    assert code == 1
    checks = by_name(out)
    assert checks["prysm key"]["status"] == "error" and "PRYSM_API_KEY" in checks["prysm key"]["fix"]
    assert checks["PRYSM_AUTO"]["status"] == "warning"
    assert checks["fallback"]["status"] == "error"
    assert checks["proxy health"]["status"] == "error" and "prysmai proxy" in checks["proxy health"]["fix"]
    assert "key accepted" not in checks


def test_urls_are_shown_without_their_user_and_password(proxy: ProxyHandle) -> None:
    port = proxy.base_url.split(":")[2].split("/")[0]
    for base in (
        f"http://alice:s3cretpw@127.0.0.1:{port}/api/v1",
        f"http://alice:s3cretpw@127.0.0.1:{free_port()}/api/v1",
    ):
        _, out, err = doctor(
            "--json",
            PRYSM_API_KEY=KEY,
            PRYSM_BASE_URL=base,
            OPENAI_BASE_URL="https://bob:pw2-secret-x@example.invalid/v1",
            OPENAI_API_KEY="sk-app",
        )
        checks = by_name(out)
        assert "127.0.0.1" in checks["proxy url"]["detail"] and "***@" in checks["proxy url"]["detail"]
        assert "***@example.invalid" in checks["OPENAI_BASE_URL"]["detail"]
        for secret in ("s3cretpw", "pw2-secret-x", "alice", "bob:"):
            assert secret not in out + err, (secret, out)
        _, text, err = doctor(PRYSM_API_KEY=KEY, PRYSM_BASE_URL=base)  # the plain-text report too
        assert "s3cretpw" not in text + err and "alice" not in text + err
