"""Make the dashboard's screenshots in this folder from the demo, as a user sees them.

Runs ``prysmai demo --serve`` (the offline model, a fresh store), adds some mixed traffic through
its proxy (several models, users and sessions, an embedding, a Responses call, an error and a
cancelled stream), logs in to the dashboard in Debian's chromium and saves each page at 1280x800
(and the overview on a phone-sized screen), after scoring some of them as a reviewer would:

    python docs/screenshots/make.py                 # into docs/screenshots/
    python docs/screenshots/make.py --out /tmp/shots

Needs the proxy extra, Playwright for Python and the ``chromium`` package (``apt-get install
chromium``). ``tests/proxy/web/test_screenshots.py`` runs it, so it keeps working as the pages change.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: Each screenshot: file name, path, the element to wait for.
PAGES = [
    ("overview", "/?since=24h", "#cards"),
    ("traces", "/traces?since=24h", "#traces-table"),
    ("sessions", "/sessions?since=24h", "#sessions-table"),
    ("users", "/users?since=24h", "#users-table"),
]


def serve_demo(db: str) -> tuple[subprocess.Popen[str], str, str]:
    """``prysmai demo --serve`` on a free port: (process, dashboard URL, key)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prysmai._cli", "demo", "--serve", "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = ""
    deadline = time.monotonic() + 120
    while "Dashboard:" not in out:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"prysmai demo --serve did not start:\n{out}")
        out += line
    m = re.search(r"Dashboard: (http://\S+?)/\s+\(log in with the demo's key: (sk-prysm-\S+)\)", out)
    if m is None:
        proc.kill()
        raise SystemExit(f"no dashboard URL in the demo's output:\n{out}")
    return proc, m.group(1), m.group(2)


def post(url: str, key: str, endpoint: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"{url}/api/v1/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def traffic(url: str, key: str) -> None:
    """Mixed calls of a small team: models, users and their sessions, other endpoints, failures."""
    people = [("alice", "search", "gpt-4o-mini"), ("bob", "summarise", "gpt-4o"), ("chen", "support", "gpt-4.1-mini")]
    for turn in range(6):
        for user, feature, model in people:
            tags = {
                "X-Prysm-User-Id": user,
                "X-Prysm-Session-Id": f"{user}-{feature}-{turn // 3}",
                "X-Prysm-Metadata": json.dumps({"feature": feature, "turn": turn}),
            }
            question = f"{feature.capitalize()} request {turn} from {user}"
            post(
                url,
                key,
                "chat/completions",
                {"model": model, "messages": [{"role": "user", "content": question}]},
                tags,
            )
    post(url, key, "embeddings", {"model": "text-embedding-3-small", "input": "a document to embed"})
    post(url, key, "responses", {"model": "gpt-4o-mini", "input": "One line on tracing"})
    post(url, key, "chat/completions", {"model": "gpt-4o", "messages": []})  # refused: an error trace
    # A client that leaves a stream before its end: a cancelled trace.
    host, port = url.split("//", 1)[1].split(":")
    import socket

    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Tell a long story"}]}
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /api/v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        sock.recv(1024)  # the head and the first events; then leave


def review(url: str, key: str) -> None:
    """A reviewer's and an evaluation's scores on some of the traces: a quality number and thumbs
    (shown on the traces, sessions and users lists and a user's page)."""
    request = urllib.request.Request(
        f"{url}/api/v1/traces?since=24h&limit=100&endpoint=chat/completions",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        traces = json.loads(response.read())["data"]
    for i, trace in enumerate(t for t in traces if t["status"] == "success"):
        if i % 2 == 0:
            post(url, key, f"traces/{trace['id']}/scores", {"name": "quality", "value": [0.9, 0.6, 0.8, 1.0][i % 4]})
        if i % 3 == 0:
            post(url, key, f"traces/{trace['id']}/scores", {"name": "thumbs", "value": i % 9 != 0})


def shoot(url: str, key: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("make.py needs Debian's chromium (apt-get install chromium)")
    saved: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport=DESKTOP)
            page = context.new_page()

            def save(name: str, target: Any = page) -> None:
                path = out / f"{name}.png"
                target.screenshot(path=str(path), full_page=False)
                saved.append(path)

            page.goto(url + "/login")
            page.wait_for_selector("#key")
            save("login")
            page.fill("#key", key)
            page.click("form#login-form button[type=submit]")
            page.wait_for_selector("body[data-ready='1']", state="attached")
            for name, path, ready in PAGES:
                page.goto(url + path)
                page.wait_for_selector("body[data-ready='1']", state="attached")
                page.wait_for_selector(ready)
                save(name)
            # The overview's charts split by model (the counts first, latency second).
            page.goto(url + "/?since=24h&split=model&refresh=600")
            page.wait_for_selector("[data-chart=split-latency]")
            page.locator("#split").scroll_into_view_if_needed()
            save("overview-split")
            # A trace: the demo's tool call, as a conversation; then its session's timeline.
            traces = page.request.get(url + "/ui/api/traces", params={"since": "24h", "user": "alice", "limit": "100"})
            tool = next(
                t["id"]
                for t in traces.json()["data"]
                if t["session_id"] == "session-a1"
                and "tool_calls"
                in json.dumps(page.request.get(url + "/ui/api/traces/" + t["id"]).json()["response_body"])
            )
            page.goto(f"{url}/traces/{tool}")
            page.wait_for_selector("#timing")
            save("trace")
            page.goto(url + "/sessions/session-a1")
            page.wait_for_selector("#timeline")
            save("session")
            phone = browser.new_context(viewport=PHONE, storage_state=context.storage_state()).new_page()
            phone.goto(url + "/?since=24h")
            phone.wait_for_selector("#cards")
            save("phone-overview", phone)
        finally:
            browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="where the PNG files go (default: this folder)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="prysmai-shots-")
    proc, url, key = serve_demo(str(Path(work) / "demo.db"))
    try:
        traffic(url, key)
        review(url, key)
        for path in shoot(url, key, out):
            print(path)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
