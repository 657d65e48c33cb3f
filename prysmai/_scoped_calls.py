"""What ``@prysm_context(...)`` and ``prysm_context.wrap()`` do to a callable.

A generator's body runs in its consumer's context, a piece at a time: a scope entered once around
the whole generator would either end when the generator object is returned (before any of the
body runs) or, held across a ``yield``, leak into the consumer between items. So a decorated
generator function drives the real generator itself and enters the scope around each resumption
only -- ``next``/``send``/``throw``/``close`` (and their async twins) -- the way PEP 380 spells out
``yield from``. The wrapper is itself a generator function (or async generator function), so
frameworks that inspect it (FastAPI dependencies, LangChain callbacks) still see one.
"""

from __future__ import annotations

import functools
import inspect

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator
    from typing import Any, TypeVar

    from ._context import _Scope

    _F = TypeVar("_F", bound=Callable[..., Any])


class Entered:
    """``with scope:`` minus the ``PrysmContext`` it returns, which a decorator would build for nothing."""

    __slots__ = ("_scope",)

    def __init__(self, scope: _Scope) -> None:
        self._scope = scope

    def __enter__(self) -> None:
        self._scope.enter()

    def __exit__(self, *exc_info: object) -> None:
        self._scope.__exit__(None, None, None)


def in_scope(scope: _Scope, func: _F) -> _F:
    """``func`` with each call (or each resumption of its generator) inside ``scope``."""
    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def async_generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            inner = func(*args, **kwargs)
            try:
                with Entered(scope):
                    value = await inner.__anext__()
            except StopAsyncIteration:
                return
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    with Entered(scope):
                        await inner.aclose()
                    raise
                except BaseException as exc:
                    try:
                        with Entered(scope):
                            value = await inner.athrow(exc)
                    except StopAsyncIteration:
                        return
                else:
                    try:
                        with Entered(scope):
                            value = await inner.asend(sent)
                    except StopAsyncIteration:
                        return

        return async_generator  # type: ignore[return-value]

    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            inner = func(*args, **kwargs)
            try:
                with Entered(scope):
                    value = next(inner)
            except StopIteration as stop:
                return stop.value
            while True:
                try:
                    sent = yield value
                except GeneratorExit:
                    with Entered(scope):
                        inner.close()
                    raise
                except BaseException as exc:
                    try:
                        with Entered(scope):
                            value = inner.throw(exc)
                    except StopIteration as stop:
                        return stop.value
                else:
                    try:
                        with Entered(scope):
                            value = inner.send(sent)
                    except StopIteration as stop:
                        return stop.value

        return generator  # type: ignore[return-value]

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            with Entered(scope):
                return await func(*args, **kwargs)

        return coroutine  # type: ignore[return-value]

    @functools.wraps(func)
    def function(*args: Any, **kwargs: Any) -> Any:
        with Entered(scope):
            return func(*args, **kwargs)

    return function  # type: ignore[return-value]


def in_current_context(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, each call of which runs in a copy of the context current now (for thread pools)."""
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            "prysm_context.wrap() is for plain callables handed to threads; an asyncio task already "
            "carries the scope it was created in."
        )
    import contextvars

    context = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        # A copy per call: one Context cannot be entered by two threads at once (pool.map).
        return context.copy().run(func, *args, **kwargs)

    return run
