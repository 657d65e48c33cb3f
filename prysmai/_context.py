"""``prysm_context``: who and what a request is for, sent as ``X-Prysm-*`` headers.

Two layers, merged at request time:

* the global context (``prysm_context.set``): one immutable value swapped under a lock, so every
  thread and task sees the latest one;
* scopes (``with prysm_context(...)``): an immutable overlay in a ``ContextVar``, so each thread
  and asyncio task has its own, and nested scopes merge their metadata.

Values are validated and encoded when they are set, never mid-request; the encoded headers are
cached on the immutable values, so a request only reads two references.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from types import MappingProxyType

from ._wire import (
    MAX_HEADER_VALUE_BYTES,
    METADATA_HEADER,
    SESSION_ID_HEADER,
    USER_ID_HEADER,
    encode_id,
    encode_metadata,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

Headers = tuple[tuple[str, str], ...]

_EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


class ContextSnapshot:
    """An immutable view of the effective context: what the next request would carry."""

    __slots__ = ("metadata", "session_id", "user_id")

    user_id: str | None
    session_id: str | None
    metadata: Mapping[str, Any]

    def __init__(self, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any]) -> None:
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "metadata", metadata)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ContextSnapshot is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContextSnapshot):
            return NotImplemented
        return (self.user_id, self.session_id, dict(self.metadata)) == (
            other.user_id,
            other.session_id,
            dict(other.metadata),
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"ContextSnapshot(user_id={self.user_id!r}, session_id={self.session_id!r}, "
            f"metadata={dict(self.metadata)!r})"
        )


class _Values:
    """One layer of context (global, or a scope merged with its parents), validated and encoded."""

    __slots__ = ("encoded_metadata", "headers", "merged", "metadata", "session_id", "user_id")

    def __init__(self, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any]) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.metadata = metadata
        self.encoded_metadata = _encode_metadata(metadata) if metadata else None
        self.headers: Headers = _headers(user_id, session_id, self.encoded_metadata)
        # For scopes: (global layer it was merged with, merged headers), rebuilt when the global changes.
        self.merged: tuple[_Values, Headers] | None = None


def current_headers() -> Headers:
    """The ``X-Prysm-*`` headers of the effective context, for the request being prepared now."""
    scoped = _scope.get()
    base = _global
    if scoped is None:
        return base.headers
    merged = scoped.merged
    if merged is not None and merged[0] is base:
        return merged[1]
    try:
        headers = _merge(base, scoped).headers
    except ValueError:
        # The global metadata grew after this scope was entered and the merge no longer fits in a
        # header: send the scope's own values rather than fail the user's request.
        from ._log import log_once

        log_once(
            "context-too-large",
            "prysm_context: global and scoped metadata together exceed the header limit; "
            "sending the scope's metadata only",
        )
        headers = _merge(_Values(base.user_id, base.session_id, _EMPTY_METADATA), scoped).headers
    scoped.merged = (base, headers)  # a benign race: any thread computes the same value
    return headers


def _merge(base: _Values, scoped: _Values) -> _Values:
    if not base.metadata:
        metadata = scoped.metadata
    elif not scoped.metadata:
        metadata = base.metadata
    else:
        metadata = MappingProxyType({**base.metadata, **scoped.metadata})
    return _Values(
        scoped.user_id if scoped.user_id is not None else base.user_id,
        scoped.session_id if scoped.session_id is not None else base.session_id,
        metadata,
    )


class _Scope:
    """``with prysm_context(...)``: scoped values for the block, or for each call when decorating."""

    __slots__ = ("_metadata", "_session_id", "_user_id")

    def __init__(self, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any] | None) -> None:
        self._user_id = _check_id(user_id, "user_id")
        self._session_id = _check_id(session_id, "session_id")
        self._metadata = _check_metadata(metadata)
        # Fail here, not on entry, if this scope alone cannot be sent.
        _Values(self._user_id, self._session_id, self._metadata)

    def __enter__(self) -> ContextSnapshot:
        parent = _scope.get()
        if parent is None:
            layer = _Values(self._user_id, self._session_id, self._metadata)
        else:
            layer = _merge(parent, _Values(self._user_id, self._session_id, self._metadata))
        _merge(_global, layer)  # raises here if the merged metadata cannot be sent
        token = _scope.set(layer)
        _tokens.set((*_tokens.get(), token))
        return get()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tokens = _tokens.get()
        _tokens.set(tokens[:-1])
        _scope.reset(tokens[-1])

    async def __aenter__(self) -> ContextSnapshot:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: _F) -> _F:
        """Use the scope as a decorator: each call of ``func`` runs inside it."""
        import inspect

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class PrysmContext:
    """User, session and metadata tags for every request, global or scoped.

    ``prysm_context.set(user_id="u1")`` sets the global context, seen by every thread and task;
    ``with prysm_context(user_id="u2", metadata={"feature": "chat"}):`` overrides it for the block
    only (per thread / asyncio task); nested scopes and the global context merge their metadata,
    inner keys winning. ``@prysm_context(...)`` decorates sync and async functions the same way.
    Values are read when each request is sent, so one client serves many users concurrently.
    """

    def __call__(
        self,
        user_id: str | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> _Scope:
        return _Scope(user_id, session_id, metadata)

    def set(
        self,
        user_id: str | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the global context; only the given fields change (``metadata`` is replaced whole)."""
        global _global
        user_id = _check_id(user_id, "user_id")
        session_id = _check_id(session_id, "session_id")
        checked = _check_metadata(metadata)
        with _global_lock:
            old = _global
            new = _Values(
                user_id if user_id is not None else old.user_id,
                session_id if session_id is not None else old.session_id,
                checked if metadata is not None else old.metadata,
            )
            _global = new

    def get(self) -> ContextSnapshot:
        """The effective context here and now (global merged with the enclosing scopes)."""
        return get()

    def clear(self) -> None:
        """Clear the global context. Enclosing scopes keep their values until they exit."""
        global _global
        with _global_lock:
            _global = _EMPTY

    def __repr__(self) -> str:
        return f"<prysm_context {get()!r}>"


