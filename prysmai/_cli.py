"""The ``prysmai`` console script: ``run`` (zero-code launcher) and the proxy's commands."""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prysmai",
        description="Observe every OpenAI call of an application through the Prysm proxy.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"prysmai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run a command with PRYSM_AUTO=1, so its OpenAI calls are observed with no code change",
        description=(
            "Run COMMAND with PRYSM_AUTO=1 and prysmai's start-up hook on PYTHONPATH, so every Python "
            "process it starts instruments openai at start-up. Needs PRYSM_API_KEY (and PRYSM_BASE_URL "
            "for a self-hosted proxy). Example: prysmai run -- python app.py"
        ),
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS ...]")
    run.set_defaults(handler=_run_command)

    doctor = sub.add_parser(
        "doctor",
        help="check the installation, the settings in effect and the proxy (exit code 1 on a problem)",
        description=(
            "Show versions, the settings in effect and where each comes from (keys masked), whether "
            "PRYSM_AUTO would activate, whether the proxy answers and accepts the key, and the fallback "
            "mode: one line per check, ok / warning / error, with what to do."
        ),
    )
    doctor.add_argument("--base-url", metavar="URL", help="the proxy URL to check (default: $PRYSM_BASE_URL)")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (default 5)")
    doctor.set_defaults(handler=_doctor_command)

    from ._proxy.cli import register as register_proxy_commands

    register_proxy_commands(sub)
    return parser


def _run_command(args: argparse.Namespace) -> int:
    from ._launcher import run

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("prysmai run: give the command to run, e.g. `prysmai run -- python app.py`", file=sys.stderr)
        return 2
    return run(argv)


def _doctor_command(args: argparse.Namespace) -> int:
    from ._doctor import main as doctor

    return doctor(args.base_url, args.json, args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prysmai`` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # inside the try: a piped stdout is written here, at the latest
    except BrokenPipeError:
        # The reader went away (`prysmai traces | head -2`): stop quietly, as cat does. Point stdout
        # at /dev/null so the interpreter's final flush cannot raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_STATUS
    return code


#: What a shell reports for a process killed by SIGPIPE (128 + 13), as for `cat` in the same place.
SIGPIPE_STATUS = 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
