"""``prysmai proxy`` as an operator meets it: a busy port, its log, an unreachable upstream,
rejected keys, TLS, file modes and key strength. Real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from prysmai._proxy.server.ratelog import RateLimitedLog
from prysmai._proxy.store.sqlite import SQLiteEngine

from ..conftest import KEY, PRYSMAI, Proxy, cli_env
from ..system_tools import require

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run_proxy() -> Iterator[Any]:
    started: list[Proxy] = []

    def start(*args: str, **environ: str) -> Proxy:
        proxy = Proxy(*args, **environ)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.communicate()


# -- busy port -----------------------------------------------------------------------------------
def test_busy_port_is_one_line_and_leaves_nothing(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "store" / "traces.db"
        done = subprocess.run(
            [*PRYSMAI, "proxy", "--port", str(port), "--db", str(db), "--upstream", "demo", "--key", KEY],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
        )
    assert done.returncode == 1
    assert f"port {port} is in use; choose another with --port" in done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stderr and "Errno" not in done.stderr
    assert not db.parent.exists()  # no store created


# -- the log: one format, timestamps, no colour, rate-limited warnings ----------------------------
def test_log_unreachable_upstream_and_rejected_keys(run_proxy: Any, tmp_path: Any) -> None:
    upstream = f"http://127.0.0.1:{closed_port()}/v1"
    proxy = run_proxy(
        "--key", KEY, "--db", str(tmp_path / "t.db"), "--upstream", upstream, "--access-log", NO_COLOR="1"
    )
    with httpx.Client() as client:
        for _ in range(20):
            r = client.post(f"{proxy.base}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 502
        client.get(f"{proxy.base}/models%1b[31m", headers={"Authorization": f"Bearer {KEY}"})
        for i in range(20):  # (20 from one address within a minute: the 21st would be throttled)
            r = client.get(f"{proxy.base}/models", headers={"Authorization": f"Bearer sk-prysm-wrong-{i:020d}"})
            assert r.status_code == 401
    log = proxy.stop()
    assert proxy.proc.returncode == 0
    lines = [line for line in log.splitlines() if line.strip()]
    assert "\x1b" not in log  # no colour, and a control character in a path is escaped
    assert all(TEXT_LINE.match(line) for line in lines), log
    # One format for ours and uvicorn's (its access lines included); keys never.
    assert any(" uvicorn.access: " in line and "/api/v1/chat/completions" in line for line in lines)
    assert KEY[12:] not in log and "wrong-0000" not in log
    # The unreachable upstream and the bad keys: the first at once, the rest in a summary.
    upstream_lines = [line for line in lines if "upstream unreachable" in line]
    assert "502 to the client: upstream unreachable" in upstream_lines[0] and upstream in upstream_lines[0]
    # 19 more chat requests and the request with a control character in its path (the URL as
    # sent upstream: percent-encoded, so no raw ESC reaches the log)
    assert "20 more like this" in upstream_lines[1] and "/v1/models%1b[31m" in upstream_lines[1]
    assert len(upstream_lines) == 2, upstream_lines
    auth_lines = [line for line in lines if "invalid prysm api key" in line]
    assert len(auth_lines) == 2 and "from 127.0.0.1" in auth_lines[0]
    assert "19 more like this" in auth_lines[1]


def test_json_log_format_and_wide_bind_warning(run_proxy: Any, tmp_path: Any) -> None:
    db = tmp_path / "loose.db"
    SQLiteEngine(str(db)).open_for_writing().close()
    db.chmod(0o644)  # an existing store readable by others is reported
    proxy = run_proxy(
        "--key", KEY, "--db", str(db), "--upstream", "demo", "--host", "0.0.0.0", "--log-format", "json",
        "--access-log",
    )  # fmt: skip
    r = httpx.post(f"{proxy.base}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    log = proxy.stop()
    docs = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", d["time"]) for d in docs)
    warnings = " ".join(d["message"] for d in docs if d["level"] == "WARNING")
    assert "without TLS" in warnings and "0.0.0.0" in warnings
    assert "readable by other users (mode 644)" in warnings
    (access,) = [d for d in docs if d["logger"] == "uvicorn.access"]
    assert access["method"] == "POST" and access["path"] == "/api/v1/chat/completions" and access["status"] == 200
    assert KEY not in log


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_line_separators_and_bidi_controls_in_a_path_cannot_forge_log_lines(
    run_proxy: Any, tmp_path: Any, fmt: str
) -> None:
    proxy = run_proxy("--key", KEY, "--db", str(tmp_path / "t.db"), "--upstream", "demo", "--log-format", fmt)
    forged = "/models\u2028 INFO prysmai.proxy: all fine\u2029\u202eevil\u2066"
    r = httpx.get(f"{proxy.base}{quote(forged)}")  # no key: a 401, logged with the path
    assert r.status_code == 401
    log = proxy.stop()
    for raw in ("\u2028", "\u2029", "\u202e", "\u2066"):
        assert raw not in log, f"U+{ord(raw):04X} written raw"
    (line,) = [line for line in log.split("\n") if "missing prysm api key" in line]
    if fmt == "text":
        assert "\\u2028 INFO prysmai.proxy: all fine\\u2029\\u202eevil\\u2066" in line
    else:
        assert json.loads(line)["message"].endswith(forged)  # the same value, escaped in the JSON text


@pytest.mark.parametrize(
    ("args", "environ", "warned"),
    [
        (("--host", "0.0.0.0", "--key", KEY), {}, True),
        (("--host", "0.0.0.0"), {"PRYSM_PROXY_KEYS": KEY}, False),
        (("--key", KEY), {}, False),  # loopback: the machine's users are the ones who could reach it anyway
    ],
)
def test_keys_on_the_command_line_of_a_proxy_beyond_loopback_are_warned_about(
    run_proxy: Any, tmp_path: Any, args: tuple[str, ...], environ: dict[str, str], warned: bool
) -> None:
    proxy = run_proxy(*args, "--db", str(tmp_path / "t.db"), "--upstream", "demo", **environ)
    r = httpx.post(f"{proxy.base}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    log = proxy.stop()
    lines = [line for line in log.splitlines() if "/proc/PID/cmdline" in line]
    assert len(lines) == (1 if warned else 0), log
    if warned:
        assert " WARNING " in lines[0] and "PRYSM_PROXY_KEYS" in lines[0] and KEY not in log


async def test_rate_limited_log_summarises_on_a_timer(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("prysmai.test.ratelog")
    rl = RateLimitedLog(logger, interval=1.0)
    with caplog.at_level(logging.WARNING, logger="prysmai.test.ratelog"):
        for i in range(51):
            rl.event("kind", f"event {i}")
        rl.event("other", "another kind")
        assert [r.getMessage() for r in caplog.records] == ["event 0", "another kind"]
        await asyncio.sleep(1.3)  # the window closes: one summary, with no further event needed
        assert caplog.records[-1].getMessage().startswith("50 more like this in the last")
        assert "(latest: event 50)" in caplog.records[-1].getMessage()
        rl.event("kind", "event again")
        assert caplog.records[-1].getMessage() == "event again"
        rl.close()
        assert len(caplog.records) == 4  # nothing suppressed since: no empty summary


# -- safe defaults ---------------------------------------------------------------------------------
def test_store_and_its_wal_are_private(tmp_path: Any) -> None:
    old = os.umask(0o022)  # the usual umask, which would make files 0644
    try:
        path = tmp_path / "fresh" / "dir" / "traces.db"
        conn = SQLiteEngine(str(path)).open_for_writing()
        conn.execute("INSERT INTO traces (id, created_at, method, endpoint, status) VALUES ('a', 0, 'GET', 'x', 's')")
        files = [path, path.with_name("traces.db-wal"), path.with_name("traces.db-shm")]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        conn.close()
    finally:
        os.umask(old)
    assert modes == {"traces.db": 0o600, "traces.db-wal": 0o600, "traces.db-shm": 0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755  # parents: the usual mode


@pytest.mark.parametrize("directory_exists", [True, False])
def test_a_store_created_through_a_dangling_symlink_is_private(tmp_path: Any, directory_exists: bool) -> None:
    real = tmp_path / "elsewhere" / "traces.db"
    if directory_exists:
        real.parent.mkdir()
    link = tmp_path / "traces.db"
    link.symlink_to(real)
    old = os.umask(0o022)
    try:
        proxy = Proxy("--key", KEY, "--db", str(link), "--upstream", "demo").start()
        r = httpx.post(f"{proxy.base}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        files = [real, real.with_name("traces.db-wal"), real.with_name("traces.db-shm")]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}  # while it runs: WAL and SHM exist
        log = proxy.stop()
    finally:
        os.umask(old)
    assert modes == {"traces.db": 0o600, "traces.db-wal": 0o600, "traces.db-shm": 0o600}, log
    assert stat.S_IMODE(real.parent.stat().st_mode) == (0o755 if directory_exists else 0o700)
    assert link.is_symlink() and "readable by other users" not in log


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("sk-prysm-...", "placeholder"),
        ("sk-prysm-a", "too weak"),
        ("sk-prysm-local-dev-key", "placeholder"),
        ("sk-prysm-aaaaaaaaaaaaaaaaaaaaaaaa", "too weak"),
        ("sk-prysm-abcabcabcabcabcabc", "too weak"),  # long, but 3 different characters
    ],
)
def test_weak_keys_are_refused(tmp_path: Any, key: str, why: str) -> None:
    db = tmp_path / "x.db"
    done = subprocess.run(
        [*PRYSMAI, "proxy", "--key", key, "--db", str(db), "--upstream", "demo", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert done.returncode == 2 and why in done.stderr and "secrets.token_urlsafe" in done.stderr
    assert key not in done.stderr
    assert not db.exists()


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    openssl = require("openssl", "openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls(run_proxy: Any, tmp_path: Any) -> None:
    cert, key = _self_signed(tmp_path)
    proxy = run_proxy(
        "--key", KEY, "--db", str(tmp_path / "t.db"), "--upstream", "demo", "--ssl-certfile", cert, "--ssl-keyfile", key
    )
    assert proxy.base.startswith("https://127.0.0.1:")
    trust = ssl.create_default_context(cafile=cert)
    with httpx.Client(verify=trust) as client:
        assert client.get(f"{proxy.base}/health").json()["status"] == "ok"
        r = client.post(f"{proxy.base}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and "prysm-demo" in r.json()["choices"][0]["message"]["content"]
    with pytest.raises(httpx.TransportError):  # plain http is not served on a TLS port
        httpx.get(proxy.base.replace("https://", "http://") + "/health", timeout=5)
    log = proxy.stop()
    assert "without TLS" not in log


def test_tls_mistakes_are_one_line(tmp_path: Any) -> None:
    cert, _ = _self_signed(tmp_path)
    for flags, expected in (
        (["--ssl-certfile", str(tmp_path / "missing.pem")], "cannot use the TLS certificate"),
        (["--ssl-keyfile", cert], "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", cert], "cannot use the TLS certificate"),  # no key in the file
    ):
        done = subprocess.run(
            [*PRYSMAI, "proxy", "--key", KEY, "--db", str(tmp_path / "x.db"), "--port", "0", *flags],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
        )
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr


def test_generated_key_banner_still_works(run_proxy: Any, tmp_path: Any) -> None:
    proxy = run_proxy("--db", str(tmp_path / "g.db"), "--upstream", "demo")
    banner = "".join(proxy.lines)
    key = re.search(r"\n    (sk-prysm-\S+)\n", banner)
    assert key is not None
    t0 = time.monotonic()
    r = httpx.get(f"{proxy.base}/models", headers={"Authorization": f"Bearer {key.group(1)}"})
    assert r.status_code == 200 and time.monotonic() - t0 < 10
    proxy.stop()
