"""``prysm_context`` at its edges: generators, scopes that outlive their block, thread pools, hostile values.

Requests go through a ``monitor()`` client to the loopback ``proxy_server``; what the proxy received
is decoded the way the proxy decodes it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from conftest import PRYSM_KEY, RecordingServer, prysm_headers

import prysmai
from prysmai import PrysmContext, prysm_context
from prysmai._wire import MAX_METADATA_DEPTH, decode_id, decode_metadata

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(proxy_server: RecordingServer) -> Iterator[openai.OpenAI]:
    monitored = prysmai.monitor(
        openai.OpenAI(api_key="sk-user-key", max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url
    )
    yield monitored
    monitored.close()


@pytest.fixture
async def async_client(proxy_server: RecordingServer) -> Any:
    monitored = prysmai.monitor(
        openai.AsyncOpenAI(api_key="sk-user-key", max_retries=0), prysm_key=PRYSM_KEY, base_url=proxy_server.url
    )
    yield monitored
    await monitored.close()


def state() -> tuple[str | None, str | None, dict[str, Any]]:
    value = prysm_context.get()
    return value.user_id, value.session_id, dict(value.metadata)


def users(server: RecordingServer) -> list[str | None]:
    """The user id of each request the proxy received, decoded."""
    out: list[str | None] = []
    for recorded in server.requests:
        raw = prysm_headers(recorded).get("x-prysm-user-id")
        out.append(None if raw is None else decode_id(raw))
    return out


CONSUMER = ("consumer", None, {})


# --- @prysm_context on generator functions ------------------------------------------------------


def test_decorated_generator_runs_its_body_in_the_scope_and_never_leaks_between_items(
    client: openai.OpenAI, proxy_server: RecordingServer
) -> None:
    @prysm_context(user_id="gen", metadata={"where": "body"})
    def stream(n: int) -> Iterator[tuple[Any, ...]]:
        for _ in range(n):
            client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
            yield state()

    assert inspect.isgeneratorfunction(stream)
    prysm_context.set(user_id="consumer")
    seen_between = []
    for inside in stream(3):
        assert inside == ("gen", None, {"where": "body"})
        seen_between.append(state())
        client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert seen_between == [CONSUMER] * 3
    assert users(proxy_server) == ["gen", "consumer"] * 3
    assert state() == CONSUMER


def test_decorated_generator_send_throw_and_return_value() -> None:
    @prysm_context(user_id="gen")
    def echo() -> Iterator[Any]:
        received = yield state()[0]
        while received != "stop":
            try:
                received = yield (received, state()[0])
            except KeyError as exc:
                received = yield ("caught", str(exc), state()[0])
        return ("returned", state()[0])

    def outer() -> Iterator[Any]:
        result = yield from echo()
        yield result

    prysm_context.set(user_id="consumer")
    gen = outer()
    assert next(gen) == "gen"
    assert gen.send("a") == ("a", "gen")
    assert state()[0] == "consumer"
    assert gen.throw(KeyError("k")) == ("caught", "'k'", "gen")
    assert state()[0] == "consumer"
    assert gen.send("stop") == ("returned", "gen")
    assert state()[0] == "consumer"


@pytest.mark.parametrize("how", ["close", "throw", "abandon"])
def test_closing_throwing_into_or_abandoning_a_decorated_generator_restores_the_consumer(how: str) -> None:
    finally_saw: list[Any] = []

    @prysm_context(user_id="gen", metadata={"g": 1})
    def stream() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            finally_saw.append(state())

    with prysm_context(user_id="consumer", session_id="cs"):
        gen = stream()
        assert next(gen) == 1
        if how == "close":
            gen.close()
        elif how == "throw":
            with pytest.raises(ValueError, match="into the body"):
                gen.throw(ValueError("into the body"))
        else:
            del gen
            gc.collect()
        assert state() == ("consumer", "cs", {})
    assert finally_saw == [("gen", "cs", {"g": 1})]
    assert state() == (None, None, {})


async def test_decorated_async_generator_runs_each_step_in_the_scope(
    async_client: Any, proxy_server: RecordingServer
) -> None:
    @prysm_context(user_id="agen")
    async def stream(n: int) -> AsyncIterator[str | None]:
        for _ in range(n):
            await asyncio.sleep(0)
            await async_client.chat.completions.create(model="m", messages=MESSAGES)
            yield state()[0]

    assert inspect.isasyncgenfunction(stream)
    prysm_context.set(user_id="consumer")
    async for inside in stream(3):
        assert inside == "agen"
        assert state()[0] == "consumer"
        await async_client.chat.completions.create(model="m", messages=MESSAGES)
    assert users(proxy_server) == ["agen", "consumer"] * 3


async def test_decorated_async_generator_asend_athrow_aclose() -> None:
    finally_saw: list[Any] = []

    @prysm_context(user_id="agen")
    async def echo() -> AsyncIterator[Any]:
        try:
            received = yield state()[0]
            while True:
                try:
                    received = yield (received, state()[0])
                except KeyError:
                    received = yield ("caught", state()[0])
        finally:
            finally_saw.append(state()[0])

    with prysm_context(user_id="consumer"):
        gen = echo()
        assert await gen.__anext__() == "agen"
        assert await gen.asend("x") == ("x", "agen")
        assert state()[0] == "consumer"
        assert await gen.athrow(KeyError("k")) == ("caught", "agen")
        assert state()[0] == "consumer"
        await gen.aclose()
        assert state()[0] == "consumer"
    assert finally_saw == ["agen"]


async def test_abandoned_decorated_async_generator_is_finalised_in_its_scope() -> None:
    finally_saw: list[Any] = []
    errors = _collect_loop_errors()

    @prysm_context(user_id="agen")
    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            finally_saw.append(state()[0])

    with prysm_context(user_id="consumer"):
        async for _ in stream():
            break  # abandoned: asyncio finalises it in a task of its own
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)
        assert state()[0] == "consumer"
    assert finally_saw == ["agen"]
    assert errors == []


# --- a scope held across a yield and exited elsewhere -------------------------------------------


def undecorated() -> Iterator[int]:
    """What the decorator exists for: a scope spanning yields, entered in the consumer's context."""
    with prysm_context(user_id="gen", metadata={"g": 1}):
        yield 1
        yield 2


