"""Settings and bad input, for ``monitor()``, ``PrysmClient`` and ``instrument()`` alike.

Every mistake must surface when the entry point is called (never at the first request), leave
nothing patched behind, and never echo a key. Where a setting decides where requests go, the test
sends one through a "switchboard" http client: it keeps the URL the SDK chose (so the default
``https://prysmai.io/api/v1`` can be checked) and delivers the request to a loopback server.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx, prysm_headers

import prysmai
from prysmai import _context, _hooks, _instrument, _log

ENTRY_POINTS = ("monitor", "PrysmClient", "instrument")
USER_KEY = "sk-user-openai-key"
UPSTREAM_KEY = "sk-upstream-provider-secret-42"
OTHER_PRYSM_KEY = "sk-prysm-other-9876543210"
#: Never contacted: for settings that must be refused before any request.
PROXY_URL = "http://127.0.0.1:9/api/v1"
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Wire:
    """The two loopback peers and the URL of every request, as the SDK chose it."""

    proxy: RecordingServer | None
    openai: RecordingServer | None
    urls: list[str] = field(default_factory=list)

    def http_client(self) -> Any:
        """A real http client: ``prysmai.io`` goes to ``proxy``, ``api.openai.com`` to ``openai``."""
        ports = {
            host: server.server_port
            for host, server in (("prysmai.io", self.proxy), ("api.openai.com", self.openai))
            if server is not None
        }
        inner = default_httpx.HTTPTransport()
        urls = self.urls

        class Switchboard(default_httpx.BaseTransport):  # type: ignore[misc,name-defined]
            def handle_request(self, request: Any) -> Any:
                urls.append(str(request.url))
                port = ports.get(request.url.host)
                if port is not None:
                    request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
                return inner.handle_request(request)

            def close(self) -> None:
                inner.close()

        return default_httpx.Client(transport=Switchboard())


@pytest.fixture
def wire(proxy_server: RecordingServer, openai_server: RecordingServer) -> Wire:
    return Wire(proxy_server, openai_server)


@pytest.fixture
def offline() -> Wire:
    """For tests where nothing may be sent: no server at all (stopping one costs half a second)."""
    return Wire(None, None)


@pytest.fixture(params=ENTRY_POINTS)
def entry(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def user_client(wire: Wire) -> openai.OpenAI:
    """What an application has: a client for OpenAI's default API with its own key."""
    return openai.OpenAI(api_key=USER_KEY, http_client=wire.http_client(), max_retries=0)


def configure(entry: str, wire: Wire, **settings: Any) -> Callable[[], openai.OpenAI]:
    """Apply ``settings`` through ``entry``; this call is where every check must happen.

    Returns a factory of clients whose requests should now go through the proxy.
    """
    if entry == "monitor":
        monitored = prysmai.monitor(user_client(wire), **settings)
        return lambda: monitored
    if entry == "PrysmClient":
        prysm = prysmai.PrysmClient(**settings)
        return lambda: prysm.openai(http_client=wire.http_client(), max_retries=0)
    prysmai.instrument(**settings)
    return lambda: user_client(wire)


