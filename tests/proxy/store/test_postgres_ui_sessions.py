"""Dashboard log-ins across the processes of one PostgreSQL database, the rest of issue 23:
``prysmai ui --db postgresql://…`` shares the proxies' sessions (a log-in on either is valid on
the other, a log-out ends it on both), and a signing secret from the config file lets replicas
agree without the database (across a restart too) and is never printed."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx

from ..conftest import PRYSMAI, FakeUpstream, Proxy, cli_env
from ..postgres import PostgresServer
from .test_postgres_replicas import KEY, config, login, me, wait_for

SECRET = "config-session-secret-7d1c9e2b4a6f8035-of-the-test"


class Ui:
    """``prysmai ui`` in a subprocess; ``base`` mimics a proxy's (``…/api/v1``) for the helpers."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PRYSMAI, "ui", "--port", "0", *args], stderr=subprocess.PIPE, text=True, env=cli_env()
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            assert line, "prysmai ui exited early:\n" + "".join(self.lines)
            self.lines.append(line)
            found = re.search(r"dashboard at (http://\S+)/ ", line)
            if found:
                self.base = found.group(1) + "/api/v1"
                break
        deadline = time.monotonic() + 20
        while True:  # the banner comes before the server listens
            try:
                httpx.get(self.base[: -len("/api/v1")] + "/login", timeout=2)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prysmai ui did not answer"
                time.sleep(0.1)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, rest = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, rest = self.proc.communicate()
        return "".join(self.lines) + (rest or "")


def logout(base: str, cookie: tuple[str, str]) -> None:
    origin = base[: -len("/api/v1")]
    out = httpx.post(f"{origin}/ui/logout", headers={"Origin": origin, "Cookie": f"{cookie[0]}={cookie[1]}"})
    assert out.status_code == 303


def test_prysmai_ui_on_postgres_shares_the_log_ins_of_the_proxies(
    pg_url: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "prysm.toml"
    path.write_text(config(fake))
    proxy = Proxy("--config", str(path), "--db", pg_url, "--outbox", str(tmp_path / "a.db")).start()
    ui = Ui("--db", pg_url, "--config", str(path))
    try:
        on_proxy = login(proxy.base)
        assert me(ui.base, on_proxy) == 200  # made on the proxy, valid on prysmai ui
        on_ui = login(ui.base)
        assert on_ui[0] == on_proxy[0]  # one cookie name: the browser sends it to both
        assert me(proxy.base, on_ui) == 200  # and back
        time.sleep(2)  # past the grace: each knows the other's session
        assert me(ui.base, on_proxy) == 200 and me(proxy.base, on_ui) == 200
        logout(ui.base, on_ui)  # a log-out on prysmai ui ends it on the proxy ...
        assert me(ui.base, on_ui) == 401
        wait_for(lambda: me(proxy.base, on_ui) == 401, 3, "logged out on prysmai ui, still in on the proxy")
        logout(proxy.base, on_proxy)  # ... and one on the proxy ends it on prysmai ui
        wait_for(lambda: me(ui.base, on_proxy) == 401, 3, "logged out on the proxy, still in on prysmai ui")
    finally:
        log = ui.stop()
        proxy.stop()
    assert "postgres:***@" in log and "pg-test-secret" not in log


def test_a_session_secret_from_the_config_file_holds_without_the_database(fake: FakeUpstream, tmp_path: Path) -> None:
    server = PostgresServer().start()
    try:
        url = server.database()
        server.stop()  # the replicas start, and log people in, with the database down
        path = tmp_path / "prysm.toml"
        path.write_text(config(fake) + '\n[dashboard]\nsession_secret = { env = "PRYSM_TEST_SESSION_SECRET" }\n')
        env = {"PRYSM_TEST_SESSION_SECRET": SECRET}

        def replica(name: str) -> Proxy:
            return Proxy("--config", str(path), "--db", url, "--outbox", str(tmp_path / f"{name}.db"), **env).start()

        a, b = replica("a"), replica("b")
        try:
            kept, ended = login(a.base), login(a.base)
            time.sleep(6)  # past the grace of a session not heard of: valid on B on its signature
            assert me(b.base, kept) == 200 and me(b.base, ended) == 200
            logout(a.base, ended)
            assert me(a.base, ended) == 401  # at once on the replica that ended it
            b.stop()
            b = replica("b")  # a restart keeps the log-ins: the secret is the file's
            assert me(b.base, kept) == 200
            server.start()  # the database back: the log-out made meanwhile reaches B
            wait_for(lambda: me(b.base, ended) == 401, 15, "a log-out made while the database was down was not shared")
            assert me(b.base, kept) == 200 and me(a.base, kept) == 200
            health = httpx.get(f"{a.base}/health", headers={"Authorization": f"Bearer {KEY}"}).text
        finally:
            logs = a.stop() + b.stop()
        assert SECRET not in logs and SECRET not in health  # never printed
    finally:
        server.close()
