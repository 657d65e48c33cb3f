"""Zero-code activation: ``PRYSM_AUTO=1`` runs ``instrument()`` at interpreter start-up.

Runs inside ``sitecustomize``, before the application: it must be cheap (openai, wrapt and even
our own settings are left for when the application imports openai), it must never stop the
application (a problem is one line on stderr and the application runs unobserved), and it must
let a ``sitecustomize`` the user already has run too.
"""

from __future__ import annotations

import os
import sys

AUTO_ENV = "PRYSM_AUTO"
_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no", "off")


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Whether ``PRYSM_AUTO`` asks for activation (``1``, ``true`` or ``yes``)."""
    return environ.get(AUTO_ENV, "").strip().lower() in _TRUE


def unrecognised(environ: os._Environ[str] | dict[str, str] = os.environ) -> str | None:
    """The value of ``PRYSM_AUTO`` if it is neither on (``1``/``true``/``yes``) nor off (unset, empty,
    ``0``/``false``/``no``/``off``): a typo that would silently leave the application unobserved."""
    value = environ.get(AUTO_ENV, "")
    return None if value.strip().lower() in _TRUE + _FALSE else value


def activate() -> bool:
    """Arrange for ``instrument()`` when openai is imported, if ``PRYSM_AUTO`` says so; never raises.

    Settings are read and checked when openai is imported, not at start-up: a process that never
    uses openai (pip, a test runner, a build tool inheriting the variable) pays for one tiny import
    hook and prints nothing. An explicit ``prysmai.instrument()`` or ``uninstrument()`` made by the
    application before that replaces this one.
    """
    if not enabled():
        odd = unrecognised()
        if odd is not None:
            sys.stderr.write(
                f"prysmai: {AUTO_ENV}={odd!r} is not understood, so this process runs unobserved: "
                f"use {AUTO_ENV}=1 (or true, yes) to activate, 0 (or false, no) to leave it off.\n"
            )
        return False
    try:
        if "openai" in sys.modules:  # imported by an earlier sitecustomize or .pth
            _instrument_from_env(sys.modules["openai"])
        else:
            from . import _import_hook

            _import_hook.install("openai", _instrument_from_env)
    except Exception as exc:
        _warn(exc)
        return False
    return True


def _instrument_from_env(module: object) -> None:
    from ._instrument import instrument, is_instrumented

    if is_instrumented():
        return
    try:
        instrument()
    except Exception as exc:  # our messages never contain the key
        _warn(exc)


def _warn(exc: BaseException) -> None:
    sys.stderr.write(f"prysmai: {AUTO_ENV} is set, but this process runs unobserved: {exc}\n")


def bootstrap(sitecustomize_file: str) -> None:
    """Body of a ``sitecustomize.py`` that ships prysmai: chain to the user's one, then activate.

    A ``sitecustomize`` is one global module name, so ours shadows any other one further down
    ``sys.path``; we import that one explicitly. While it runs, our folder is out of ``sys.path``
    and ``PYTHONPATH``, so neither it nor a child process it starts finds ours again.
    """
    try:
        _chain(os.path.dirname(os.path.abspath(sitecustomize_file)))
    finally:
        activate()


def _chain(our_dir: str) -> None:
    ours = sys.modules.pop("sitecustomize", None)
    saved_path = sys.path[:]
    saved_env = os.environ.get("PYTHONPATH")
    sys.path[:] = [p for p in sys.path if not _same_dir(p, our_dir)]
    if saved_env is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in saved_env.split(os.pathsep) if not _same_dir(p, our_dir))
    try:
        __import__("sitecustomize")
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            _report_user_error(exc)
    except Exception as exc:
        _report_user_error(exc)
    finally:
        sys.path[:] = saved_path
        if saved_env is not None:
            os.environ["PYTHONPATH"] = saved_env
        if ours is not None:
            sys.modules["sitecustomize"] = ours


def _report_user_error(exc: BaseException) -> None:
    # site.py would have printed this for the user's own sitecustomize; keep that behaviour.
    sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(exc).__name__}: {exc}\n")


def _same_dir(entry: str, directory: str) -> bool:
    try:
        return os.path.abspath(entry or os.curdir) == directory
    except (TypeError, ValueError):
        return False
