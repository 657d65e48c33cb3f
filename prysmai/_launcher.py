"""``prysmai run -- COMMAND``: run a command with zero-code activation for its Python processes."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")


def launch_env(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` plus ``PRYSM_AUTO=1`` and prysmai's start-up hook first on ``PYTHONPATH``."""
    env = dict(environ)
    env["PRYSM_AUTO"] = "1"
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *existing])
    return env


def run(argv: Sequence[str]) -> int:
    """Replace this process with ``argv`` (on Windows, run it and return its exit code)."""
    from ._config import resolve_base_url, resolve_key

    try:
        resolve_key(None)
        resolve_base_url(None)
    except (TypeError, ValueError) as exc:
        # Say it once here, rather than once in every Python process the command starts.
        print(f"prysmai run: {exc} The command runs unobserved.", file=sys.stderr)
        env = dict(os.environ)
    else:
        env = launch_env(dict(os.environ))
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name != "nt":
        try:
            os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            print(f"prysmai run: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
            return 127
    import subprocess

    try:
        return subprocess.call(list(argv), env=env)
    except OSError as exc:
        print(f"prysmai run: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