def send(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    return str(reply.choices[0].message.content)


@pytest.fixture
def nothing_patched() -> Iterator[None]:
    """Assert that the test left openai's classes, the import system and the flag as they were."""
    before = [cls.__dict__.get("_prepare_options") for cls in (openai.OpenAI, openai.AsyncOpenAI)]
    meta_path = list(sys.meta_path)
    yield
    assert not prysmai.is_instrumented()
    assert [cls.__dict__.get("_prepare_options") for cls in (openai.OpenAI, openai.AsyncOpenAI)] == before
    assert sys.meta_path == meta_path


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a key leaked into {text!r}"


# --- the key -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("nothing_patched")
def test_no_key_names_the_environment_variable(entry: str, offline: Wire) -> None:
    with pytest.raises(ValueError, match="PRYSM_API_KEY"):
        configure(entry, offline, base_url=PROXY_URL)


@pytest.mark.usefixtures("nothing_patched")
def test_empty_key_in_the_environment_counts_as_no_key(
    entry: str, offline: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRYSM_API_KEY", "")
    with pytest.raises(ValueError, match="PRYSM_API_KEY"):
        configure(entry, offline, base_url=PROXY_URL)


@pytest.mark.parametrize(
    "bad_key",
    ["sk-proj-user-openai-secret-123", "prysm-secret-777", "SK-PRYSM-uppercase-secret", " sk-prysm-leading-space"],
)
@pytest.mark.usefixtures("nothing_patched")
def test_key_without_prefix_is_refused_without_echoing_it(entry: str, offline: Wire, bad_key: str) -> None:
    with pytest.raises(ValueError, match="sk-prysm-") as caught:
        configure(entry, offline, prysm_key=bad_key, base_url=PROXY_URL)
    assert_no_secret(str(caught.value), bad_key, bad_key.strip())
    assert_no_secret(repr(caught.value), bad_key.strip())


@pytest.mark.usefixtures("nothing_patched")
def test_bad_key_from_the_environment_names_the_variable_not_the_value(
    entry: str, offline: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRYSM_API_KEY", "sk-proj-env-openai-secret")
    with pytest.raises(ValueError, match="PRYSM_API_KEY") as caught:
        configure(entry, offline, base_url=PROXY_URL)
    assert_no_secret(str(caught.value), "env-openai-secret")


@pytest.mark.parametrize(
    "bad_key",
    [
        "sk-prysm-",
        "sk-prysm-with space",
        "sk-prysm-secret\n",
        "sk-prysm-secret\r\nX-Injected: 1",
        "sk-prysm-\tsecret",
        "sk-prysm-secret\x00",
        "sk-prysm-secret\x7f",
        "sk-prysm-secret\u00a0",
    ],
    ids=["empty", "space", "lf", "crlf-injection", "tab", "nul", "del", "nbsp"],
)
@pytest.mark.usefixtures("nothing_patched")
def test_key_with_whitespace_or_control_characters_is_refused(entry: str, offline: Wire, bad_key: str) -> None:
    with pytest.raises(ValueError) as caught:
        configure(entry, offline, prysm_key=bad_key, base_url=PROXY_URL)
    if bad_key != "sk-prysm-":
        assert_no_secret(str(caught.value), "secret", "with space")


@pytest.mark.usefixtures("nothing_patched")
def test_key_that_is_not_a_string_is_a_type_error(entry: str, offline: Wire) -> None:
    with pytest.raises(TypeError):
        configure(entry, offline, prysm_key=PRYSM_KEY.encode(), base_url=PROXY_URL)


# --- where requests go ---------------------------------------------------------------------------


def test_settings_fall_back_to_the_environment(entry: str, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRYSM_API_KEY", PRYSM_KEY)
    monkeypatch.setenv("PRYSM_BASE_URL", wire.proxy.url)
    assert send(configure(entry, wire)()) == "Hello from proxy"
    assert wire.proxy.last.path == "/api/v1/chat/completions"
    assert wire.proxy.last.header("authorization") == f"Bearer {PRYSM_KEY}"
    assert wire.openai.requests == []


def test_default_base_url_is_prysm_cloud(entry: str, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRYSM_API_KEY", PRYSM_KEY)
    assert send(configure(entry, wire)()) == "Hello from proxy"
    assert wire.urls == ["https://prysmai.io/api/v1/chat/completions"]
    assert wire.proxy.last.header("authorization") == f"Bearer {PRYSM_KEY}"


def test_empty_base_url_in_the_environment_means_the_default(
    entry: str, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRYSM_BASE_URL", "")
    send(configure(entry, wire, prysm_key=PRYSM_KEY)())
    assert wire.urls == ["https://prysmai.io/api/v1/chat/completions"]


def test_explicit_arguments_win_over_the_environment(entry: str, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRYSM_API_KEY", OTHER_PRYSM_KEY)
    monkeypatch.setenv("PRYSM_BASE_URL", "https://prysm.example.invalid/api/v1")
    send(configure(entry, wire, prysm_key=PRYSM_KEY, base_url=wire.proxy.url)())
    assert wire.urls == [wire.proxy.url + "/chat/completions"]
    assert wire.proxy.last.header("authorization") == f"Bearer {PRYSM_KEY}"


def test_explicit_arguments_win_over_malformed_environment(
    entry: str, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRYSM_API_KEY", "not-a-prysm-key")
    monkeypatch.setenv("PRYSM_BASE_URL", "not a url")
    send(configure(entry, wire, prysm_key=PRYSM_KEY, base_url=wire.proxy.url)())
    assert wire.proxy.last.header("authorization") == f"Bearer {PRYSM_KEY}"


def test_trailing_slash_on_base_url_is_harmless(entry: str, wire: Wire) -> None:
    send(configure(entry, wire, prysm_key=PRYSM_KEY, base_url=wire.proxy.url + "/")())
    assert wire.proxy.last.path == "/api/v1/chat/completions"


BAD_URLS = [
    "prysmai.io/api/v1",
    "ftp://prysmai.io/api/v1",
    "ws://prysmai.io/api/v1",
    "file:///tmp/prysm",
    "/api/v1",
    "",
    "http://",
    "https:///api/v1",
    "http://:3000/api/v1",
    "localhost:3000/api/v1",
    "https://prysmai.io/api/v1?tenant=1",
    "https://prysmai.io/api/v1#frag",
    "https://prysm ai.io/api/v1",
    "https://prysmai.io/api/v1\r\nX-Injected: 1",
    # Malformed authorities: accepted, they would fail every request later instead.
    "http://127.0.0.1:abc/api/v1",
    "http://127.0.0.1:99999/api/v1",
    "http://[::1/api/v1",
]


@pytest.mark.parametrize("bad_url", BAD_URLS)
@pytest.mark.usefixtures("nothing_patched")
def test_base_url_must_be_an_absolute_http_url(entry: str, offline: Wire, bad_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=bad_url)


@pytest.mark.usefixtures("nothing_patched")
def test_key_given_as_base_url_by_mistake_is_not_echoed(entry: str, offline: Wire) -> None:
    # Swapped arguments (or PRYSM_BASE_URL holding the key) must not put the key in a traceback.
    with pytest.raises(ValueError, match="base_url") as caught:
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=PRYSM_KEY)
    assert_no_secret(str(caught.value), PRYSM_KEY, PRYSM_KEY.removeprefix("sk-prysm-"))


@pytest.mark.usefixtures("nothing_patched")
def test_bad_base_url_from_the_environment_names_the_variable(
    entry: str, offline: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRYSM_BASE_URL", "prysmai.io/api/v1")
    with pytest.raises(ValueError, match="PRYSM_BASE_URL"):
        configure(entry, offline, prysm_key=PRYSM_KEY)


@pytest.mark.usefixtures("nothing_patched")
def test_base_url_that_is_not_a_string_is_a_type_error(entry: str, offline: Wire) -> None:
    with pytest.raises(TypeError):
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=3000)


# --- plain http ----------------------------------------------------------------------------------

INSECURE_URLS = [
    "http://prysm.example.com/api/v1",
    "HTTP://PRYSM.EXAMPLE.COM/api/v1",
    "http://10.0.0.7:3000/api/v1",
    "http://[2001:db8::1]:3000/api/v1",
    "http://localhost.example.com/api/v1",
    "http://127.0.0.1@prysm.example.com/api/v1",
]
LOCAL_OR_TLS_URLS = [
    "http://127.0.0.1:3000/api/v1",
    "http://127.9.8.7/api/v1",
    "http://localhost:3000/api/v1",
    "http://LOCALHOST/api/v1",
    "http://[::1]:3000/api/v1",
    "https://prysm.example.com/api/v1",
    "https://10.0.0.7/api/v1",
]


@pytest.mark.parametrize("url", INSECURE_URLS)
def test_plain_http_to_another_host_warns(entry: str, offline: Wire, url: str) -> None:
    with pytest.warns(prysmai.InsecureBaseURLWarning) as record:
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=url)
    warning = next(w for w in record if issubclass(w.category, prysmai.InsecureBaseURLWarning))
    assert_no_secret(str(warning.message), PRYSM_KEY)
    # Points at the caller's line, not at prysmai's internals.
    assert warning.filename == __file__


def test_plain_http_from_the_environment_warns(entry: str, offline: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRYSM_BASE_URL", "http://prysm.example.com/api/v1")
    with pytest.warns(prysmai.InsecureBaseURLWarning, match="PRYSM_BASE_URL"):
        configure(entry, offline, prysm_key=PRYSM_KEY)


def test_plain_http_to_a_dns_name_starting_with_127_warns(entry: str, offline: Wire) -> None:
    # "127.attacker.example" is a host name, not a loopback address: the key would leave the machine.
    with pytest.warns(prysmai.InsecureBaseURLWarning):
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url="http://127.attacker.example/api/v1")


@pytest.mark.parametrize("url", LOCAL_OR_TLS_URLS)
def test_loopback_or_https_does_not_warn(entry: str, offline: Wire, url: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=url)
    assert [w for w in record if issubclass(w.category, prysmai.InsecureBaseURLWarning)] == []


# --- timeout and upstream key --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (-0.5, ValueError),
        (float("nan"), ValueError),
        ("30", TypeError),
        (True, TypeError),
        ([30], TypeError),
    ],
    ids=["zero", "negative", "negative-float", "nan", "string", "bool", "list"],
)
@pytest.mark.usefixtures("nothing_patched")
def test_bad_timeout_is_refused(entry: str, offline: Wire, timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=PROXY_URL, timeout=timeout)


@pytest.mark.parametrize("timeout", [7.5, 3, openai.Timeout(4.0)], ids=["float", "int", "Timeout"])
def test_good_timeout_is_used(entry: str, wire: Wire, timeout: Any) -> None:
    client = configure(entry, wire, prysm_key=PRYSM_KEY, base_url=wire.proxy.url, timeout=timeout)()
    assert send(client) == "Hello from proxy"
    if entry != "instrument":  # instrument() applies it per request, to calls that set none
        assert client.timeout == (float(timeout) if isinstance(timeout, (int, float)) else timeout)


def test_upstream_key_is_sent_to_the_proxy(entry: str, wire: Wire) -> None:
    send(configure(entry, wire, prysm_key=PRYSM_KEY, base_url=wire.proxy.url, upstream_api_key=UPSTREAM_KEY)())
    assert prysm_headers(wire.proxy.last)["x-prysm-upstream-key"] == UPSTREAM_KEY


@pytest.mark.parametrize(
    ("upstream", "error"),
    [
        ("", ValueError),
        ("sk-upstream secret", ValueError),
        ("sk-upstream-secret\n", ValueError),
        ("sk-upstream-secret\r\nX-Injected: 1", ValueError),
        (42, TypeError),
    ],
    ids=["empty", "space", "lf", "crlf-injection", "int"],
)
@pytest.mark.usefixtures("nothing_patched")
def test_bad_upstream_key_is_refused_without_echoing_it(
    entry: str, offline: Wire, upstream: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="upstream_api_key") as caught:
        configure(entry, offline, prysm_key=PRYSM_KEY, base_url=PROXY_URL, upstream_api_key=upstream)
    assert_no_secret(str(caught.value), "upstream-secret", "upstream secret")


def test_instrument_include_base_urls_is_validated() -> None:
    with pytest.raises(TypeError):
        prysmai.instrument(PRYSM_KEY, PROXY_URL, include_base_urls="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError):
        prysmai.instrument(PRYSM_KEY, PROXY_URL, include_base_urls=["gateway.internal/v1"])
    assert not prysmai.is_instrumented()


# --- errors leave nothing behind -----------------------------------------------------------------


def test_monitor_error_leaves_the_original_client_alone(wire: Wire) -> None:
    original = user_client(wire)
    with pytest.raises(ValueError):
        prysmai.monitor(original, prysm_key="sk-nope", base_url=wire.proxy.url)
    assert original.api_key == USER_KEY
    assert str(original.base_url) == "https://api.openai.com/v1/"
    send(original)
    assert wire.openai.last.header("authorization") == f"Bearer {USER_KEY}"
    assert prysm_headers(wire.openai.last) == {}
    assert wire.proxy.requests == []


def test_failed_instrument_redirects_nothing(wire: Wire) -> None:
    with pytest.raises(ValueError):
        prysmai.instrument(prysm_key="sk-nope", base_url=wire.proxy.url)
    send(user_client(wire))
    assert wire.proxy.requests == []
    assert wire.openai.last.header("authorization") == f"Bearer {USER_KEY}"


# --- keys never shown ----------------------------------------------------------------------------


def test_prysm_client_repr_masks_keys() -> None:
    prysm = prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url=PROXY_URL, upstream_api_key=UPSTREAM_KEY)
    text = repr(prysm)
    assert PROXY_URL in text
    assert_no_secret(text, PRYSM_KEY, UPSTREAM_KEY, PRYSM_KEY.removeprefix("sk-prysm-"))


def test_route_repr_masks_keys(entry: str, offline: Wire) -> None:
    client = configure(entry, offline, prysm_key=PRYSM_KEY, base_url=PROXY_URL, upstream_api_key=UPSTREAM_KEY)()
    route = _instrument.current if entry == "instrument" else client.__dict__[_hooks.MONITOR_ATTR]
    shown = [repr(route), repr(client)]
    for text in shown:
        assert_no_secret(text, PRYSM_KEY, UPSTREAM_KEY, PRYSM_KEY.removeprefix("sk-prysm-"))


def test_internal_error_is_logged_once_without_keys_and_the_request_proceeds(
    entry: str, wire: Wire, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Any:
        raise RuntimeError("injected prysmai failure")

    monkeypatch.setattr(_log, "_seen", set())
    # _hooks binds the name at import; patch both so the failure hits whichever the hooks read.
    monkeypatch.setattr(_context, "current_headers", broken)
    monkeypatch.setattr(_hooks, "current_headers", broken)
    caplog.set_level(logging.DEBUG, logger="prysmai")
    prysmai.prysm_context.set(user_id="user-1")
    make = configure(entry, wire, prysm_key=PRYSM_KEY, base_url=wire.proxy.url, upstream_api_key=UPSTREAM_KEY)

    replies = [send(make()), send(make())]

    # (the DEBUG line saying where traffic goes is not a problem report)
    records = [r for r in caplog.records if r.name.startswith("prysmai") and r.levelno > logging.DEBUG]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is not None and "injected prysmai failure" in str(records[0].exc_info[1])
    assert_no_secret(caplog.text, PRYSM_KEY, UPSTREAM_KEY, USER_KEY)
    everything = wire.proxy.requests + wire.openai.requests
    assert len(everything) == 2
    for recorded in everything:
        assert "x-prysm-user-id" not in recorded.headers
    if entry == "instrument":
        # Redirecting failed, so the request went where the application sent it, with its own key:
        # never a Prysm key to OpenAI, never the user's OpenAI key to the proxy.
        assert replies == ["Hello from openai"] * 2
        assert [r.header("authorization") for r in wire.openai.requests] == [f"Bearer {USER_KEY}"] * 2
        assert "x-prysm-upstream-key" not in wire.openai.last.headers
    else:
        assert replies == ["Hello from proxy"] * 2
        assert [r.header("authorization") for r in wire.proxy.requests] == [f"Bearer {PRYSM_KEY}"] * 2


# --- monitor() takes OpenAI clients only ---------------------------------------------------------


def azure_sync() -> Any:
    return openai.AzureOpenAI(
        api_key="azure-key-secret", api_version="2024-06-01", azure_endpoint="https://example-resource.openai.azure.com"
    )


def azure_async() -> Any:
    return openai.AsyncAzureOpenAI(
        api_key="azure-key-secret", api_version="2024-06-01", azure_endpoint="https://example-resource.openai.azure.com"
    )


@pytest.mark.parametrize("make", [azure_sync, azure_async], ids=["AzureOpenAI", "AsyncAzureOpenAI"])
def test_monitor_refuses_azure_clients_and_says_what_to_do(make: Callable[[], Any]) -> None:
    client = make()
    with pytest.raises(TypeError, match="Azure") as caught:
        prysmai.monitor(client, prysm_key=PRYSM_KEY, base_url=PROXY_URL)
    assert "openai.OpenAI" in str(caught.value)
    assert_no_secret(str(caught.value), PRYSM_KEY, "azure-key-secret")
    assert str(client.base_url).startswith("https://example-resource.openai.azure.com")


@pytest.mark.parametrize(
    "make",
    [
        lambda: "sk-prysm-not-a-client",
        lambda: None,
        lambda: default_httpx.Client(),
        lambda: openai.OpenAI,
        lambda: {"api_key": USER_KEY},
    ],
    ids=["str", "None", "http-client", "class-not-instance", "dict"],
)
def test_monitor_refuses_things_that_are_not_openai_clients(make: Callable[[], Any]) -> None:
    with pytest.raises(TypeError) as caught:
        prysmai.monitor(make(), prysm_key=PRYSM_KEY, base_url=PROXY_URL)
    message = str(caught.value)
    assert "openai.OpenAI" in message
    assert "PrysmClient" in message
    assert_no_secret(message, PRYSM_KEY)


@pytest.mark.parametrize("method", ["openai", "async_openai"])
@pytest.mark.parametrize("reserved", ["api_key", "base_url"])
def test_prysm_client_refuses_settings_it_owns(method: str, reserved: str) -> None:
    prysm = prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url=PROXY_URL)
    value = "sk-proj-should-not-be-echoed" if reserved == "api_key" else "https://api.openai.com/v1"
    with pytest.raises(TypeError, match=reserved) as caught:
        getattr(prysm, method)(**{reserved: value})
    assert "PrysmClient(" in str(caught.value)
    assert_no_secret(str(caught.value), "should-not-be-echoed", PRYSM_KEY)


@pytest.mark.parametrize("method", ["openai", "async_openai"])
def test_prysm_client_passes_other_settings_to_openai(method: str) -> None:
    prysm = prysmai.PrysmClient(prysm_key=PRYSM_KEY, base_url=PROXY_URL)
    client = getattr(prysm, method)(max_retries=7, organization="org-1")
    assert type(client) is (openai.OpenAI if method == "openai" else openai.AsyncOpenAI)
    assert (client.max_retries, client.organization, client.api_key) == (7, "org-1", PRYSM_KEY)
    assert str(client.base_url) == PROXY_URL + "/"
