"""What every ``prysmai`` command of the proxy shares: the proxy extra check, the error line (or
JSON error), the ``--db`` and ``--config`` flags, and opening the store for reading.

Imported on every ``prysmai`` invocation: standard library only at module level.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config.settings import DB_ENV, default_db_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..store import Store

# Not `pip install 'prysmai[proxy]'`: on the public registry that name is another release line.
EXTRA_MESSAGE = (
    "the proxy needs its extra, uvicorn[standard] and aiohttp: "
    "pip install '.[proxy]' in a clone of prysmai (or pip install 'PRYSMAI_WHEEL[proxy]')"
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def has_extra() -> bool:
    try:
        import aiohttp  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def needs_extra() -> int | None:
    """Exit status 2 after saying the proxy extra is missing; ``None`` when it is there."""
    if has_extra():
        return None
    err(EXTRA_MESSAGE)
    return 2


def err(message: str) -> None:
    print(f"prysmai: {message}", file=sys.stderr)


def fail(args: argparse.Namespace, message: str, code: str, status: int) -> int:
    """An error: JSON on stderr under --json (the API's error shape), else a plain line."""
    if getattr(args, "json", False):
        from ..api import jsonshape

        print(jsonshape.dumps(jsonshape.error(message, code), pretty=False), file=sys.stderr)
    else:
        err(message)
    return status


def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help=f"trace store (default: ${DB_ENV}, else $XDG_DATA_HOME/prysmai/traces.db, "
        "else ~/.local/share/prysmai/traces.db)",
    )


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="projects config file (TOML; also $PRYSM_CONFIG): projects, their keys, providers and limits; "
        "replaces --key/--keys-file and --upstream (see docs/projects.md)",
    )


def config_path(args: argparse.Namespace) -> str | None:
    from ..config.file import CONFIG_ENV

    return args.config or os.environ.get(CONFIG_ENV) or None


def tenancy_of(args: argparse.Namespace, keys: list[str], upstream: str, policy: Any = None) -> tuple[Any, str | None]:
    """The tenancy the command runs with (:func:`~..config.file.load_tenancy`; ``policy``: the
    storage policy of the proxy's flags), or an error line instead (never containing a key)."""
    from ..config.file import ConfigError, load_tenancy
    from ..config.settings import UPSTREAM_KEY_ENV

    path = config_path(args)
    if path is not None and (args.key or args.keys_file):
        return None, "--config names the keys: drop --key/--keys-file, or put those keys in the config's projects"
    try:
        return load_tenancy(path, keys, upstream, os.environ.get(UPSTREAM_KEY_ENV) or None, policy), None
    except ConfigError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read the config file {path}: {exc.strerror or exc}"


def open_store(args: argparse.Namespace) -> tuple[Store | None, int]:
    """The store of ``--db`` opened for reading (no time limit: the terminal waits), and 0; or
    ``None`` and the exit status after saying why."""
    from ..store import Store, StoreError

    path = args.db or default_db_path()
    try:
        store = Store.existing(path, read_time_limit=None)
    except StoreError as exc:
        return None, fail(args, str(exc), "store_unreadable", 1)
    if store is None:
        message = f"No trace store at {path} yet. Start one with `prysmai proxy` (or try `prysmai demo`)."
        if getattr(args, "json", False):
            return None, fail(args, message, "store_not_found", 1)
        print(message)
        return None, 1
    return store, 0
