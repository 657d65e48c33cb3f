"""``prysm_context``: who and what a request is for, sent as ``X-Prysm-*`` headers.

Two layers, merged at request time:

* the global context (``prysm_context.set``): one immutable value swapped under a lock, so every
  thread and task sees the latest one;
* scopes (``with prysm_context(...)``): a chain of immutable layers in a ``ContextVar``, so each
  thread and asyncio task has its own, and nested scopes merge their metadata.

Values are validated and encoded when they are set, never mid-request; the encoded headers are
cached on the immutable values, so a request only reads a few references.

A scope's exit never raises and never installs values it did not find. Exiting the innermost scope
of the thread or task that entered it (the normal case) restores the enclosing layer there. Any
other exit -- out of order, from another thread, or from the task asyncio starts to finalise an
abandoned async generator -- *closes* the layer instead: every context still holding it (including
the one that entered it) skips it from then on, falling back to the enclosing values.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading

from ._context_checks import EMPTY_METADATA, check_id, check_metadata, encode_checked
from ._wire import METADATA_HEADER, SESSION_ID_HEADER, USER_ID_HEADER, encode_id, encode_metadata

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

Headers = tuple[tuple[str, str], ...]


class PrysmContext:
    """Who and what a request is for: a user id, a session id and metadata. Immutable.

    ``prysm_context.get()`` returns the one in effect; build one yourself to tag other HTTP calls
    the way prysmai tags openai's::

        PrysmContext(user_id="u1", metadata={"env": "test"}).to_headers()
        # {'X-Prysm-User-Id': 'u1', 'X-Prysm-Metadata': '{"env":"test"}'}

    Arguments are checked like ``prysm_context.set()``'s (``TypeError`` / ``ValueError``).
    """

    __slots__ = ("metadata", "session_id", "user_id")

    user_id: str | None
    session_id: str | None
    metadata: Mapping[str, Any]

    def __init__(
        self,
        user_id: str | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._init(check_id(user_id, "user_id"), check_id(session_id, "session_id"), check_metadata(metadata))

    def _init(self, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any]) -> None:
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "metadata", metadata)

    @classmethod
    def _checked(cls, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any]) -> PrysmContext:
        """Build one from values validated already (no second check)."""
        value = cls.__new__(cls)
        value._init(user_id, session_id, metadata)
        return value

    def to_headers(self) -> dict[str, str]:
        """The ``X-Prysm-*`` headers of this context, encoded as prysmai sends them; only fields that are set."""
        headers: dict[str, str] = {}
        if self.user_id is not None:
            headers[USER_ID_HEADER] = encode_id(self.user_id)
        if self.session_id is not None:
            headers[SESSION_ID_HEADER] = encode_id(self.session_id)
        if self.metadata:
            headers[METADATA_HEADER] = encode_metadata(dict(self.metadata))
        return headers

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PrysmContext is immutable; use prysm_context.set() or a scope to change the context")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PrysmContext is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrysmContext):
            return NotImplemented
        return (self.user_id, self.session_id, dict(self.metadata)) == (
            other.user_id,
            other.session_id,
            dict(other.metadata),
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"PrysmContext(user_id={self.user_id!r}, session_id={self.session_id!r}, metadata={dict(self.metadata)!r})"
        )


#: The name this value type had before it took the seed SDK's name; kept for existing code.
ContextSnapshot = PrysmContext


class _Values:
    """One layer of context (global, or a scope merged with its parents), validated and encoded."""

    __slots__ = ("encoded_metadata", "headers", "metadata", "session_id", "user_id")

    def __init__(self, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any]) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.metadata = metadata
        self.encoded_metadata = encode_checked(metadata) if metadata else None
        self.headers: Headers = _headers(user_id, session_id, self.encoded_metadata)


class _Layer:
    """One entry of a scope, in the context that entered it: a link in that context's chain."""

    __slots__ = ("clean", "closed", "merged", "owner", "parent", "scope", "values")

    def __init__(self, scope: _Scope, parent: _Layer | None, values: _Values, clean: object) -> None:
        self.scope = scope
        self.parent = parent
        self.values = values  # merged with the open layers below it, as they were on entry
        self.owner = _owner()
        self.closed = False
        # `_epoch` at which no layer below this one was closed, or None: `values` is current then.
        self.clean = clean
        # (global values, epoch, effective values): what requests carry, until either changes.
        self.merged: tuple[_Values, object, _Values] | None = None


