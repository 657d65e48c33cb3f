"""The dashboard over HTTP, without a browser: log-in, cookies, security headers, routing, and
``prysmai ui``. (What the pages draw is checked in a real browser: test_dashboard_browser.py.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from prysmai._proxy.config.keys import key_id
from prysmai._proxy.web.auth import COOKIE_NAME, Sessions, cookie_name

from ..conftest import KEY, OTHER_KEY, ProxyHandle, free_port

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PAGES = ["/", "/traces", "/traces/0123456789abcdef", "/sessions", "/sessions/s-1", "/users"]
API = ["overview", "traces", "sessions", "users", "me"]


def origin(proxy: ProxyHandle) -> str:
    return proxy.server.url


def login(client: httpx.Client, base: str, key: str = KEY, **form: str) -> httpx.Response:
    return client.post(f"{base}/ui/login", data={"key": key, **form}, headers={"Origin": base}, follow_redirects=False)


def assert_security_headers(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"


# -- the signed session cookie -------------------------------------------------------------------
def test_session_cookie_is_signed_expires_and_never_holds_the_key() -> None:
    sessions = Sessions(lifetime=60)
    value = sessions.issue(key_id(KEY), now=1000.0)
    assert KEY not in value and KEY.split("-")[-1] not in value
    assert sessions.check(value, now=1001.0) == key_id(KEY)
    assert sessions.check(value, now=1060.0) is None  # expired
    expiry, kid, sid, sig = value.split(".")
    assert sessions.check(f"{int(expiry) + 3600}.{kid}.{sid}.{sig}", now=1001.0) is None  # extended: bad signature
    assert sessions.check(f"{expiry}.key_000000000000.{sid}.{sig}", now=1001.0) is None
    assert sessions.check(f"{expiry}.{kid}.{sid}.{'0' * len(sig)}", now=1001.0) is None
    assert Sessions(lifetime=60).check(value, now=1001.0) is None  # another process's secret
    for junk in ("", "x", "a.b", "1.2.3.4", "ab.cd.ef", "9" * 300):
        assert sessions.check(junk, now=1001.0) is None
    cookie = sessions.set_cookie("c", value, secure=False).decode()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
    assert "Secure" in sessions.set_cookie("c", value, secure=True).decode()
    assert cookie_name(3000) == COOKIE_NAME + "_3000" and cookie_name(None) == COOKIE_NAME


# -- log-in over HTTP ----------------------------------------------------------------------------
def test_pages_and_api_need_a_login(proxy: ProxyHandle) -> None:
    base = origin(proxy)
    with httpx.Client() as client:
        for page in PAGES:
            r = client.get(base + page + "?since=1h")
            assert r.status_code == 303, page
            assert r.headers["location"].startswith("/login?next=%2F")
            assert_security_headers(r)
        for route in API:
            r = client.get(f"{base}/ui/api/{route}")
            assert r.status_code == 401 and "Log in" in r.json()["error"]["message"]
            assert_security_headers(r)
        r = client.get(f"{base}/login")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert_security_headers(r)
        assert "<script" in r.text and 'src="/static/login.js"' in r.text
        # Inline scripts would be refused by the CSP anyway; none is shipped.
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)
        # Static assets need no login (they hold no data) and carry the same headers.
        r = client.get(f"{base}/static/main.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert_security_headers(r)
        assert client.get(f"{base}/static/../app.py").status_code == 404
        assert client.get(f"{base}/static/nope.js").status_code == 404
        assert client.get(f"{base}/elsewhere").status_code == 404
        assert client.post(f"{base}/traces").status_code == 405
        assert client.get(f"{base}/ui/login").status_code == 405


def test_login_sets_an_httponly_strict_cookie_and_logout_clears_it(proxy: ProxyHandle) -> None:
    base = origin(proxy)
    with httpx.Client() as client:
        r = login(client, base, next="/traces?user=alice")
        assert r.status_code == 303 and r.headers["location"] == "/traces?user=alice"
        set_cookie = r.headers["set-cookie"]
        # Named after the port: a proxy and a `prysmai ui` on one host do not log each other out.
        assert set_cookie.startswith(f"{COOKIE_NAME}_{proxy.server.port}=")
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        assert KEY not in set_cookie
        # What a browser sends under our "Referrer-Policy: no-referrer": Origin null, same-origin fetch.
        same = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
        assert client.post(f"{base}/ui/login", data={"key": KEY}, headers=same).status_code == 303
        client.cookies.update(r.cookies)
        assert client.get(f"{base}/traces").status_code == 200
        me = client.get(f"{base}/ui/api/me").json()
        assert me["key_id"] == key_id(KEY) and me["read_only"] is False
        # The second accepted key logs in as well, as its own key id.
        other = login(httpx.Client(), base, key=OTHER_KEY)
        assert other.status_code == 303 and COOKIE_NAME in other.headers["set-cookie"]
        r = client.post(f"{base}/ui/logout", headers={"Origin": base}, follow_redirects=False)
        assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]


def test_logout_ends_the_session_on_the_server(proxy: ProxyHandle) -> None:
    base = origin(proxy)
    name = cookie_name(proxy.server.port)
    with httpx.Client() as client:
        value = login(client, base).cookies[name]
        other = login(httpx.Client(), base).cookies[name]  # the same key, another browser
    with httpx.Client(cookies={name: value}) as client:
        assert client.get(f"{base}/ui/api/me").status_code == 200
        r = client.post(f"{base}/ui/logout", headers={"Origin": base}, follow_redirects=False)
        assert r.status_code == 303
    # The old cookie, replayed (a copy taken before logging out), is refused: the session ended.
    with httpx.Client(cookies={name: value}) as replay:
        assert replay.get(f"{base}/ui/api/me").status_code == 401
        assert replay.get(f"{base}/traces").status_code == 303
    with httpx.Client(cookies={name: other}) as client:  # other sessions go on
        assert client.get(f"{base}/ui/api/me").status_code == 200


def test_sessions_kept_are_bounded_oldest_ending_first() -> None:
    sessions = Sessions(lifetime=60, max_live=3)
    values = [sessions.issue(key_id(KEY), now=1000.0 + i) for i in range(5)]
    assert [sessions.check(v, now=1010.0) for v in values] == [None, None, *[key_id(KEY)] * 3]


# Raw cookie bytes as a browser or an attacker sends them (the server reads headers as latin-1).
@pytest.mark.parametrize("value", [b"\xc3\xa9t\xc3\xa9", b"1.key_\xc3\xa9.x", b"1.key_0.\xff.x", b"\xb2\xb3.a.b"])
def test_a_non_ascii_session_cookie_is_401_not_500(proxy: ProxyHandle, value: bytes) -> None:
    base = origin(proxy)
    raw = cookie_name(proxy.server.port).encode() + b"=" + value
    for path, status in (("/ui/api/me", 401), ("/traces", 303)):
        with httpx.Client() as client:
            r = client.get(f"{base}{path}", headers={b"Cookie": raw})
        assert r.status_code == status, r.text
        if status == 401:
            assert r.json()["error"]["code"] == "login_required"


def test_login_refuses_wrong_keys_foreign_origins_and_open_redirects(proxy: ProxyHandle) -> None:
    base = origin(proxy)
    with httpx.Client() as client:
        r = login(client, base, key="sk-prysm-not-this-one")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?error=1")
        assert "set-cookie" not in r.headers
        # A form on another site (or a request without Origin) cannot log anyone in or out.
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},
            {"Origin": "null"},
            {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {},
        ):
            r = client.post(f"{base}/ui/login", data={"key": KEY}, headers=headers, follow_redirects=False)
            assert r.status_code == 403 and "set-cookie" not in r.headers
            assert client.post(f"{base}/ui/logout", headers=headers).status_code == 403
        # "next" stays on this site.
        for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:alert(1)"):
            r = login(client, base, next=target)
            assert r.status_code == 303 and r.headers["location"] == "/", target
        r = login(client, base, next="/traces\r\nSet-Cookie: x=1")
        assert "\r" not in r.headers["location"] and "\n" not in r.headers["location"]
        assert r.headers.get_list("set-cookie") == [r.headers["set-cookie"]]
        # The key appears in nothing the proxy answers.
        assert KEY not in r.text and all(KEY not in v for v in r.headers.values())


def test_api_answers_json_and_the_proxy_api_is_unchanged(proxy: ProxyHandle) -> None:
    base = origin(proxy)
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=auth).status_code == 200
    proxy.traces()
    with httpx.Client() as client:
        client.cookies.update(login(client, base).cookies)
        doc = client.get(f"{base}/ui/api/traces", params={"since": "all"}).json()
        (row,) = doc["data"]
        assert row["model"] == "gpt-4o-mini" and "request_body" not in row
        full = client.get(f"{base}/ui/api/traces/{row['id']}")
        assert full.status_code == 200 and full.headers["content-type"] == "application/json"
        assert_security_headers(full)
        # The trace's JSON is the read API's: a body that was JSON is a JSON value.
        assert full.json()["response_body"]["choices"][0]["message"]["content"] == "Hello there!"
        assert client.get(f"{base}/ui/api/traces/ffffffffffffffffffffffffffffffff").status_code == 404
        overview = client.get(f"{base}/ui/api/overview", params={"since": "1h"}).json()
        assert overview["overview"]["requests"] == 1
        assert sum(p["requests"] for p in overview["timeseries"]) == 1
        assert [b["key"] for b in overview["breakdowns"]["model"]] == ["gpt-4o-mini"]
        bad = client.get(f"{base}/ui/api/traces", params={"since": "yesterday-ish"})
        assert bad.status_code == 400 and bad.json()["error"]["message"]
        assert client.get(f"{base}/ui/api/traces", params={"limit": "0"}).status_code == 400
        assert client.post(f"{base}/ui/api/traces", headers={"Origin": base}).status_code == 405
    # The proxy's own API and its key check are untouched by the dashboard.
    assert httpx.get(f"{proxy.base_url}/traces").status_code == 401
    assert httpx.get(f"{proxy.base_url}/traces", headers=auth).json()["data"][0]["id"] == row["id"]


def test_api_answers_a_trace_holding_an_unpaired_surrogate(proxy: ProxyHandle) -> None:
    """Any key holder can store one (valid JSON, ASCII on the wire); it must not break the pages."""
    auth = {"Authorization": f"Bearer {KEY}", "X-Prysm-Metadata": '{"lone":"\\ud800"}'}
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=auth)
    assert r.status_code == 200
    proxy.traces()
    base = origin(proxy)
    with httpx.Client() as client:
        client.cookies.update(login(client, base).cookies)
        listed = client.get(f"{base}/ui/api/traces", params={"since": "all"})
        assert listed.status_code == 200, listed.text
        assert listed.json()["data"][0]["metadata"] == {"lone": "\ud800"}
        full = client.get(f"{base}/ui/api/traces/{r.headers['x-prysm-trace-id']}")
        assert full.status_code == 200, full.text
        assert full.json()["metadata"] == {"lone": "\ud800"}  # the exact value, escaped on the wire


# -- prysmai ui --------------------------------------------------------------------------------------
def test_prysmai_ui_serves_an_existing_store_read_only(proxy: ProxyHandle, tmp_path: Any) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    for user in ("alice", "bob"):
        r = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers={**auth, "X-Prysm-User-Id": user})
        assert r.status_code == 200
    proxy.stop()
    db = str(proxy.db_path)
    before = os.stat(db).st_mtime_ns, sqlite3.connect(db).execute("SELECT count(*) FROM traces").fetchone()[0]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "ui", "--db", db, "--port", str(port), "--key", KEY],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/" in line and "read-only" in line and KEY not in line
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{base}/login")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prysmai ui did not start"
                time.sleep(0.05)
        with httpx.Client() as client:
            client.cookies.update(login(client, base).cookies)
            assert client.get(f"{base}/ui/api/me").json()["read_only"] is True
            users = client.get(f"{base}/ui/api/users", params={"since": "all"}).json()["data"]
            assert sorted(u["user_id"] for u in users) == ["alice", "bob"]
            # Nothing is proxied and nothing is written.
            r = client.post(f"{base}/api/v1/chat/completions", json=CHAT, headers=auth)
            assert r.status_code == 404 and "read-only" in r.json()["error"]["message"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM traces").fetchone()[0] == before[1]


def test_prysmai_ui_has_the_proxy_s_edge(proxy: ProxyHandle) -> None:
    """``prysmai ui`` behind the proxy's connection guard (a log-in whose body never comes: 408
    within the body timeout, not held for ever) and its session checks (a non-ASCII cookie: 401)."""
    httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    proxy.stop()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "ui", "--db", str(proxy.db_path), "--port", str(port), "--key", KEY],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and "read-only" in proc.stderr.readline()
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/login")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prysmai ui did not start"
                time.sleep(0.05)
        cookie = cookie_name(port).encode() + b"=1.key_\xc3\xa9.x"
        r = httpx.get(f"http://127.0.0.1:{port}/ui/api/me", headers={b"Cookie": cookie})
        assert r.status_code == 401
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /ui/login HTTP/1.1\r\nHost: x\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 1000\r\n\r\n"
            )
            start = time.monotonic()
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - start < 15  # 10 s and a sweep
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_prysmai_ui_needs_an_existing_store(tmp_path: Any) -> None:
    missing = str(tmp_path / "none.db")
    r = subprocess.run(
        [sys.executable, "-m", "prysmai._cli", "ui", "--db", missing, "--key", KEY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "no trace store" in r.stderr and not os.path.exists(missing)


# -- prysmai demo --serve --------------------------------------------------------------------------
def test_demo_serve_keeps_the_dashboard_up_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "demo", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        out = ""
        while "Dashboard:" not in out:
            line = proc.stdout.readline()
            assert line, f"demo --serve ended early:\n{out}"
            out += line
        m = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)/\s+\(log in with the demo's key: (sk-prysm-\S+)\)", out)
        assert m, out
        base, key = m.group(1), m.group(2)
        with httpx.Client() as client:
            client.cookies.update(login(client, base, key=key).cookies)
            overview = client.get(f"{base}/ui/api/overview").json()["overview"]
            assert overview["requests"] == 8 and overview["errors"] == 1
            # The proxy itself is still up too.
            r = client.post(f"{base}/api/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Captured 9 trace(s)" in rest


def test_expired_and_forged_sessions_are_refused(proxy: ProxyHandle) -> None:
    base = origin(proxy)
    sessions = proxy.app.web.sessions
    name = cookie_name(proxy.server.port)
    expired = sessions.issue(key_id(KEY), now=time.time() - sessions.lifetime - 1)
    forged = Sessions().issue(key_id(KEY))  # right shape, another secret
    for value in (expired, forged, KEY):
        with httpx.Client(cookies={name: value}) as client:
            assert client.get(f"{base}/ui/api/me").status_code == 401
            assert client.get(f"{base}/traces").status_code == 303
    with httpx.Client(cookies={name: sessions.issue(key_id(KEY))}) as client:
        assert client.get(f"{base}/ui/api/me").status_code == 200


def test_proxy_banner_names_the_dashboard(tmp_path: Any) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prysmai._cli",
            "proxy",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "t.db"),
            "--upstream",
            "demo",
            "--key",
            KEY,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        banner = ""
        while "dashboard at" not in banner:
            line = proc.stderr.readline()
            assert line, f"proxy exited early: {banner}"
            banner += line
        url = re.search(r"dashboard at (http://\S+/)", banner).group(1)  # type: ignore[union-attr]
        assert url == f"http://127.0.0.1:{port}/" and KEY not in banner
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(url)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_browser_tests_fail_in_ci_without_chromium(monkeypatch: Any) -> None:
    from .. import browser

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        browser.chromium_path()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browser.chromium_path()


def test_shipped_scripts_never_parse_strings_as_html_or_code() -> None:
    """A guard beside the browser tests: no HTML or code is ever built from strings."""
    from importlib import resources

    static = resources.files("prysmai._proxy.web").joinpath("static")
    scripts = [f for f in static.iterdir() if f.name.endswith(".js")]
    assert len(scripts) >= 8
    banned = re.compile(
        r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|"
        r"\beval\(|new Function|setTimeout\(\s*['\"`]"
    )
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        assert not banned.search(source), (script.name, banned.search(source))
    # No asset refers to another origin.
    for asset in static.iterdir():
        assert not re.search(
            r"https?://", asset.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")
        ), asset.name
