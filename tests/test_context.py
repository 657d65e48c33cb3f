"""``prysm_context``: global and scoped values, their isolation, validation and wire encoding.

Wire tests use a client made by ``prysmai.monitor()`` against the loopback ``proxy_server``; its http
client also keeps every outgoing header list, so a header sent twice cannot hide behind the
server's dict of headers.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, default_httpx, prysm_headers

import prysmai
from prysmai import _log, prysm_context
from prysmai._wire import decode_id, decode_metadata, encode_id, encode_metadata

USER_KEY = "sk-user-openai-key"
MESSAGES = [{"role": "user", "content": "hi"}]

NON_ASCII_IDS = [
    "José",
    "用户-42",
    "rocket 🚀 user",
    "100% sure",
    "%41%42",
    "a b  c",
    "Ünïcödé/ßession?x=1&y=2",
    "line\u2028separator",
    "العربية",
]


class Sent:
    """Outgoing header lists (lower-cased names, duplicates kept), one per request."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[str, str]]] = []

    def values(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.requests[index] if k == name.lower()]


def capturing_http_client(sent: Sent, *, is_async: bool = False) -> Any:
    hx = default_httpx
    if is_async:
        inner_async = hx.AsyncHTTPTransport()

        class AsyncCapture(hx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                sent.requests.append([(k.lower(), v) for k, v in request.headers.multi_items()])
                return await inner_async.handle_async_request(request)

            async def aclose(self) -> None:
                await inner_async.aclose()

        return hx.AsyncClient(transport=AsyncCapture())

    inner = hx.HTTPTransport()

    class Capture(hx.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            sent.requests.append([(k.lower(), v) for k, v in request.headers.multi_items()])
            return inner.handle_request(request)

        def close(self) -> None:
            inner.close()

    return hx.Client(transport=Capture())


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def client(proxy_server: RecordingServer, sent: Sent) -> Iterator[openai.OpenAI]:
    plain = openai.OpenAI(api_key=USER_KEY, http_client=capturing_http_client(sent), max_retries=0)
    monitored = prysmai.monitor(plain, base_url=proxy_server.url, prysm_key=PRYSM_KEY)
    yield monitored
    monitored.close()


@pytest.fixture
async def async_client(proxy_server: RecordingServer, sent: Sent) -> Any:
    plain = openai.AsyncOpenAI(api_key=USER_KEY, http_client=capturing_http_client(sent, is_async=True), max_retries=0)
    monitored = prysmai.monitor(plain, base_url=proxy_server.url, prysm_key=PRYSM_KEY)
    yield monitored
    await monitored.close()


def chat(client: openai.OpenAI, content: str = "hi", **kwargs: Any) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
        **kwargs,
    )


async def achat(client: openai.AsyncOpenAI, content: str = "hi", **kwargs: Any) -> None:
    await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
        **kwargs,
    )


def decoded(headers: dict[str, str]) -> dict[str, Any]:
    """The context a recorded request carried, decoded the way the proxy does."""
    out: dict[str, Any] = {}
    if "x-prysm-user-id" in headers:
        out["user_id"] = decode_id(headers["x-prysm-user-id"])
    if "x-prysm-session-id" in headers:
        out["session_id"] = decode_id(headers["x-prysm-session-id"])
    if "x-prysm-metadata" in headers:
        out["metadata"] = decode_metadata(headers["x-prysm-metadata"])
    return out


def state() -> tuple[str | None, str | None, dict[str, Any]]:
    snapshot = prysm_context.get()
    return snapshot.user_id, snapshot.session_id, dict(snapshot.metadata)


# --- global context ------------------------------------------------------------------------------


def test_set_get_clear() -> None:
    assert state() == (None, None, {})
    prysm_context.set(user_id="u1", session_id="s1", metadata={"plan": "pro"})
    assert state() == ("u1", "s1", {"plan": "pro"})
    prysm_context.clear()
    assert state() == (None, None, {})


