"""``prysmai ui``: the dashboard alone, read-only, over an existing store.

Imported on every ``prysmai`` invocation: standard library only at module level.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config.settings import DEFAULT_HOST, DEMO_UPSTREAM, default_db_path
from .common import LOOPBACK, add_config, add_db, config_path, err, needs_extra, tenancy_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_UI_PORT = 3001


def add_parser(subparsers: Any) -> None:
    """Add ``ui`` to ``prysmai``."""
    ui = subparsers.add_parser(
        "ui",
        help="serve the dashboard read-only over an existing trace store (no proxying)",
        description=(
            "Serve the web dashboard over an existing trace store, read-only: no requests are proxied and no "
            "traces are written. Log in with one of the keys given here. See docs/proxy.md, 'The dashboard'."
        ),
    )
    add_db(ui)
    ui.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    ui.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help=f"port (default {DEFAULT_UI_PORT}; 0 = any)")
    ui.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="sk-prysm-...",
        help="accept this key to log in (repeatable; also PRYSM_PROXY_KEYS and --keys-file)",
    )
    ui.add_argument("--keys-file", metavar="PATH", help="file with one accepted key per line")
    add_config(ui)
    ui.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    status = needs_extra()
    if status is not None:
        return status
    from ..config.keys import KeyConfigError, collect_keys, generate_key
    from ..store import Store, StoreError
    from ..store.postgres.engine import is_postgres, masked
    from ..web.auth import shared_cookie_name
    from ..web.standalone import serve_read_only

    db_path = args.db or default_db_path()
    shared = is_postgres(db_path)
    if not shared and not os.path.exists(db_path):
        err(f"no trace store at {db_path} (give --db PATH; `prysmai proxy` creates one)")
        return 1
    try:
        keys = collect_keys(args.key, args.keys_file)
    except (KeyConfigError, OSError) as exc:
        err(f"key configuration: {exc}")
        return 2
    try:
        # Brings a store written by an older prysmai to the current schema (its traces are kept as
        # they are); the dashboard itself only reads, on read-only connections.
        store = Store.existing(db_path)
    except (StoreError, OSError) as exc:
        err(str(exc))
        return 1
    if store is None:
        err(f"{masked(db_path)} holds no traces table (is it a prysmai trace store?)")
        return 1
    if not keys and config_path(args) is None:
        keys = [generate_key()]
        print(
            "prysmai ui: no key configured (--key, PRYSM_PROXY_KEYS, --keys-file or --config); "
            f"log in with this generated key (this run only):\n\n    {keys[0]}\n",
            file=sys.stderr,
        )
    tenancy, config_error = tenancy_of(args, keys, DEMO_UPSTREAM)
    if config_error is not None:
        store.close()
        err(config_error)
        return 2
    port = args.port
    if port == 0:  # pick it now so the banner can name it
        import socket

        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.bind((args.host, 0))
            port = probe.getsockname()[1]
    if args.host not in LOOPBACK:
        print(f"prysmai ui: listening on {args.host}, reachable from other machines.", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"prysmai ui: dashboard at http://{host}:{port}/ (read-only) over {masked(db_path)}", file=sys.stderr)
    from ..server.serve import guard_options

    shares: dict[str, Any] = {}
    if shared:  # log-ins shared with the proxies of the database, as they share them between them
        shares = {"cookie": shared_cookie_name(db_path), "sharing": _sharing(store, port)}
    # The proxy's connection guard, with its defaults: header and body timeouts, connection cap.
    serve_read_only(store, tenancy, args.host, port, **shares, **guard_options())
    return 0


def _sharing(store: Any, port: int) -> Any:
    """What shares the dashboard's log-ins with the proxies on the PostgreSQL store of ``store``:
    the proxies' sharing thread, with limits of its own that stay empty (nothing is proxied here)."""
    import socket

    from ..server.limits import Limits
    from ..server.sharing import Sharing

    name = f"{socket.gethostname()[:40]}-ui-{port}"
    return lambda sessions: Sharing(store.engine, name, Limits(), sessions)
