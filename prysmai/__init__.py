"""prysmai: observe every OpenAI call of an application through the Prysm proxy.

Three ways in, all routing through the same request hooks:

* ``prysmai.monitor(client)`` — one client;
* ``prysmai.instrument()`` — every OpenAI client of the process, including those created before;
* ``PRYSM_AUTO=1`` (or ``prysmai run -- python app.py``) — no code change at all.

``prysm_context`` tags requests with user, session and metadata; ``PrysmContext`` is the value it
holds. ``score()`` (and ``ascore()``) attaches a score -- user feedback, a reviewer's or an
evaluation's -- to a trace; ``last_trace_id()`` is the trace of this thread's or task's last call.
``status()`` tells where requests go (the proxy, or straight to the provider while the proxy is
down) and how many went each way. ``prysmai.client`` and ``prysmai.context`` re-export the same
objects under prysmai 0.1's import paths.

Names are loaded on first use, so ``import prysmai`` (done at every interpreter start under
``PRYSM_AUTO``) imports neither openai nor wrapt.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "ContextSnapshot",
    "InsecureBaseURLWarning",
    "PrysmClient",
    "PrysmContext",
    "ScoreError",
    "Status",
    "__version__",
    "ascore",
    "instrument",
    "is_instrumented",
    "last_trace_id",
    "monitor",
    "prysm_context",
    "score",
    "status",
    "uninstrument",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._config import InsecureBaseURLWarning
    from ._context import ContextSnapshot, PrysmContext, prysm_context
    from ._instrument import instrument, is_instrumented, uninstrument
    from ._monitor import PrysmClient, monitor
    from ._scores import ScoreError, ascore, last_trace_id, score
    from ._status import Status, status

_WHERE = {
    "ContextSnapshot": "._context",
    "PrysmContext": "._context",
    "prysm_context": "._context",
    "InsecureBaseURLWarning": "._config",
    "instrument": "._instrument",
    "is_instrumented": "._instrument",
    "uninstrument": "._instrument",
    "PrysmClient": "._monitor",
    "monitor": "._monitor",
    "ScoreError": "._scores",
    "ascore": "._scores",
    "last_trace_id": "._scores",
    "score": "._scores",
    "Status": "._status",
    "status": "._status",
}


#: Public submodules: prysmai 0.1's import paths (``from prysmai.client import monitor``).
_SUBMODULES = ("client", "context")


def __getattr__(name: str) -> object:
    module_name = _WHERE.get(name)
    if module_name is None and name not in _SUBMODULES:
        # Before any import: "from . import _import_hook" (PRYSM_AUTO's start-up) asks here first.
        raise AttributeError(f"module 'prysmai' has no attribute {name!r}")
    from importlib import import_module

    if module_name is None:
        return import_module(f".{name}", __name__)  # importing a submodule sets it on the package
    value = getattr(import_module(module_name, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
