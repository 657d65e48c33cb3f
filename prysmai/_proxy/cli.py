"""``prysmai proxy | traces | stats | demo``.

Imported by ``prysmai._cli`` on every invocation: standard library only at module level; the
proxy's extra (uvicorn, aiohttp) is imported inside the handlers that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import (
    DB_ENV,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_UPSTREAM,
    DEFAULT_WHEN_BEHIND,
    DEMO_UPSTREAM,
    PRICING_ENV,
    UPSTREAM_ENV,
    UPSTREAM_KEY_ENV,
    default_db_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXTRA_MESSAGE = "the proxy needs its extra: pip install 'prysmai[proxy]'"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _has_extra() -> bool:
    try:
        import aiohttp  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def _err(message: str) -> None:
    print(f"prysmai: {message}", file=sys.stderr)


def _json_text(obj: Any, **kw: Any) -> str:
    """Exact JSON; an unpaired surrogate in a stored value (not valid Unicode) is written as its
    ``\\uXXXX`` escape, which a JSON reader decodes back to the same value, instead of crashing print()."""
    text = json.dumps(obj, ensure_ascii=False, **kw)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help=f"trace store (default: ${DB_ENV}, else {default_db_path({})} under $XDG_DATA_HOME or ~/.local/share)",
    )


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="only this model (as requested by the client)")
    p.add_argument("--user", help="only this user id")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--status", choices=("success", "error", "timeout", "cancelled"), help="only this status")
    p.add_argument("--since", metavar="WHEN", help="only newer traces: 15m, 2h, 7d, or an ISO date/time")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def register(subparsers: Any) -> None:
    """Add ``proxy``, ``traces`` (and ``traces show``), ``stats`` and ``demo`` to ``prysmai``."""
    proxy = subparsers.add_parser(
        "proxy",
        help="run the self-hosted capture proxy (OpenAI-compatible, under /api/v1)",
        description=(
            "Serve an OpenAI-compatible API under /api/v1 that checks a Prysm key, forwards each request "
            "to the upstream and records it as a trace in a local SQLite store. See docs/proxy.md."
        ),
    )
    proxy.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    proxy.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)"
    )
    _add_db(proxy)
    proxy.add_argument(
        "--upstream",
        metavar="URL",
        default=None,
        help=f"provider base URL (default ${UPSTREAM_ENV}, else {DEFAULT_UPSTREAM}); "
        f"'{DEMO_UPSTREAM}' = the built-in offline model",
    )
    proxy.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="sk-prysm-...",
        help="accept this Prysm key (repeatable; also PRYSM_PROXY_KEYS=k1,k2 and --keys-file)",
    )
    proxy.add_argument(
        "--keys-file", metavar="PATH", help="file with one accepted key per line (also PRYSM_PROXY_KEYS_FILE)"
    )
    proxy.add_argument(
        "--pricing", metavar="PATH", help=f"JSON price file overriding the shipped table (also ${PRICING_ENV})"
    )
    proxy.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger request bodies get 413"
    )
    proxy.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help="traces waiting to be written before the writer counts as behind (see --when-behind)",
    )
    proxy.add_argument(
        "--when-behind",
        choices=("block", "drop"),
        default=DEFAULT_WHEN_BEHIND,
        help="when --queue-size traces are waiting: hold new requests until the writer catches up "
        f"(block) or answer them and drop their traces, counted (drop); default {DEFAULT_WHEN_BEHIND}",
    )
    proxy.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="SECONDS",
        help=f"time a client has to send a request's headers (default {DEFAULT_HEADER_TIMEOUT:g}); then 408",
    )
    proxy.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"concurrent client connections (default {DEFAULT_MAX_CONNECTIONS}); beyond it 503",
    )
    proxy.add_argument(
        "--max-header-bytes",
        type=int,
        default=DEFAULT_MAX_HEADER_BYTES,
        help=f"request line + headers (default {DEFAULT_MAX_HEADER_BYTES}); beyond it 431",
    )
    proxy.add_argument(
        "--upstream-timeout", type=float, default=600.0, metavar="SECONDS", help="upstream read timeout (default 600)"
    )
    proxy.add_argument(
        "--no-stream-usage",
        action="store_true",
        help="do not add stream_options.include_usage to streamed requests (streams then have no token counts)",
    )
    proxy.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    proxy.set_defaults(handler=_proxy_command)

    traces = subparsers.add_parser(
        "traces",
        help="list captured traces (or `traces show ID` for one)",
        description="List captured traces, newest first. `prysmai traces show TRACE_ID` prints one in full.",
    )
    _add_db(traces)
    _add_filters(traces)
    traces.add_argument("--limit", type=int, default=50, help="at most this many rows, 1 to 10000 (default 50)")
    traces.set_defaults(handler=_traces_command)
    traces_sub = traces.add_subparsers(dest="traces_command", metavar="show")
    show = traces_sub.add_parser("show", help="one trace in full (an id prefix of 6+ characters works)")
    show.add_argument("trace_id", metavar="TRACE_ID")
    # SUPPRESS: a sub-parser's defaults would overwrite `traces --db X show ID`'s values.
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    show.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="trace store (as for traces)")
    show.set_defaults(handler=_show_command)

    stats = subparsers.add_parser("stats", help="requests, error rate, tokens, cost and latency, by model")
    _add_db(stats)
    _add_filters(stats)
    stats.set_defaults(handler=_stats_command)

    demo = subparsers.add_parser(
        "demo",
        help="start a proxy with the offline model, run a sample app through it, show the traces",
        description=(
            "Start the proxy in-process on a free port with a fresh store and the built-in offline model, "
            "run a small app under prysmai.instrument() (plain, streamed, async, and per-user calls), "
            "then print the captured traces and stats. No network, no account."
        ),
    )
    demo.add_argument("--real", action="store_true", help=f"use the real provider ({UPSTREAM_KEY_ENV} required)")
    demo.add_argument("--model", default=None, help="model for the sample calls (default gpt-4o-mini)")
    demo.add_argument(
        "--keep-db", metavar="PATH", help="write the traces to PATH and keep it (default: a temporary store)"
    )
    demo.set_defaults(handler=_demo_command)


# -- handlers ------------------------------------------------------------------------------------
def _proxy_command(args: argparse.Namespace) -> int:
    if not _has_extra():
        _err(EXTRA_MESSAGE)
        return 2
    import logging

    from .app import ProxyApp
    from .config import ProxyConfig
    from .keys import KeyConfigError, collect_keys, generate_key
    from .pricing import PriceTable, PricingError
    from .server import serve
    from .store import StoreError, open_db

    logging.basicConfig(format="prysmai proxy: %(levelname)s %(message)s")
    logging.getLogger("prysmai.proxy").setLevel(args.log_level.upper())
    try:
        keys = collect_keys(args.key, args.keys_file)
    except (KeyConfigError, OSError) as exc:
        _err(f"key configuration: {exc}")
        return 2
    if not keys:
        key = generate_key()
        keys = [key]
        print(
            "prysmai proxy: no key configured (--key, PRYSM_PROXY_KEYS or --keys-file); "
            f"accepting this generated key for this run only:\n\n    {key}\n",
            file=sys.stderr,
        )
    upstream = args.upstream or os.environ.get(UPSTREAM_ENV) or DEFAULT_UPSTREAM
    if upstream != DEMO_UPSTREAM and not upstream.startswith(("http://", "https://")):
        _err(f"--upstream must be an http(s) URL or '{DEMO_UPSTREAM}', not {upstream!r}")
        return 2
    for name, value in (
        ("--header-timeout", args.header_timeout),
        ("--max-connections", args.max_connections),
        ("--max-header-bytes", args.max_header_bytes),
        ("--queue-size", args.queue_size),
    ):
        if not value > 0:
            _err(f"{name} must be greater than 0")
            return 2
    db_path = args.db or default_db_path()
    try:
        prices = PriceTable.load(args.pricing or os.environ.get(PRICING_ENV) or None)
        open_db(db_path).close()
    except (PricingError, StoreError, OSError) as exc:
        _err(str(exc))
        return 1
    port = args.port
    if port == 0:
        # Pick the free port now so the banner can name it (the window before uvicorn binds it again
        # is small; this is for local use).
        import socket

        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.bind((args.host, 0))
            port = probe.getsockname()[1]
    config = ProxyConfig(
        keys=keys,
        db_path=db_path,
        upstream=upstream,
        upstream_api_key=os.environ.get(UPSTREAM_KEY_ENV) or None,
        host=args.host,
        port=port,
        upstream_timeout=args.upstream_timeout,
        max_body_bytes=args.max_body_bytes,
        queue_size=args.queue_size,
        inject_stream_usage=not args.no_stream_usage,
        when_behind=args.when_behind,
        header_timeout=args.header_timeout,
        max_client_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes,
    )
    if upstream != DEMO_UPSTREAM and config.upstream_api_key is None:
        print(
            f"prysmai proxy: {UPSTREAM_KEY_ENV} is not set: each request must bring its provider key in "
            "X-Prysm-Upstream-Key (prysmai: upstream_api_key=...).",
            file=sys.stderr,
        )
    if args.host not in _LOOPBACK:
        print(f"prysmai proxy: listening on {args.host}, reachable from other machines.", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"prysmai proxy: http://{host}:{port}/api/v1 -> {upstream}; {len(keys)} key(s); traces in {db_path}",
        file=sys.stderr,
    )
    serve(ProxyApp(config, prices), log_level="warning" if args.log_level == "info" else args.log_level)
    return 0


def _open_store(args: argparse.Namespace) -> Any:
    from .store import StoreError, open_existing

    path = args.db or default_db_path()
    try:
        conn = open_existing(path)
    except StoreError as exc:
        _err(str(exc))
        return None
    if conn is None:
        print(f"No trace store at {path} yet. Start one with `prysmai proxy` (or try `prysmai demo`).")
    return conn


def _filters(args: argparse.Namespace) -> dict[str, Any] | None:
    from .filters import filters_from_args

    try:
        return filters_from_args(args)
    except ValueError as exc:
        _err(str(exc))
        return None


def _traces_command(args: argparse.Namespace) -> int:
    from .report import traces_table
    from .store import list_traces

    filters = _filters(args)
    if filters is None:
        return 2
    conn = _open_store(args)
    if conn is None:
        return 1
    with conn:
        rows = list_traces(conn, limit=args.limit, **filters)
    conn.close()
    if args.json:
        print(_json_text(rows, indent=2))
    elif not rows:
        print("No traces" + (" match these filters." if filters else " yet: send a request through the proxy."))
    else:
        print(traces_table(rows))
    return 0


def _show_command(args: argparse.Namespace) -> int:
    from .report import trace_detail
    from .store import get_trace

    conn = _open_store(args)
    if conn is None:
        return 1
    trace = get_trace(conn, args.trace_id)
    conn.close()
    if trace is None:
        _err(f"no trace {args.trace_id!r} (give the id, or a unique prefix of 6+ characters)")
        return 1
    print(_json_text(trace, indent=2) if args.json else trace_detail(trace))
    return 0


def _stats_command(args: argparse.Namespace) -> int:
    from .report import stats_text
    from .store import compute_stats

    filters = _filters(args)
    if filters is None:
        return 2
    conn = _open_store(args)
    if conn is None:
        return 1
    stats = compute_stats(conn, **filters)
    conn.close()
    if args.json:
        print(_json_text(stats, indent=2))
    elif not stats["requests"]:
        print("No traces" + (" match these filters." if filters else " yet: send a request through the proxy."))
    else:
        print(stats_text(stats))
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    if not _has_extra():
        _err(EXTRA_MESSAGE)
        return 2
    from .demo import run_demo

    return run_demo(real=args.real, keep_db=args.keep_db, model=args.model)