def get() -> ContextSnapshot:
    scoped = _scope.get()
    values = _global if scoped is None else _merge(_global, scoped)
    metadata = _EMPTY_METADATA
    if values.encoded_metadata is not None:
        import json

        # Fresh objects: mutating a nested list of the snapshot cannot reach the live context.
        metadata = MappingProxyType(json.loads(values.encoded_metadata))
    return ContextSnapshot(values.user_id, values.session_id, metadata)


def _check_id(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}.")
    if not value:
        raise ValueError(f"{name} must not be empty; pass None to leave it unchanged.")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{name} must not contain control characters such as CR or LF: {value!r}.")
    try:
        encoded = encode_id(value)
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text: {value!r}.") from None
    if len(encoded) > MAX_HEADER_VALUE_BYTES:
        raise ValueError(f"{name} is {len(encoded)} bytes once encoded; the limit is {MAX_HEADER_VALUE_BYTES}.")
    return value


def _check_metadata(metadata: object) -> Mapping[str, Any]:
    if metadata is None:
        return _EMPTY_METADATA
    from collections.abc import Mapping as _Mapping

    if not isinstance(metadata, _Mapping):
        raise TypeError(f"metadata must be a mapping (dict) of str to JSON values, not {type(metadata).__name__}.")
    for key in metadata:
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be strings, got {key!r}.")
    import json

    # A deep, private copy: later changes to the caller's dict (or its nested lists) cannot leak in.
    copied = json.loads(_encode_metadata(metadata))
    return MappingProxyType(copied)


def _encode_metadata(metadata: Mapping[str, Any]) -> str:
    encoded = encode_metadata(dict(metadata))
    if len(encoded) > MAX_HEADER_VALUE_BYTES:
        raise ValueError(
            f"metadata is {len(encoded)} bytes once encoded as JSON; the limit is {MAX_HEADER_VALUE_BYTES} "
            "(one HTTP header). Send large payloads in the request itself."
        )
    return encoded


def _headers(user_id: str | None, session_id: str | None, encoded_metadata: str | None) -> Headers:
    headers: list[tuple[str, str]] = []
    if user_id is not None:
        headers.append((USER_ID_HEADER, encode_id(user_id)))
    if session_id is not None:
        headers.append((SESSION_ID_HEADER, encode_id(session_id)))
    if encoded_metadata is not None:
        headers.append((METADATA_HEADER, encoded_metadata))
    return tuple(headers)


_EMPTY = _Values(None, None, _EMPTY_METADATA)
_global_lock = threading.Lock()
_global: _Values = _EMPTY
_scope: contextvars.ContextVar[_Values | None] = contextvars.ContextVar("prysm_scope", default=None)
# Tokens of the scopes entered in this context, innermost last: lets one scope object be entered in
# many threads or tasks at once (a module-level `ctx = prysm_context(...)` used as `with ctx:`).
_tokens: contextvars.ContextVar[tuple[contextvars.Token[_Values | None], ...]] = contextvars.ContextVar(
    "prysm_scope_tokens", default=()
)

prysm_context = PrysmContext()