def current_headers() -> Headers:
    """The ``X-Prysm-*`` headers of the effective context, for the request being prepared now."""
    top = _scope.get()
    base = _global
    if top is None:
        return base.headers
    merged = top.merged
    if merged is not None and merged[0] is base and merged[1] is _epoch:
        return merged[2].headers
    return _refresh(top, base).headers


def get() -> PrysmContext:
    top = _scope.get()
    base = _global
    values = base
    if top is not None:
        merged = top.merged
        values = merged[2] if merged is not None and merged[0] is base and merged[1] is _epoch else _refresh(top, base)
    metadata = EMPTY_METADATA
    if values.encoded_metadata is not None:
        import json
        from types import MappingProxyType

        # Fresh objects: mutating a nested list of the value cannot reach the live context.
        metadata = MappingProxyType(json.loads(values.encoded_metadata))
    return PrysmContext._checked(values.user_id, values.session_id, metadata)


def _refresh(top: _Layer, base: _Values) -> _Values:
    """Merge ``top``'s chain with the global values and cache the result on ``top``."""
    epoch = _epoch
    try:
        scoped = _open_values(top)
    except ValueError:
        scoped = top.scope.own  # closing a middle layer let an outer value grow past the limit
    if scoped is None:
        values = base
    else:
        try:
            values = _merge(base, scoped)
        except ValueError:
            # The global metadata grew after this scope was entered and the merge no longer fits in a
            # header: send the scope's own values rather than fail the user's request.
            from ._log import log_once

            log_once(
                "context-too-large",
                "prysm_context: global and scoped metadata together exceed the header limit; "
                "sending the scope's metadata only",
            )
            values = _merge(_Values(base.user_id, base.session_id, EMPTY_METADATA), scoped)
    top.merged = (base, epoch, values)  # a benign race: any thread computes the same value
    return values


def _open_values(layer: _Layer) -> _Values | None:
    """The merged values of the layers of ``layer``'s chain that are still open (None: all closed)."""
    if layer.clean is _epoch:
        return layer.values
    epoch = _epoch
    chain: list[_Layer] = []
    node: _Layer | None = layer
    while node is not None:
        if not node.closed:
            chain.append(node)
        node = node.parent
    if len(chain) == _depth(layer):
        layer.clean = epoch
        return layer.values
    if not chain:
        return None
    values = chain[-1].scope.own
    for node in reversed(chain[:-1]):
        values = _merge(values, node.scope.own)
    return values


def _depth(layer: _Layer) -> int:
    depth = 0
    node: _Layer | None = layer
    while node is not None:
        depth += 1
        node = node.parent
    return depth


def _first_open(layer: _Layer | None) -> _Layer | None:
    while layer is not None and layer.closed:
        layer = layer.parent
    return layer


def _merge(base: _Values, scoped: _Values) -> _Values:
    if not base.metadata:
        metadata = scoped.metadata
    elif not scoped.metadata:
        metadata = base.metadata
    else:
        from types import MappingProxyType

        metadata = MappingProxyType({**base.metadata, **scoped.metadata})
    return _Values(
        scoped.user_id if scoped.user_id is not None else base.user_id,
        scoped.session_id if scoped.session_id is not None else base.session_id,
        metadata,
    )


def _owner() -> tuple[int, int]:
    """Who is running: (thread, asyncio task or 0). A scope exited by someone else is closed, not popped."""
    task = 0
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        task = id(asyncio.current_task())
    return threading.get_ident(), task


