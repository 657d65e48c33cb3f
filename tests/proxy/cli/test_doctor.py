"""``prysmai doctor`` against a real proxy, a dead port, and a key the proxy does not accept."""

from __future__ import annotations

import json
import os
import re
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
    # A SQLite store; where it is, only an admin key is told (there is none here).
    assert checks["trace store"] == {
        "check": "trace store",
        "status": "ok",
        "detail": "SQLite (an admin key sees where)",
        "fix": None,
    }
    assert proxy.db_path not in out
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


ADMIN = "sk-prysm-admin-reads-everything-0123456789"
SHOP = "sk-prysm-shop-sends-requests-0123456789"
CONFIG = """
[admin]
keys = [{ env = "DOCTOR_ADMIN_KEY" }]

[[projects]]
name = "shop"
keys = [{ env = "DOCTOR_SHOP_KEY" }]
default_provider = "offline"

  [[projects.providers]]
  name = "offline"
  kind = "demo"
"""


def test_against_a_proxy_run_from_a_config_file(tmp_path: Any) -> None:
    """An admin key reads but cannot send: an error, not "no problems found"; a project's key is
    accepted with its project named; a key the proxy rejects gets the config file's advice."""
    from ..conftest import Proxy

    config = tmp_path / "prysm.toml"
    config.write_text(CONFIG)
    proxy = Proxy(
        "--config", str(config), "--db", str(tmp_path / "t.db"), DOCTOR_ADMIN_KEY=ADMIN, DOCTOR_SHOP_KEY=SHOP
    ).start()
    try:
        code, out, err = doctor(PRYSM_API_KEY=ADMIN, PRYSM_BASE_URL=proxy.base, OPENAI_API_KEY="sk-app")
        assert code == 1, out
        assert "error    key accepted" in out and "is an admin key" in out and "cannot send requests" in out
        assert "403 admin_key_cannot_send" in out and "-> set PRYSM_API_KEY to a project's key" in out
        assert "no problems found" not in out and "problems found" in out
        # The operator's key is told where the store is.
        assert re.search(rf"^ok +trace store +SQLite {re.escape(str(tmp_path / 't.db'))}$", out, re.M), out
        code, out, err = doctor("--json", PRYSM_API_KEY=SHOP, PRYSM_BASE_URL=proxy.base, OPENAI_API_KEY="sk-app")
        checks = by_name(out)
        assert code == 0 and checks["key accepted"]["status"] == "ok", out
        assert "in project 'shop'" in checks["key accepted"]["detail"]
        wrong = "sk-prysm-not-in-the-config-0123456789"
        code, out, err = doctor("--json", PRYSM_API_KEY=wrong, PRYSM_BASE_URL=proxy.base)
        checks = by_name(out)
        assert code == 1 and checks["key accepted"]["status"] == "error"
        assert "config file" in checks["key accepted"]["fix"] and "[projects.NAME]" in checks["key accepted"]["fix"]
        assert "--key" not in checks["key accepted"]["fix"]
        for secret in (ADMIN, SHOP, wrong):
            assert secret[len("sk-prysm-") :] not in out + err
    finally:
        proxy.stop()


def test_the_default_project_is_named_and_a_url_without_api_v1_gets_the_fix(proxy: ProxyHandle) -> None:
    code, out, _ = doctor("--json", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=proxy.base_url, OPENAI_API_KEY="sk-app")
    assert code == 0 and "in project 'default'" in by_name(out)["key accepted"]["detail"]
    # Without the key flags' advice being wrong for a proxy without a config file:
    code, out, _ = doctor("--json", PRYSM_API_KEY="sk-prysm-wrong-key-0123456789", PRYSM_BASE_URL=proxy.base_url)
    assert "--key" in by_name(out)["key accepted"]["fix"]
    root = proxy.base_url[: -len("/api/v1")]
    code, out, _ = doctor("--json", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=root, OPENAI_API_KEY="sk-app")
    checks = by_name(out)
    assert code == 1
    assert (
        checks["proxy url"]["status"] == "warning"
        and f"set PRYSM_BASE_URL to {proxy.base_url}" in (checks["proxy url"]["fix"])
    )
    assert checks["proxy health"]["status"] == "error" and "lacks /api/v1" in checks["proxy health"]["detail"]
    assert f"add /api/v1: set PRYSM_BASE_URL to {proxy.base_url}" == checks["proxy health"]["fix"]


def test_a_server_that_accepts_but_never_answers_is_told_from_nothing_listening() -> None:
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1"
        code, out, _ = doctor("--json", "--timeout", "1", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=url)
        health = by_name(out)["proxy health"]
        assert code == 1 and health["status"] == "error"
        assert "accepts connections but did not answer" in health["detail"] and "within 1 s" in health["detail"]
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        silent.close()
    dead = f"http://127.0.0.1:{free_port()}/api/v1"
    code, out, _ = doctor("--json", "--timeout", "1", PRYSM_API_KEY=KEY, PRYSM_BASE_URL=dead)
    health = by_name(out)["proxy health"]
    assert code == 1 and health["detail"].startswith("cannot connect to 127.0.0.1:")
    assert "did not answer" not in health["detail"]


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