def test_scope_closed_inside_the_callers_own_scope_leaves_the_callers_context() -> None:
    prysm_context.set(session_id="global")
    gen = undecorated()
    next(gen)
    with prysm_context(user_id="caller", metadata={"c": 1}):
        gen.close()
        assert state() == ("caller", "global", {"c": 1})
    assert state() == (None, "global", {})


def test_scope_closed_from_another_thread_raises_nothing_and_is_gone_everywhere() -> None:
    gen = undecorated()
    next(gen)
    assert state()[0] == "gen"  # the leak the decorator avoids
    failures: list[BaseException] = []

    def close() -> None:
        try:
            gen.close()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=close)
    thread.start()
    thread.join(10)
    assert failures == []
    assert state() == (None, None, {})
    with prysm_context(user_id="after"):  # the chain is still sound
        assert state() == ("after", None, {})
    assert state() == (None, None, {})


async def test_async_generator_finalised_by_asyncio_does_not_leave_its_user_in_the_task() -> None:
    errors = _collect_loop_errors()

    async def agen() -> AsyncIterator[int]:
        async with prysm_context(user_id="gen"):
            yield 1
            yield 2

    async def consumer() -> tuple[Any, ...]:
        gen = agen()
        async for _ in gen:
            break  # the scope was entered in this task and is still open
        del gen
        gc.collect()  # asyncio now closes the generator in another task
        for _ in range(5):
            await asyncio.sleep(0)
        return state()

    with prysm_context(user_id="task-owner"):
        assert await asyncio.wait_for(asyncio.ensure_future(consumer()), 10) == ("task-owner", None, {})
    assert errors == []


def test_exiting_a_scope_more_often_than_entering_it_raises_nothing() -> None:
    scope = prysm_context(user_id="x")
    scope.__exit__(None, None, None)
    with scope:
        pass
    scope.__exit__(None, None, None)
    assert state() == (None, None, {})


async def test_task_created_in_a_scope_keeps_it_after_the_creator_leaves() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def child() -> str | None:
        started.set()
        await release.wait()
        return state()[0]

    with prysm_context(user_id="parent"):
        task = asyncio.ensure_future(child())
        await started.wait()
    release.set()
    assert await task == "parent"
    assert state()[0] is None


def _collect_loop_errors() -> list[Any]:
    errors: list[Any] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    return errors


# --- thread pools -------------------------------------------------------------------------------


def test_executor_submit_carries_only_the_global_context_unless_wrapped() -> None:
    prysm_context.set(session_id="global")
    with prysm_context(user_id="request"), ThreadPoolExecutor(2) as pool:
        assert pool.submit(state).result(10) == (None, "global", {})
        assert pool.submit(prysm_context.wrap(state)).result(10) == ("request", "global", {})


def test_wrapped_callable_runs_concurrently_in_its_own_copy_each_time() -> None:
    barrier = threading.Barrier(4)

    def work(i: int) -> tuple[Any, ...]:
        barrier.wait(10)
        with prysm_context(metadata={"i": i}):
            return state()

    with prysm_context(user_id="request"):
        wrapped = prysm_context.wrap(work)
    assert wrapped.__name__ == "work"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(wrapped, range(4)))
    assert results == [("request", None, {"i": i}) for i in range(4)]


