"""Another instrumentation wrapped ``_prepare_options`` before prysmai, then removes its wrapper.

Two ways tools do it, both of which take prysmai's wrapper (on top of theirs) off with theirs:

* ``restore``: put back what the class held when the tool wrapped (what most ``uninstrument()``
  implementations, OpenTelemetry's included, keep and restore);
* ``unwrap-top``: OpenTelemetry's ``utils.unwrap``, which replaces the attribute with its
  ``__wrapped__`` -- one level down from whatever is on top, here prysmai's.

Requests are sent to the loopback servers and checked on the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import wrapt
from conftest import PRYSM_KEY, RecordingServer

import prysmai
from prysmai import _log

CLASSES = (openai.OpenAI, openai.AsyncOpenAI)
# wrapt 2 moved its function wrappers under BaseObjectProxy; wrapt 1 has ObjectProxy only.
PROXY_TYPES = tuple(t for t in (getattr(wrapt, "BaseObjectProxy", None), wrapt.ObjectProxy) if t is not None)
_MISSING = object()


class OtherTool:
    """A tool that wraps ``_prepare_options`` of both client classes with wrapt, and can undo it."""

    def __init__(self) -> None:
        self.saw = {cls: cls.__dict__.get("_prepare_options", _MISSING) for cls in CLASSES}
        self.calls = 0

    def instrument(self) -> None:
        def sync_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            self.calls += 1
            return wrapped(*args, **kwargs)

        async def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            self.calls += 1
            return await wrapped(*args, **kwargs)

        wrapt.wrap_function_wrapper(openai.OpenAI, "_prepare_options", sync_wrapper)
        wrapt.wrap_function_wrapper(openai.AsyncOpenAI, "_prepare_options", async_wrapper)

    def uninstrument(self, how: str) -> None:
        for cls in CLASSES:
            if how == "restore":
                saw = self.saw[cls]
                if saw is _MISSING:
                    delattr(cls, "_prepare_options")
                else:
                    cls._prepare_options = saw  # type: ignore[attr-defined]
            else:  # opentelemetry.instrumentation.utils.unwrap
                func = getattr(cls, "_prepare_options", None)
                if isinstance(func, PROXY_TYPES) and hasattr(func, "__wrapped__"):
                    cls._prepare_options = func.__wrapped__  # type: ignore[attr-defined]

    def restore_everything(self) -> None:
        for cls, saw in self.saw.items():
            if saw is _MISSING:
                if "_prepare_options" in cls.__dict__:
                    delattr(cls, "_prepare_options")
            else:
                cls._prepare_options = saw  # type: ignore[attr-defined]


@pytest.fixture
def tool() -> Iterator[OtherTool]:
    other = OtherTool()
    other.instrument()
    try:
        yield other
    finally:
        prysmai.uninstrument()
        other.restore_everything()


@pytest.fixture
def fresh_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(_log, "_seen", set())
    caplog.set_level(logging.WARNING, logger="prysmai")
    return caplog


def send_ten(client: openai.OpenAI) -> None:
    for _ in range(10):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "prysmai")


HOW = pytest.mark.parametrize("how", ["restore", "unwrap-top"])


@HOW
def test_removed_hook_is_reported_and_instrument_puts_it_back(
    how: str,
    tool: OtherTool,
    default_client: openai.OpenAI,
    proxy_server: RecordingServer,
    openai_server: RecordingServer,
    fresh_log: pytest.LogCaptureFixture,
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    assert prysmai.is_instrumented()
    tool.uninstrument(how)

    send_ten(default_client)
    assert len(openai_server.requests) == 10 and proxy_server.requests == []  # the damage, as it is
    assert not prysmai.is_instrumented()  # ... and is_instrumented() says so
    assert "OpenAI._prepare_options was removed by another library" in messages(fresh_log)

    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    assert prysmai.is_instrumented()
    assert "had been removed by another library" in messages(fresh_log)
    assert "re-applied" in messages(fresh_log)
    send_ten(default_client)
    assert len(proxy_server.requests) == 10 and len(openai_server.requests) == 10
    assert all(r.header("authorization") == f"Bearer {PRYSM_KEY}" for r in proxy_server.requests)


@HOW
async def test_async_client_is_routed_again_too(
    how: str,
    tool: OtherTool,
    default_async_client: openai.AsyncOpenAI,
    proxy_server: RecordingServer,
    openai_server: RecordingServer,
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    tool.uninstrument(how)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    await default_async_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert len(proxy_server.requests) == 1 and openai_server.requests == []


@HOW
def test_uninstrument_after_the_removal_says_what_happened_and_restores_exactly(
    how: str,
    tool: OtherTool,
    default_client: openai.OpenAI,
    proxy_server: RecordingServer,
    openai_server: RecordingServer,
    fresh_log: pytest.LogCaptureFixture,
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    tool.uninstrument(how)
    after_tool = {cls: cls.__dict__.get("_prepare_options", _MISSING) for cls in CLASSES}
    prysmai.uninstrument()
    text = messages(fresh_log)
    assert "had been removed by another library" in text
    assert "switched off" not in text  # not the message for a wrapper put on top of ours
    # uninstrument() touched nothing: what the other tool left is what the classes hold.
    assert {cls: cls.__dict__.get("_prepare_options", _MISSING) for cls in CLASSES} == after_tool
    send_ten(default_client)
    assert proxy_server.requests == []


def test_reapplied_hook_then_undone_restores_what_the_other_tool_left(
    tool: OtherTool, default_client: openai.OpenAI, proxy_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    tool.uninstrument("restore")
    left_by_tool = openai.OpenAI.__dict__.get("_prepare_options", _MISSING)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    prysmai.uninstrument()
    assert openai.OpenAI.__dict__.get("_prepare_options", _MISSING) is left_by_tool
    assert not prysmai.is_instrumented()


def test_wrapper_put_on_top_keeps_is_instrumented_true(
    default_client: openai.OpenAI, proxy_server: RecordingServer
) -> None:
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    later = OtherTool()
    later.instrument()  # on top of ours: ours is still called, inside theirs
    try:
        assert prysmai.is_instrumented()
        default_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert len(proxy_server.requests) == 1 and later.calls == 1
    finally:
        later.restore_everything()


@pytest.mark.parametrize("opaque", [True, False], ids=["no-__wrapped__", "functools.wraps"])
def test_hook_under_a_plain_function_wrapper(
    opaque: bool, default_client: openai.OpenAI, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    """A wrapper that hides what it wraps makes ours look gone: instrument() then adds one on top,
    and the hidden one is switched off, so a request is still tagged once."""
    import functools

    before = openai.OpenAI.__dict__.get("_prepare_options", _MISSING)
    prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
    ours: Callable[..., Any] = openai.OpenAI.__dict__["_prepare_options"]

    def plain(self: Any, options: Any) -> Any:
        return ours.__get__(self, type(self))(options)

    if not opaque:
        plain = functools.wraps(ours)(plain)
    openai.OpenAI._prepare_options = plain  # type: ignore[method-assign]
    try:
        assert prysmai.is_instrumented() is (not opaque)
        prysmai.instrument(prysm_key=PRYSM_KEY, base_url=proxy_server.url)
        assert prysmai.is_instrumented()
        default_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert len(proxy_server.requests) == 1 and openai_server.requests == []
    finally:
        prysmai.uninstrument()
        if before is _MISSING:
            if "_prepare_options" in openai.OpenAI.__dict__:
                delattr(openai.OpenAI, "_prepare_options")
        else:
            openai.OpenAI._prepare_options = before  # type: ignore[method-assign]