def test_set_changes_only_the_given_fields() -> None:
    prysm_context.set(user_id="u1", session_id="s1", metadata={"a": 1})
    prysm_context.set(session_id="s2")
    assert state() == ("u1", "s2", {"a": 1})
    prysm_context.set(user_id="u2")
    assert state() == ("u2", "s2", {"a": 1})
    prysm_context.set(metadata={"b": 2})  # metadata is replaced whole
    assert state() == ("u2", "s2", {"b": 2})


def test_failed_set_changes_nothing() -> None:
    prysm_context.set(user_id="u1", metadata={"a": 1})
    with pytest.raises(ValueError):
        prysm_context.set(user_id="u2", metadata={"bad": {1, 2}})
    with pytest.raises(ValueError):
        prysm_context.set(session_id="s2", user_id="bad\n")
    assert state() == ("u1", None, {"a": 1})


def test_snapshot_is_immutable() -> None:
    prysm_context.set(user_id="u1", metadata={"a": 1, "nested": {"x": [1]}})
    snapshot = prysm_context.get()
    with pytest.raises(AttributeError):
        snapshot.user_id = "u2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        snapshot.metadata = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.metadata["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del snapshot.metadata["a"]  # type: ignore[attr-defined]
    assert state() == ("u1", None, {"a": 1, "nested": {"x": [1]}})


def test_snapshot_does_not_follow_later_changes() -> None:
    prysm_context.set(user_id="u1", metadata={"a": 1})
    snapshot = prysm_context.get()
    prysm_context.set(user_id="u2", metadata={"b": 2})
    assert (snapshot.user_id, dict(snapshot.metadata)) == ("u1", {"a": 1})


def test_callers_dict_is_copied_deeply() -> None:
    metadata: dict[str, Any] = {"a": 1, "tags": ["x"], "inner": {"k": "v"}}
    prysm_context.set(metadata=metadata)
    metadata["a"] = 2
    metadata["new"] = True
    metadata["tags"].append("y")
    metadata["inner"]["k"] = "changed"
    assert state()[2] == {"a": 1, "tags": ["x"], "inner": {"k": "v"}}

    scoped: dict[str, Any] = {"s": ["one"]}
    scope = prysm_context(metadata=scoped)
    scoped["s"].append("two")
    with scope:
        scoped["late"] = 1
        assert state()[2]["s"] == ["one"]
        assert "late" not in state()[2]


# --- scopes --------------------------------------------------------------------------------------


def test_scope_overrides_global_for_the_block_only() -> None:
    prysm_context.set(user_id="global", session_id="gs")
    with prysm_context(user_id="scoped") as snapshot:
        assert (snapshot.user_id, snapshot.session_id) == ("scoped", "gs")
        assert state()[:2] == ("scoped", "gs")
    assert state()[:2] == ("global", "gs")


def test_scope_is_restored_after_an_exception() -> None:
    prysm_context.set(user_id="global")
    error = KeyError("from the block")
    with pytest.raises(KeyError) as caught, prysm_context(user_id="scoped", metadata={"k": 1}):
        raise error
    assert caught.value is error  # the user's exception, untouched
    assert state() == ("global", None, {})


def test_nested_scopes_merge_metadata_with_each_other_and_the_global() -> None:
    prysm_context.set(user_id="g", metadata={"g": 1, "k": "global"})
    with prysm_context(session_id="outer-s", metadata={"o": 1, "k": "outer"}):
        with prysm_context(user_id="inner", metadata={"i": 1, "k": "inner"}):
            assert state() == ("inner", "outer-s", {"g": 1, "o": 1, "i": 1, "k": "inner"})
        assert state() == ("g", "outer-s", {"g": 1, "o": 1, "k": "outer"})
    assert state() == ("g", None, {"g": 1, "k": "global"})


def test_global_changes_show_through_a_scope_where_it_sets_nothing() -> None:
    with prysm_context(user_id="scoped"):
        prysm_context.set(user_id="g2", session_id="gs2", metadata={"g": 2})
        assert state() == ("scoped", "gs2", {"g": 2})
        prysm_context.clear()
        assert state() == ("scoped", None, {})
    assert state() == (None, None, {})


async def test_async_with() -> None:
    async with prysm_context(user_id="async-scope") as snapshot:
        assert snapshot.user_id == "async-scope"
        await asyncio.sleep(0)
        assert state()[0] == "async-scope"
    assert state()[0] is None


