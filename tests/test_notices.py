"""What prysmai tells the application's log: where traffic goes, clients left alone, odd URLs,
and a failing Prysm hop named with its URL and cause -- once, never with a key."""

from __future__ import annotations

import logging

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx, loopback_http_client
from test_fallback import chat, dead_url

import prysmai

USER_KEY = "sk-user-openai-key"


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prysmai" and r.levelno == level]


def test_instrument_and_monitor_say_where_traffic_goes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="prysmai")
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url="http://127.0.0.1:9/api/v1", fallback_cooldown=12)
    prysmai.monitor(openai.OpenAI(api_key=USER_KEY), prysm_key=PRYSM_KEY, base_url="http://127.0.0.1:8/api/v1")
    first, second = messages(caplog, logging.DEBUG)
    assert "instrument()" in first and "https://api.openai.com/v1/" in first
    assert "http://127.0.0.1:9/api/v1" in first and "fallback on" in first and "12 s" in first
    assert "monitor()" in second and "http://127.0.0.1:8/api/v1" in second and "fallback off" in second
    assert PRYSM_KEY not in caplog.text and USER_KEY not in caplog.text


def test_a_client_left_alone_because_of_openai_base_url_is_reported_once(
    openai_server: RecordingServer,
    proxy_server: RecordingServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    client = openai.OpenAI(api_key=USER_KEY, max_retries=0, http_client=default_httpx.Client())
    if str(client.base_url) != openai_server.url + "/":
        pytest.skip("this openai release does not read OPENAI_BASE_URL (1.0.0)")
    assert chat(client) == "Hello from openai"
    assert (
        chat(openai.OpenAI(api_key=USER_KEY, max_retries=0, http_client=default_httpx.Client())) == "Hello from openai"
    )
    (warning,) = messages(caplog, logging.WARNING)
    assert "OPENAI_BASE_URL" in warning and openai_server.url in warning and "include_base_urls" in warning
    assert proxy_server.requests == []


def test_a_proxy_url_without_a_path_is_reported_at_construction(caplog: pytest.LogCaptureFixture) -> None:
    prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url="http://localhost:3000")
    (warning,) = messages(caplog, logging.WARNING)
    assert "'http://localhost:3000/api/v1'" in warning and "base_url" in warning
    caplog.clear()
    prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url="http://localhost:3000/api/v1")
    assert messages(caplog, logging.WARNING) == []


def test_a_failing_hop_is_logged_once_with_the_proxy_url_and_cause(caplog: pytest.LogCaptureFixture) -> None:
    url = dead_url()
    client = prysmai.monitor(openai.OpenAI(api_key=USER_KEY, max_retries=1), prysm_key=PRYSM_KEY, base_url=url)
    for _ in range(3):
        with pytest.raises(openai.APIConnectionError):
            chat(client)
    (warning,) = messages(caplog, logging.WARNING)
    assert url in warning and "ConnectError" in warning and "fallback is off" in warning
    assert PRYSM_KEY not in caplog.text and USER_KEY not in caplog.text


def test_the_proxy_coming_back_is_logged_once(
    openai_server: RecordingServer, proxy_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = prysmai.monitor(
        openai.OpenAI(api_key=USER_KEY, max_retries=0, http_client=loopback_http_client(openai_server)),
        prysm_key=PRYSM_KEY,
        base_url=proxy_server.url,
    )
    proxy_server.fail_next(503, times=2, x_prysm_origin="proxy")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            chat(client)
    assert chat(client) == "Hello from proxy"
    assert chat(client) == "Hello from proxy"
    failed, back = messages(caplog, logging.WARNING)
    assert "HTTP 503 from the proxy" in failed and "answers again" in back
    assert openai_server.requests == []
