"""The one place that patches other code: wrapt wrappers on class attributes, undone exactly.

A patch is the triple (class, attribute name, what the class's own ``__dict__`` held), read from
``__dict__`` rather than ``getattr`` so descriptors come back as they were stored. When the class
only inherits the attribute, the wrapper is added to its own ``__dict__`` and undo deletes it.
Undo restores an attribute only while it still *is* our wrapper: a wrapper another tool put on
top of ours is left in place, and ours inside it is switched off through ``Patch.active``.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    WrapperFunction = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

_MISSING = object()


class Patch:
    """One applied patch. Wrappers check ``active`` on every call and pass through when it is off."""

    __slots__ = ("active", "name", "original", "owner", "wrapper")

    def __init__(self, owner: type, name: str, original: object) -> None:
        self.owner = owner
        self.name = name
        self.original = original  # _MISSING when the attribute was inherited
        self.wrapper: object = None
        self.active = True

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"<Patch {self.owner.__qualname__}.{self.name} {state}>"


class PatchRegistry:
    """Applies wrappers and undoes all of them; thread-safe and idempotent per attribute."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._patches: list[Patch] = []

    def acquire_for_fork(self) -> None:
        """Hold the lock across ``fork()``, so no child inherits it held by a thread it does not have."""
        self._lock.acquire()

    def release_after_fork(self, in_child: bool) -> None:
        if in_child:
            self._lock = threading.RLock()  # the child's only thread is the one that forked
        else:
            self._lock.release()

    @property
    def patches(self) -> tuple[Patch, ...]:
        return tuple(self._patches)

    def wrap(self, owner: type, name: str, make_wrapper: Callable[[Patch], WrapperFunction]) -> Patch:
        """Wrap ``owner.name`` with ``make_wrapper(patch)`` unless our live patch is already there."""
        import wrapt

        # Positional arguments only: wrapt 2 renamed the first parameter of its helpers.
        return self._apply(owner, name, lambda patch, target: wrapt.FunctionWrapper(target, make_wrapper(patch)))

    def replace(self, owner: type, name: str, make_method: Callable[[Patch, Any], Callable[..., Any]]) -> Patch:
        """Like :meth:`wrap`, but put ``make_method(patch, original)``, a plain function, in its place.

        For a method called on every request: binding a plain function costs a fraction of binding a
        wrapt wrapper. The function must call ``original`` bound to its instance
        (``original.__get__(self, type(self))``) and check ``patch.active``.
        """
        return self._apply(owner, name, make_method)

    def _apply(self, owner: type, name: str, build: Callable[[Patch, Any], object]) -> Patch:
        with self._lock:
            for patch in self._patches:
                if patch.owner is owner and patch.name == name:
                    if self.is_live(patch):
                        return patch
                    # Another tool removed our wrapper (restoring what it saw when it wrapped first):
                    # ours, switched off, gives way to a new one on whatever is there now.
                    patch.active = False
                    self._patches.remove(patch)
                    log_lost(patch, "re-applied")
                    break
            original = owner.__dict__.get(name, _MISSING)
            target = original if original is not _MISSING else _inherited(owner, name)
            patch = Patch(owner, name, original)
            patch.wrapper = build(patch, target)
            setattr(owner, name, patch.wrapper)
            self._patches.append(patch)
            return patch

    def is_live(self, patch: Patch) -> bool:
        """Whether ``patch``'s wrapper is still called: on the class, or under wrappers put on top of it."""
        current = patch.owner.__dict__.get(patch.name, _MISSING)
        for _ in range(32):  # a bound on chains of wrappers, in case one refers to itself
            if current is patch.wrapper:
                return True
            try:
                # wrapt's wrappers and functools.wraps both name what they wrap `__wrapped__`.
                current = getattr(current, "__wrapped__", _MISSING)
            except Exception:
                return False
            if current is _MISSING:
                return False
        return False

    def lost(self) -> list[Patch]:
        """The patches whose wrapper another tool has removed: requests no longer pass through them."""
        with self._lock:
            return [patch for patch in self._patches if not self.is_live(patch)]

    def undo_all(self) -> list[Patch]:
        """Switch every patch off and restore what can be restored; return those left in place.

        Goes on past failures, so one stubborn attribute cannot leave the others patched. A patch
        whose wrapper another tool already removed has nothing to restore and is not returned.
        """
        left: list[Patch] = []
        with self._lock:
            patches, self._patches = self._patches, []
            for patch in reversed(patches):
                patch.active = False
                try:
                    if patch.owner.__dict__.get(patch.name) is not patch.wrapper:
                        if self.is_live(patch):
                            left.append(patch)  # another wrapper sits on top of ours: leave it
                    elif patch.original is _MISSING:
                        delattr(patch.owner, patch.name)
                    else:
                        setattr(patch.owner, patch.name, patch.original)
                except Exception:
                    from ._log import log_once

                    log_once(f"undo-{patch.name}", f"prysmai could not restore {patch!r}", exc_info=True)
                    left.append(patch)
        return left


def _inherited(owner: type, name: str) -> object:
    for klass in owner.__mro__[1:]:
        if name in klass.__dict__:
            return klass.__dict__[name]
    raise AttributeError(f"{owner.__qualname__} has no attribute {name!r} to patch")


def log_lost(patch: Patch, outcome: str) -> None:
    import logging

    now = patch.owner.__dict__.get(patch.name, _MISSING)
    holds = "nothing of its own" if now is _MISSING else repr(now)
    logging.getLogger("prysmai").warning(
        "prysmai's wrapper on %s.%s had been removed by another library (the class now holds %s); %s",
        patch.owner.__qualname__,
        patch.name,
        holds,
        outcome,
    )