def test_decorator_on_a_sync_function() -> None:
    @prysm_context(user_id="dec", metadata={"fn": "sync"})
    def handler(x: int) -> tuple[Any, ...]:
        """Doc."""
        return (x, *state())

    assert handler(1) == (1, "dec", None, {"fn": "sync"})
    assert handler.__name__ == "handler"
    assert handler.__doc__ == "Doc."
    assert state() == (None, None, {})


def test_decorator_restores_after_an_exception_and_recursion() -> None:
    seen: list[str | None] = []

    @prysm_context(user_id="dec")
    def recurse(depth: int) -> None:
        seen.append(state()[0])
        if depth == 0:
            raise ValueError("bottom")
        recurse(depth - 1)

    with pytest.raises(ValueError, match="bottom"):
        recurse(3)
    assert seen == ["dec"] * 4
    assert state()[0] is None


async def test_decorator_on_an_async_function() -> None:
    @prysm_context(user_id="adec", metadata={"fn": "async"})
    async def handler(x: int) -> tuple[Any, ...]:
        await asyncio.sleep(0)
        return (x, *state())

    assert inspect.iscoroutinefunction(handler)
    assert await handler(2) == (2, "adec", None, {"fn": "async"})
    assert state() == (None, None, {})


def test_scope_object_entered_twice_nests() -> None:
    scope = prysm_context(user_id="same")
    with scope:
        with scope:
            assert state()[0] == "same"
        assert state()[0] == "same"
    assert state()[0] is None


# --- threads and tasks ---------------------------------------------------------------------------


def run_threads(target: Any, count: int) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads; return results, re-raising a thread's failure."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def test_global_is_visible_from_other_threads() -> None:
    prysm_context.set(user_id="from-main")
    assert run_threads(lambda i: state()[0], 2) == ["from-main", "from-main"]

    def set_in_thread(i: int) -> None:
        prysm_context.set(session_id="from-thread")

    run_threads(set_in_thread, 1)
    assert state()[:2] == ("from-main", "from-thread")


def test_scopes_are_per_thread() -> None:
    barrier = threading.Barrier(2, timeout=10)

    def worker(i: int) -> tuple[Any, ...]:
        with prysm_context(user_id=f"user-{i}", metadata={"thread": i}):
            barrier.wait()  # both scopes are open now
            inside = state()
            barrier.wait()
        return inside, state()

    with prysm_context(user_id="main-scope"):
        results = run_threads(worker, 2)
        assert state()[0] == "main-scope"
    assert results == [
        (("user-0", None, {"thread": 0}), (None, None, {})),
        (("user-1", None, {"thread": 1}), (None, None, {})),
    ]


def test_one_scope_object_entered_by_many_threads_at_once() -> None:
    shared = prysm_context(user_id="shared", metadata={"shared": True})
    count = 4
    barrier = threading.Barrier(count, timeout=10)

    def worker(i: int) -> tuple[Any, ...]:
        with prysm_context(session_id=f"s-{i}", metadata={"thread": i}):
            with shared:
                barrier.wait()
                inside = state()
                barrier.wait()  # everyone still inside while the others read
            after_shared = state()
        return inside, after_shared

    for i, (inside, after_shared) in enumerate(run_threads(worker, count)):
        assert inside == ("shared", f"s-{i}", {"thread": i, "shared": True})
        assert after_shared == (None, f"s-{i}", {"thread": i})
    assert state() == (None, None, {})


async def test_scopes_are_per_task() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def scoped(i: int) -> tuple[Any, ...]:
        with prysm_context(user_id=f"task-{i}", metadata={"task": i}):
            entered.set()
            await release.wait()
            return state()

    async def unscoped() -> tuple[Any, ...]:
        await entered.wait()  # a scope is open in another task right now
        seen = state()
        release.set()
        return seen

    prysm_context.set(session_id="global-s")
    results = await asyncio.wait_for(asyncio.gather(scoped(0), scoped(1), unscoped()), timeout=10)
    assert results == [
        ("task-0", "global-s", {"task": 0}),
        ("task-1", "global-s", {"task": 1}),
        (None, "global-s", {}),
    ]
    assert state() == (None, "global-s", {})