async def test_run_in_executor_needs_wrap_and_to_thread_does_not() -> None:
    loop = asyncio.get_running_loop()
    with prysm_context(user_id="request"):
        assert (await loop.run_in_executor(None, state))[0] is None
        assert (await loop.run_in_executor(None, prysm_context.wrap(state)))[0] == "request"
        if hasattr(asyncio, "to_thread"):
            assert (await asyncio.to_thread(state))[0] == "request"


def test_wrap_refuses_coroutine_functions() -> None:
    async def coro() -> None:
        pass

    with pytest.raises(TypeError, match="task"):
        prysm_context.wrap(coro)


def test_wrap_copies_other_context_variables_too() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("other", default="unset")
    var.set("set")
    wrapped = prysm_context.wrap(var.get)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(wrapped).result(10) == "set"


# --- hostile values -----------------------------------------------------------------------------


def nested_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_list(depth: int) -> dict[str, Any]:
    value: list[Any] = []
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


APPLY = pytest.mark.parametrize(
    "apply",
    [
        lambda metadata: prysm_context.set(metadata=metadata),
        lambda metadata: prysm_context(metadata=metadata),
        lambda metadata: PrysmContext(metadata=metadata),
    ],
    ids=["set", "scope", "PrysmContext"],
)


@APPLY
@pytest.mark.parametrize("make", [nested_dict, nested_list], ids=["dicts", "lists"])
def test_metadata_nested_3000_deep_is_a_value_error_at_set_time(apply: Any, make: Any) -> None:
    with pytest.raises(ValueError, match="nested"):
        apply(make(3000))
    assert state() == (None, None, {})


@APPLY
@pytest.mark.parametrize("make", [nested_dict, nested_list], ids=["dicts", "lists"])
def test_metadata_depth_limit_is_exact(apply: Any, make: Any) -> None:
    apply(make(MAX_METADATA_DEPTH))
    with pytest.raises(ValueError, match=str(MAX_METADATA_DEPTH)):
        apply(make(MAX_METADATA_DEPTH + 1))


@APPLY
def test_metadata_that_contains_itself_is_a_value_error(apply: Any) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        apply(loop)


@APPLY
@pytest.mark.parametrize(
    "metadata",
    [
        {"x": "\ud800"},
        {"x": "ok \udfff"},
        {"\ud83d": 1},
        {"x": ["fine", {"deep": "a\udc00b"}]},
        # Two surrogates are still two code points in a Python str, not the character they pair to in
        # UTF-16: JSON would turn them into that character, so the value would not decode back as sent.
        {"x": "\ud83d\ude80"},
    ],
    ids=["value", "low-surrogate", "key", "nested", "pair-in-str"],
)
def test_metadata_with_lone_surrogates_is_refused_at_set_time(apply: Any, metadata: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        apply(metadata)
    assert state() == (None, None, {})


def test_metadata_with_real_astral_characters_is_sent_as_valid_ascii_json(
    client: openai.OpenAI, proxy_server: RecordingServer
) -> None:
    metadata = {"emoji": "🚀", "cjk": "名前", "mixed": ["é", {"😀": "\u2028"}]}
    prysm_context.set(metadata=metadata)
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    raw = prysm_headers(proxy_server.last)["x-prysm-metadata"]
    assert raw.isascii()
    assert decode_metadata(raw) == metadata  # decodes back to exactly what was set


def test_metadata_with_many_small_values_is_refused_without_walking_them_all() -> None:
    with pytest.raises(ValueError, match="8192"):
        prysm_context.set(metadata={"many": [0] * 1_000_000})


# --- PrysmContext, the value type ---------------------------------------------------------------


def test_prysm_context_value_checks_its_arguments_like_set() -> None:
    with pytest.raises(TypeError, match="user_id"):
        PrysmContext(user_id=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="session_id"):
        PrysmContext(session_id="a\r\nb")
    with pytest.raises(ValueError):
        PrysmContext(metadata={"k": {1, 2}})


def test_to_headers_matches_what_requests_carry(client: openai.OpenAI, proxy_server: RecordingServer) -> None:
    prysm_context.set(user_id="José 🚀", session_id="s 1", metadata={"名前": "太郎", "n": [1, None]})
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    sent = prysm_headers(proxy_server.last)
    assert {k.lower(): v for k, v in prysm_context.get().to_headers().items()} == sent
    assert PrysmContext(user_id="u1").to_headers() == {"X-Prysm-User-Id": "u1"}
    assert PrysmContext().to_headers() == {}


def test_prysm_context_value_is_immutable_and_compares_by_value() -> None:
    value = PrysmContext(user_id="u", metadata={"a": [1]})
    with pytest.raises(AttributeError):
        value.user_id = "v"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del value.user_id  # type: ignore[misc]
    assert value == PrysmContext(user_id="u", metadata={"a": [1]})
    assert value != PrysmContext(user_id="u")
    assert repr(value) == "PrysmContext(user_id='u', session_id=None, metadata={'a': [1]})"
    prysm_context.set(user_id="u", metadata={"a": [1]})
    assert prysm_context.get() == value
