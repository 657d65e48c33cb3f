"""Run a callback once ``openai`` has been imported, without importing it ourselves.

wrapt has post-import hooks, but ``import wrapt`` costs tens of milliseconds (it imports asyncio
and importlib.metadata), and this runs at every interpreter start under ``PRYSM_AUTO=1``. A
meta-path finder costs nothing until ``openai`` is imported: it finds the real spec through the
other finders and wraps its loader so the callback runs after the module has executed.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    Callback = Callable[[ModuleType], None]


class _Finder:
    """Finds nothing itself: for one module name, it wraps the loader the other finders return."""

    def __init__(self, name: str, callback: Callback) -> None:
        self.name = name
        self.callback = callback

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _Finder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec: ModuleSpec | None = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _Loader(loader, self.callback)  # type: ignore[assignment]
        return spec


class _Loader:
    """Delegates to the real loader, then runs the callback; the module keeps the real loader."""

    def __init__(self, loader: object, callback: Callback) -> None:
        self._loader = loader
        self._callback = callback

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first, so importlib.resources and friends never see this one.
        module.__loader__ = self._loader  # type: ignore[assignment]
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader  # type: ignore[assignment]
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        try:
            self._callback(module)
        except Exception:  # a failing hook must never fail the user's `import openai`
            from ._log import log_once

            log_once("import-hook", "prysmai could not instrument openai on import", exc_info=True)


def install(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` after the next import of ``name`` (replacing an earlier hook)."""
    uninstall(name)
    sys.meta_path.insert(0, _Finder(name, callback))


def uninstall(name: str) -> None:
    """Remove the hook for ``name``, if any."""
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _Finder) and f.name == name)]
