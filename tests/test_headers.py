"""What a routed request's headers hold, whatever case and place the user spelt theirs in.

The http client below records every header line as sent (duplicates kept: openai 1.x/2.x merge
header dicts case-sensitively, so ``authorization`` and ``Authorization`` can both go out), and
delivers requests for api.openai.com to the loopback ``openai_server``.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx

import prysmai
from prysmai import prysm_context

USER_KEY = "sk-user-own-openai-key-123"
UPSTREAM_KEY = "sk-upstream-provider-key-456"
MESSAGES = [{"role": "user", "content": "hi"}]


class Wire:
    def __init__(self, openai_server: RecordingServer) -> None:
        self.sent: list[list[tuple[str, str]]] = []
        self.port = openai_server.server_port

    def http_client(self) -> Any:
        inner = default_httpx.HTTPTransport()
        wire = self

        class Capture(default_httpx.BaseTransport):  # type: ignore[misc,name-defined]
            def handle_request(self, request: Any) -> Any:
                wire.sent.append([(k.lower(), v) for k, v in request.headers.multi_items()])
                if request.url.host == "api.openai.com":
                    request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=wire.port)
                return inner.handle_request(request)

            def close(self) -> None:
                inner.close()

        return default_httpx.Client(transport=Capture())

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case) in the last request."""
        return [v for k, v in self.sent[-1] if k == name.lower()]

    def assert_no_user_key(self) -> None:
        for headers in self.sent:
            assert not any(USER_KEY in value for _, value in headers), headers


@pytest.fixture
def wire(openai_server: RecordingServer) -> Wire:
    return Wire(openai_server)


ENTRIES = pytest.mark.parametrize("entry", ["monitor", "PrysmClient", "instrument"])


def routed_client(entry: str, wire: Wire, proxy: RecordingServer, **client_kwargs: Any) -> openai.OpenAI:
    """A client whose requests go to ``proxy``, built from the user's settings through ``entry``."""
    settings: dict[str, Any] = {"prysm_key": PRYSM_KEY, "base_url": proxy.url}
    upstream = client_kwargs.pop("upstream_api_key", None)
    if upstream is not None:
        settings["upstream_api_key"] = upstream
    kwargs = {"http_client": wire.http_client(), "max_retries": 0, **client_kwargs}
    if entry == "monitor":
        return prysmai.monitor(openai.OpenAI(api_key=USER_KEY, **kwargs), **settings)
    if entry == "PrysmClient":
        return prysmai.PrysmClient(**settings).openai(**kwargs)
    prysmai.instrument(**settings)
    return openai.OpenAI(api_key=USER_KEY, **kwargs)


def send(client: openai.OpenAI, **kwargs: Any) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)  # type: ignore[arg-type]


@ENTRIES
@pytest.mark.parametrize("name", ["authorization", "Authorization", "AUTHORIZATION"])
def test_users_default_authorization_never_reaches_the_proxy(
    entry: str, name: str, wire: Wire, proxy_server: RecordingServer
) -> None:
    client = routed_client(entry, wire, proxy_server, default_headers={name: f"Bearer {USER_KEY}"})
    send(client)
    assert proxy_server.last.path == "/api/v1/chat/completions"
    assert wire.values("authorization") == [f"Bearer {PRYSM_KEY}"]
    wire.assert_no_user_key()


@ENTRIES
@pytest.mark.parametrize("name", ["authorization", "Authorization"])
def test_users_per_call_authorization_never_reaches_the_proxy(
    entry: str, name: str, wire: Wire, proxy_server: RecordingServer
) -> None:
    client = routed_client(entry, wire, proxy_server)
    send(client, extra_headers={name: f"Bearer {USER_KEY}"})
    assert wire.values("authorization") == [f"Bearer {PRYSM_KEY}"]
    wire.assert_no_user_key()


@ENTRIES
def test_the_provider_key_goes_to_the_proxy_only_through_upstream_api_key(
    entry: str, wire: Wire, proxy_server: RecordingServer
) -> None:
    client = routed_client(
        entry, wire, proxy_server, upstream_api_key=UPSTREAM_KEY, default_headers={"authorization": "Bearer x"}
    )
    send(client, extra_headers={"Authorization": f"Bearer {USER_KEY}"})
    assert wire.values("authorization") == [f"Bearer {PRYSM_KEY}"]
    assert wire.values("x-prysm-upstream-key") == [UPSTREAM_KEY]
    wire.assert_no_user_key()


@ENTRIES
@pytest.mark.parametrize("name", ["x-prysm-user-id", "X-PRYSM-USER-ID", "X-Prysm-User-Id"])
def test_default_prysm_header_in_any_case_is_sent_once(
    entry: str, name: str, wire: Wire, proxy_server: RecordingServer
) -> None:
    client = routed_client(entry, wire, proxy_server, default_headers={name: "from-defaults"})
    send(client)
    assert wire.values("x-prysm-user-id") == ["from-defaults"]
    prysm_context.set(user_id="from-context")  # the context wins over the client's defaults
    send(client)
    assert wire.values("x-prysm-user-id") == ["from-context"]
    with prysm_context(user_id="scoped"):
        send(client)
    assert wire.values("x-prysm-user-id") == ["scoped"]


@ENTRIES
def test_per_call_header_wins_over_context_and_defaults_in_any_case(
    entry: str, wire: Wire, proxy_server: RecordingServer
) -> None:
    client = routed_client(entry, wire, proxy_server, default_headers={"X-Prysm-Session-Id": "from-defaults"})
    prysm_context.set(session_id="from-context", user_id="u")
    extra = {"x-prysm-session-id": "per-call"}
    send(client, extra_headers=extra)
    assert wire.values("x-prysm-session-id") == ["per-call"]
    assert wire.values("x-prysm-user-id") == ["u"]
    assert extra == {"x-prysm-session-id": "per-call"}  # the caller's dict is not modified


@ENTRIES
def test_unrelated_default_headers_are_kept_once(entry: str, wire: Wire, proxy_server: RecordingServer) -> None:
    client = routed_client(entry, wire, proxy_server, default_headers={"x-team": "search", "X-Trace": "t1"})
    prysm_context.set(user_id="u")
    send(client, extra_headers={"x-trace": "t2"})
    assert wire.values("x-team") == ["search"]
    assert wire.values("x-trace") == ["t2"]  # the call's value, once, as openai documents


def test_clients_left_alone_by_instrument_keep_their_own_authorization(
    wire: Wire, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    client = openai.OpenAI(
        api_key=USER_KEY,
        base_url=openai_server.url,  # another base URL: not redirected, not touched
        http_client=wire.http_client(),
        max_retries=0,
        default_headers={"authorization": f"Bearer {USER_KEY}"},
    )
    send(client)
    assert proxy_server.requests == []
    assert all(value == f"Bearer {USER_KEY}" for value in wire.values("authorization"))
