"""Issue 22, reloads: a SIGHUP or a change while the proxy starts is acted on, never fatal, never
missed; a credential file that blocks (a FIFO, a hung mount) cannot stop the event loop, and the
config in use stays. Real ``prysmai proxy`` processes (and one in-process proxy where the test
must make a read hang) in front of the loopback fake upstream."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from prysmai._proxy.config.settings import ProxyConfig
from prysmai._proxy.server.serve import BackgroundServer

from ..conftest import FakeUpstream
from .test_projects import Proc, auth, chat, sha

KEY = "sk-prysm-reload-test-key-0123456789ab"
NEW_KEY = "sk-prysm-added-while-starting-98765"
CRED = "sk-provider-credential-from-a-file-1"


def config(fake: FakeUpstream, *keys: str) -> str:
    listed = ", ".join(f'"{sha(k)}"' for k in keys)
    return f"""
[[projects]]
name = "p"
keys = [{listed}]
default_provider = "up"

  [[projects.providers]]
  name = "up"
  kind = "openai-compatible"
  base_url = "{fake.url}"
  api_key = {{ file = "cred.key" }}
"""


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}


@pytest.fixture
def setup(fake: FakeUpstream, tmp_path: Any) -> tuple[str, str]:
    (tmp_path / "cred.key").write_text(CRED + "\n")
    path = tmp_path / "prysm.toml"
    path.write_text(config(fake, KEY))
    return str(path), str(tmp_path / "traces.db")


def health(proc: Proc) -> int:
    return httpx.get(f"{proc.base}/health", timeout=3).status_code


@pytest.mark.parametrize("attempt", range(3))
def test_a_sighup_as_the_banner_appears_is_a_reload_not_a_stop(setup: tuple[str, str], attempt: int) -> None:
    path, db = setup
    proc = Proc(path, db, env())  # returns as the banner line is read
    try:
        proc.proc.send_signal(signal.SIGHUP)  # `systemctl reload` right after `start`
        proc.wait_for("config reloaded")  # acted on once the watch started: not lost, not fatal
        assert health(proc) == 200 and proc.proc.poll() is None
    finally:
        proc.stop()
    assert proc.proc.returncode == 0


def test_a_sighup_as_the_banner_appears_without_a_config_is_not_fatal(tmp_path: Any) -> None:
    proc = Proc(None, str(tmp_path / "t.db"), env(), "--upstream", "demo", "--key", KEY)
    try:
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("nothing to reload")
        assert health(proc) == 200
    finally:
        proc.stop()
    assert proc.proc.returncode == 0


def test_a_config_change_while_the_proxy_starts_is_not_missed(fake: FakeUpstream, setup: tuple[str, str]) -> None:
    path, db = setup
    proc = Proc(path, db, env())
    try:
        # Changed after the proxy read it, before its watch began (it is still starting).
        with open(path, "w") as fh:
            fh.write(config(fake, KEY, NEW_KEY))
        proc.wait_for("config reloaded", timeout=10)  # at the first check, a second later
        r = httpx.post(f"{proc.base}/chat/completions", json=chat("m"), headers=auth(NEW_KEY), timeout=10)
        assert r.status_code == 200
    finally:
        proc.stop()


def test_a_credential_file_that_is_a_fifo_is_refused_and_the_proxy_keeps_serving(
    fake: FakeUpstream, setup: tuple[str, str], tmp_path: Any
) -> None:
    path, db = setup
    proc = Proc(path, db, env())
    try:
        cred = tmp_path / "cred.key"
        cred.unlink()
        os.mkfifo(cred)  # nobody will ever write to it: reading it would block
        mark = len(proc.lines)
        proc.proc.send_signal(signal.SIGHUP)
        line = proc.wait_for("config reload refused", after=mark)
        assert "not a regular file" in line and "FIFO" in line and "cred.key" in line
        assert health(proc) == 200  # the event loop never waited on the FIFO
        # The config in use stays: the credential read at start-up still goes upstream.
        r = httpx.post(f"{proc.base}/chat/completions", json=chat("m"), headers=auth(KEY), timeout=10)
        assert r.status_code == 200 and fake.last().headers["authorization"] == f"Bearer {CRED}"
        # And the file change is noticed too, with the same outcome.
        mark = len(proc.lines)
        with open(path, "a") as fh:
            fh.write("\n# touched\n")
        assert "not a regular file" in proc.wait_for("config reload refused", after=mark)
        assert health(proc) == 200
    finally:
        log = proc.stop()
    assert proc.proc.returncode == 0 and CRED not in log


def test_a_config_read_that_hangs_times_out_and_the_proxy_keeps_serving(
    fake: FakeUpstream, setup: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A credential file on a hung network mount: the read never returns. (In-process: the test
    makes the read hang, which a real file system cannot be asked to do on cue.)"""
    path, db = setup
    server = BackgroundServer(ProxyConfig(keys=[], db_path=db, config_file=path, port=0)).start()
    release = threading.Event()
    try:
        watch = server.app._watch
        assert watch is not None
        load = watch._load

        def hung() -> Any:
            release.wait(30)
            assert load is not None
            return load()

        watch._load = hung
        watch._read_timeout = 0.5
        with caplog.at_level(logging.INFO, logger="prysmai.proxy"):
            with open(path, "a") as fh:
                fh.write("\n# touched\n")
            deadline = time.monotonic() + 10
            while "took more than 0.5 s" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                # Meanwhile every request is served, under the config in use.
                r = httpx.post(f"{server.base_url}/chat/completions", json=chat("m"), headers=auth(KEY), timeout=3)
                assert r.status_code == 200
                time.sleep(0.1)
            assert "config reload refused, still using the previous config" in caplog.text
        assert httpx.get(f"{server.base_url}/health", timeout=3).status_code == 200
    finally:
        release.set()
        server.stop()