class _Scope:
    """``with prysm_context(...)``: scoped values for the block, or for each call when decorating."""

    __slots__ = ("_entries", "own")

    def __init__(self, user_id: str | None, session_id: str | None, metadata: Mapping[str, Any] | None) -> None:
        # Checked here, not on entry: a scope that cannot be sent fails where it is written.
        self.own = _Values(check_id(user_id, "user_id"), check_id(session_id, "session_id"), check_metadata(metadata))
        # Open entries, oldest first: an exit from a context that did not enter the scope finds its
        # layer here (one scope object may be entered by many threads and tasks at once).
        self._entries: dict[_Layer, None] = {}

    def __enter__(self) -> PrysmContext:
        self.enter()
        return get()

    def enter(self) -> None:
        """Enter without building the ``PrysmContext`` that ``with ... as ctx`` returns (for decorators)."""
        parent = _first_open(_scope.get())
        clean: object = _epoch
        if parent is None:
            values = self.own
        else:
            below = _open_values(parent)
            if parent.clean is not _epoch:
                clean = None
            values = self.own if below is None else _merge(below, self.own)
        base = _global
        merged = _merge(base, values)  # raises here, with nothing entered, if the merge cannot be sent
        layer = _Layer(self, parent, values, clean)
        layer.merged = (base, _epoch, merged)
        self._entries[layer] = None
        _scope.set(layer)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._exit()
        except Exception:  # never replace the user's exception, nor raise one of ours
            from ._log import log_once

            log_once("scope-exit", "prysm_context: leaving a scope failed; its values were dropped", exc_info=True)

    def _exit(self) -> None:
        global _epoch
        top = _scope.get()
        layer = top
        while layer is not None and (layer.scope is not self or layer.closed):
            layer = layer.parent
        if layer is None:
            # Not entered in this context: another thread, or a task finalising a generator.
            try:
                layer = next(reversed(self._entries))
            except (StopIteration, RuntimeError):
                return  # exited more often than entered: nothing of ours to undo
        self._entries.pop(layer, None)
        if layer is top and layer.owner == _owner():
            _scope.set(_first_open(layer.parent))  # the normal case: innermost scope, same thread/task
            return
        layer.closed = True
        _epoch = object()  # every cached merge is rebuilt without the closed layer
        if layer is top:
            _scope.set(_first_open(layer.parent))

    async def __aenter__(self) -> PrysmContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: _F) -> _F:
        """Use the scope as a decorator: each call of ``func`` runs inside it.

        Generator functions (sync and async) get the scope around each resumption of their body,
        never between ``yield``s, so the consumer never sees it.
        """
        from ._scoped_calls import in_scope

        return in_scope(self, func)


class _PrysmContextManager:
    """User, session and metadata tags for every request, global or scoped.

    ``prysm_context.set(user_id="u1")`` sets the global context, seen by every thread and task;
    ``with prysm_context(user_id="u2", metadata={"feature": "chat"}):`` overrides it for the block
    only (per thread / asyncio task); nested scopes and the global context merge their metadata,
    inner keys winning. ``@prysm_context(...)`` decorates sync and async functions and generators
    the same way. Values are read when each request is sent, so one client serves many users
    concurrently.
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
        user_id = check_id(user_id, "user_id")
        session_id = check_id(session_id, "session_id")
        checked = check_metadata(metadata)
        with _global_lock:
            old = _global
            new = _Values(
                user_id if user_id is not None else old.user_id,
                session_id if session_id is not None else old.session_id,
                checked if metadata is not None else old.metadata,
            )
            _global = new

    def get(self) -> PrysmContext:
        """The effective context here and now (global merged with the enclosing scopes)."""
        return get()

    def clear(self) -> None:
        """Clear the global context. Enclosing scopes keep their values until they exit."""
        global _global
        with _global_lock:
            _global = _EMPTY

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` bound to the current scope, for a thread pool: ``pool.submit(prysm_context.wrap(fn), x)``.

        Each call runs in a copy of the context as it is now (``contextvars.copy_context()``), as
        ``asyncio.to_thread`` does; ``ThreadPoolExecutor.submit`` and ``loop.run_in_executor`` alone
        carry only the global context into their worker threads.
        """
        from ._scoped_calls import in_current_context

        return in_current_context(func)

    def __repr__(self) -> str:
        return f"<prysm_context {get()!r}>"


def _headers(user_id: str | None, session_id: str | None, encoded_metadata: str | None) -> Headers:
    headers: list[tuple[str, str]] = []
    if user_id is not None:
        headers.append((USER_ID_HEADER, encode_id(user_id)))
    if session_id is not None:
        headers.append((SESSION_ID_HEADER, encode_id(session_id)))
    if encoded_metadata is not None:
        headers.append((METADATA_HEADER, encoded_metadata))
    return tuple(headers)


_EMPTY = _Values(None, None, EMPTY_METADATA)
# Re-entrant so that the fork handlers below cannot deadlock a signal handler that forks mid-set().
_global_lock = threading.RLock()
_global: _Values = _EMPTY
_scope: contextvars.ContextVar[_Layer | None] = contextvars.ContextVar("prysm_scope", default=None)
#: Replaced whenever a layer is closed away from the top of its context: cached merges made under an
#: older epoch are recomputed, skipping closed layers.
_epoch: object = object()


def _before_fork() -> None:
    # A child must not inherit the lock held by a thread that does not exist there.
    _global_lock.acquire()


def _after_fork_in_parent() -> None:
    _global_lock.release()


def _after_fork_in_child() -> None:
    global _global_lock
    _global_lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

prysm_context = _PrysmContextManager()