async def test_one_scope_object_entered_by_many_tasks() -> None:
    shared = prysm_context(user_id="shared")
    gate = asyncio.Event()

    async def worker(i: int) -> tuple[Any, ...]:
        with prysm_context(metadata={"task": i}):
            async with shared:
                await gate.wait()
                inside = state()
            return inside, state()

    tasks = [asyncio.ensure_future(worker(i)) for i in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    for i, (inside, after) in enumerate(results):
        assert inside == ("shared", None, {"task": i})
        assert after == (None, None, {"task": i})


async def test_task_started_inside_a_scope_inherits_it() -> None:
    async def read() -> tuple[Any, ...]:
        return state()

    with prysm_context(user_id="parent"):
        task = asyncio.ensure_future(read())
    assert (await task)[0] == "parent"
    assert state()[0] is None


# --- validation ----------------------------------------------------------------------------------


def set_global(**kwargs: Any) -> None:
    prysm_context.set(**kwargs)


def make_scope(**kwargs: Any) -> None:
    prysm_context(**kwargs)  # created, never entered: checks must happen here


APPLY = pytest.mark.parametrize("apply", [set_global, make_scope], ids=["set", "scope"])


@APPLY
@pytest.mark.parametrize("field", ["user_id", "session_id"])
@pytest.mark.parametrize("value", [42, b"bytes", ["u"], 1.5], ids=["int", "bytes", "list", "float"])
def test_ids_must_be_strings(apply: Any, field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        apply(**{field: value})
    assert state() == (None, None, {})


@APPLY
@pytest.mark.parametrize("field", ["user_id", "session_id"])
@pytest.mark.parametrize(
    "value",
    ["", "a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "tab\there", "del\x7f", "\x1b[31mred"],
    ids=["empty", "crlf", "lf", "cr", "nul", "tab", "del", "escape"],
)
def test_ids_with_control_characters_or_empty_are_refused(apply: Any, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        apply(**{field: value})
    assert state() == (None, None, {})


@APPLY
def test_lone_surrogate_id_is_refused(apply: Any) -> None:
    with pytest.raises(ValueError):
        apply(user_id="bad\ud800")


@APPLY
@pytest.mark.parametrize(
    "metadata",
    [
        {"s": {1, 2}},
        {"o": object()},
        {"n": float("nan")},
        {"i": float("inf")},
        {"b": b"bytes"},
        {1: "int key"},
        {None: "none key"},
        {"nested": {(1, 2): "tuple key"}},
    ],
    ids=["set", "object", "nan", "inf", "bytes", "int-key", "none-key", "nested-tuple-key"],
)
def test_metadata_must_be_json_with_string_keys(apply: Any, metadata: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        apply(metadata=metadata)
    assert state() == (None, None, {})


@APPLY
@pytest.mark.parametrize("metadata", [["a"], "text", 3])
def test_metadata_must_be_a_mapping(apply: Any, metadata: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        apply(metadata=metadata)


def padded_metadata(size: int) -> dict[str, str]:
    """Metadata whose encoded header value is exactly ``size`` bytes: ``{"x":"aaa..."}``."""
    overhead = len(encode_metadata({"x": ""}))
    return {"x": "a" * (size - overhead)}


@APPLY
def test_metadata_up_to_8_kib_is_accepted_and_over_it_refused(apply: Any) -> None:
    assert len(encode_metadata(padded_metadata(8192))) == 8192
    apply(metadata=padded_metadata(8192))
    with pytest.raises(ValueError, match="8192"):
        apply(metadata=padded_metadata(8193))


@APPLY
def test_size_limit_counts_encoded_bytes_not_characters(apply: Any) -> None:
    # 2000 characters, but each is six bytes once escaped (\u00e9 / %C3%A9).
    with pytest.raises(ValueError):
        apply(metadata={"x": "é" * 2000})
    with pytest.raises(ValueError):
        apply(user_id="é" * 2000)


@APPLY
@pytest.mark.parametrize("field", ["user_id", "session_id"])
def test_id_up_to_8_kib_is_accepted_and_over_it_refused(apply: Any, field: str) -> None:
    apply(**{field: "u" * 8192})
    with pytest.raises(ValueError):
        apply(**{field: "u" * 8193})


def test_bad_decorator_arguments_fail_at_decoration() -> None:
    with pytest.raises(ValueError):

        @prysm_context(user_id="bad\nid")
        def never() -> None:
            pass


def test_scope_too_large_together_with_the_global_fails_on_entry_and_leaves_nothing_open() -> None:
    prysm_context.set(metadata={"g": "a" * 5000})
    scope = prysm_context(metadata={"s": "b" * 5000})  # fine on its own
    with pytest.raises(ValueError), scope:
        pytest.fail("the block must not run")
    assert state() == (None, None, {"g": "a" * 5000})
    with prysm_context(user_id="ok"):  # the scope stack is still sound
        assert state()[0] == "ok"
    assert state()[0] is None


def test_global_grown_too_large_inside_a_scope_never_fails_a_request(
    client: openai.OpenAI,
    proxy_server: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_log, "_seen", set())
    caplog.set_level(logging.WARNING, logger="prysmai")
    with prysm_context(user_id="scoped", metadata={"s": "b" * 5000}):
        prysm_context.set(session_id="gs", metadata={"g": "a" * 5000})  # each fits; together they do not
        chat(client)
    got = decoded(prysm_headers(proxy_server.last))
    assert got == {"user_id": "scoped", "session_id": "gs", "metadata": {"s": "b" * 5000}}
    assert any(r.name == "prysmai" for r in caplog.records)


# --- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", NON_ASCII_IDS)
def test_ids_round_trip_through_the_wire_encoding(value: str) -> None:
    encoded = encode_id(value)
    assert encoded.isascii()
    assert encoded.isprintable()
    assert " " not in encoded
    assert decode_id(encoded) == value


def test_plain_ascii_ids_are_sent_as_they_are() -> None:
    assert encode_id("user-42_ABC.x@example.com") == "user-42_ABC.x@example.com"


def test_metadata_round_trips_as_ascii_json() -> None:
    metadata = {"名前": "太郎", "emoji": "🚀🙂", "pct": "100%", "nested": {"list": [1, "ü", None, True, 2.5]}}
    encoded = encode_metadata(metadata)
    assert encoded.isascii()
    assert ", " not in encoded and ": " not in encoded  # compact
    assert decode_metadata(encoded) == metadata


@pytest.mark.parametrize("value", ["[1, 2]", '"text"', "3"])
def test_decode_metadata_wants_an_object(value: str) -> None:
    with pytest.raises(ValueError):
        decode_metadata(value)


# --- on the wire ---------------------------------------------------------------------------------


def test_global_context_is_sent_and_decodes_back(client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    metadata = {"feature": "chat", "名前": "太郎 🚀", "pct": "50% off"}
    prysm_context.set(user_id="用户 🚀 100%", session_id="séance 1", metadata=metadata)
    chat(client)
    headers = prysm_headers(proxy_server.last)
    assert all(value.isascii() for value in headers.values())
    assert decoded(headers) == {"user_id": "用户 🚀 100%", "session_id": "séance 1", "metadata": metadata}
    assert json.loads(headers["x-prysm-metadata"]) == metadata


@pytest.mark.parametrize("value", NON_ASCII_IDS)
def test_scoped_non_ascii_ids_reach_the_proxy(value: str, client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    with prysm_context(user_id=value, session_id=value, metadata={"v": value}):
        chat(client)
    assert decoded(prysm_headers(proxy_server.last)) == {
        "user_id": value,
        "session_id": value,
        "metadata": {"v": value},
    }


def test_no_context_sends_no_context_headers(client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    chat(client)
    assert prysm_headers(proxy_server.last) == {}


def test_context_is_read_at_request_time(client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    prysm_context.set(user_id="first")
    chat(client)
    with prysm_context(metadata={"scope": 1}):
        chat(client)
        prysm_context.set(user_id="second", session_id="s")  # the scope sets no user: the new global shows
        chat(client)
    prysm_context.clear()
    chat(client)
    assert [decoded(prysm_headers(r)) for r in proxy_server.requests] == [
        {"user_id": "first"},
        {"user_id": "first", "metadata": {"scope": 1}},
        {"user_id": "second", "session_id": "s", "metadata": {"scope": 1}},
        {},
    ]


def test_extra_headers_are_not_mutated(client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    extra = {"X-Custom": "1"}
    with prysm_context(user_id="a"):
        chat(client, extra_headers=extra)
    with prysm_context(user_id="b", session_id="s"):
        chat(client, extra_headers=extra)
    assert extra == {"X-Custom": "1"}
    first, second = proxy_server.requests
    assert first.header("x-custom") == second.header("x-custom") == "1"
    assert decoded(prysm_headers(first)) == {"user_id": "a"}
    assert decoded(prysm_headers(second)) == {"user_id": "b", "session_id": "s"}


@pytest.mark.parametrize("name", ["X-Prysm-User-Id", "x-prysm-user-id", "X-PRYSM-USER-ID"])
def test_explicit_header_wins_over_the_context(
    name: str, client: openai.OpenAI, proxy_server: RecordingServer, sent: Sent
) -> None:
    extra = {name: "explicit"}
    with prysm_context(user_id="from-context", session_id="ctx-session"):
        chat(client, extra_headers=extra)
    assert extra == {name: "explicit"}
    assert sent.values("x-prysm-user-id") == ["explicit"]  # sent once, not twice
    assert prysm_headers(proxy_server.last)["x-prysm-user-id"] == "explicit"
    assert prysm_headers(proxy_server.last)["x-prysm-session-id"] == "ctx-session"


async def test_async_client_sends_scoped_context(async_client: Any, proxy_server: RecordingServer) -> None:
    with prysm_context(user_id="async-用户", metadata={"k": "ü"}):
        await achat(async_client)
    assert decoded(prysm_headers(proxy_server.last)) == {"user_id": "async-用户", "metadata": {"k": "ü"}}


def test_one_client_serves_many_users_from_threads(client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    count = 6
    barrier = threading.Barrier(count, timeout=10)
    prysm_context.set(session_id="shared-session", metadata={"app": "demo"})

    def user(i: int) -> None:
        with prysm_context(user_id=f"user-{i}", metadata={"thread": i}):
            barrier.wait()  # every thread is inside its scope before anyone sends
            for round_ in range(2):
                chat(client, content=f"thread {i} round {round_}")

    run_threads(user, count)
    assert len(proxy_server.requests) == 2 * count
    for recorded in proxy_server.requests:
        i = int(recorded.json()["messages"][0]["content"].split()[1])
        assert decoded(prysm_headers(recorded)) == {
            "user_id": f"user-{i}",
            "session_id": "shared-session",
            "metadata": {"app": "demo", "thread": i},
        }


async def test_one_async_client_serves_many_users_from_tasks(async_client: Any, proxy_server: RecordingServer) -> None:
    count = 6
    ready = asyncio.Barrier(count) if hasattr(asyncio, "Barrier") else None

    async def user(i: int) -> None:
        with prysm_context(user_id=f"user-{i}", metadata={"task": i}):
            if ready is not None:
                await ready.wait()
            await achat(async_client, content=f"task {i}")

    await asyncio.wait_for(asyncio.gather(*(user(i) for i in range(count))), timeout=30)
    assert len(proxy_server.requests) == count
    for recorded in proxy_server.requests:
        i = int(recorded.json()["messages"][0]["content"].split()[1])
        assert decoded(prysm_headers(recorded)) == {"user_id": f"user-{i}", "metadata": {"task": i}}
    assert state() == (None, None, {})


def test_snapshot_equality_and_repr() -> None:
    prysm_context.set(user_id="u", metadata={"a": 1})
    outside = prysm_context.get()
    assert outside == prysm_context.get()
    assert "'u'" in repr(outside)
    with prysm_context(user_id="v"):
        assert prysm_context.get() != outside
    assert prysm_context.get() == outside
