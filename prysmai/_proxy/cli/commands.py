"""``prysmai proxy | traces | stats | demo``.

Imported by ``prysmai._cli`` on every invocation: standard library only at module level; the
proxy's extra (uvicorn, aiohttp) is imported inside the handlers that need it.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config.settings import (
    DB_ENV,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TRACE_WRITER,
    DEFAULT_UPSTREAM,
    DEFAULT_WHEN_BEHIND,
    DEMO_UPSTREAM,
    PRICING_ENV,
    TRACE_WRITERS,
    UPSTREAM_ENV,
    UPSTREAM_KEY_ENV,
    default_db_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any

# Not `pip install 'prysmai[proxy]'`: on the public registry that name is another release line.
EXTRA_MESSAGE = (
    "the proxy needs its extra, uvicorn[standard] and aiohttp: "
    "pip install '.[proxy]' in a clone of prysmai (or pip install 'PRYSMAI_WHEEL[proxy]')"
)
#: Printed under ``prysmai proxy --help``: what an installed package cannot otherwise show.
PROXY_ESSENTIALS = """\
essentials:
  keys     --key / PRYSM_PROXY_KEYS / --keys-file: 'sk-prysm-' then 16+ characters. With none, a key is
           generated and printed for this run only. Make one:
           python3 -c "import secrets; print('sk-prysm-' + secrets.token_urlsafe(24))"
  clients  base_url=http://HOST:PORT/api/v1 and the Prysm key as api_key (prysmai: prysm_key=...).
           The provider key is OPENAI_API_KEY in the proxy's environment, or X-Prysm-Upstream-Key per request.
  store    SQLite (WAL) created 0600 in a 0700 directory; holds every prompt and answer (never keys).
           Read it with `prysmai traces`, `prysmai stats`, or GET /api/v1/traces, /api/v1/stats (key needed).
  health   GET /api/v1/health (no key): status and the store's queued/written/dropped counters.
  network  Plain http on 127.0.0.1 by default. Beyond loopback, use --ssl-certfile/--ssl-keyfile or a
           TLS-terminating reverse proxy in front (keep --host 127.0.0.1 then).
  stop     Ctrl-C or SIGTERM: in-flight requests finish (up to 10 s), pending traces are written, exit 0.

Full reference: docs/proxy.md and docs/operations.md (systemd, nginx, security) in the source tree and sdist."""
DEFAULT_UI_PORT = 3001
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


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help=f"trace store (default: ${DB_ENV}, else $XDG_DATA_HOME/prysmai/traces.db, "
        "else ~/.local/share/prysmai/traces.db)",
    )


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", metavar="NAME", help="only this project's traces (without a config file: default)")
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
            "to the upstream and records it as a trace in a local SQLite store."
        ),
        epilog=PROXY_ESSENTIALS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    _add_config(proxy)
    proxy.add_argument(
        "--pricing", metavar="PATH", help=f"JSON price file overriding the shipped table (also ${PRICING_ENV})"
    )
    proxy.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help="larger request bodies get 413 (default %(default)s = 32 MiB)",
    )
    proxy.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help="traces waiting to be written before the writer counts as behind (see --when-behind; default %(default)s)",
    )
    proxy.add_argument(
        "--when-behind",
        choices=("block", "drop"),
        default=DEFAULT_WHEN_BEHIND,
        help="when --queue-size traces are waiting: hold new requests until the writer catches up "
        f"(block) or answer them and drop their traces, counted (drop); default {DEFAULT_WHEN_BEHIND}",
    )
    proxy.add_argument(
        "--trace-writer",
        choices=TRACE_WRITERS,
        default=DEFAULT_TRACE_WRITER,
        help="build and write trace rows in a child process, off the proxy's interpreter (process), "
        f"or on a thread of the proxy (thread); default {DEFAULT_TRACE_WRITER}",
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
        metavar="N",
        help=f"concurrent client connections (default {DEFAULT_MAX_CONNECTIONS}); beyond it 503",
    )
    proxy.add_argument(
        "--max-header-bytes",
        type=int,
        default=DEFAULT_MAX_HEADER_BYTES,
        metavar="BYTES",
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
    proxy.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="(default info)"
    )
    proxy.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text: one timestamped line per record (default); json: one JSON object per line",
    )
    proxy.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (client, method, path, status; never bodies or keys)",
    )
    proxy.add_argument("--ssl-certfile", metavar="PATH", help="serve https with this certificate (PEM)")
    proxy.add_argument("--ssl-keyfile", metavar="PATH", help="the certificate's private key (PEM)")
    proxy.set_defaults(handler=_proxy_command)

    traces = subparsers.add_parser(
        "traces",
        help="list captured traces (or `traces show ID` for one)",
        description="List captured traces, newest first. `prysmai traces show TRACE_ID` prints one in full.",
        usage="prysmai traces [options]\n       prysmai traces show TRACE_ID [--json] [--db PATH]",
    )
    _add_db(traces)
    _add_filters(traces)
    traces.add_argument("--limit", type=int, default=50, help="at most this many rows, 1 to 1000 (default 50)")
    traces.set_defaults(handler=_traces_command)
    # The help is the group's, not the choice's: argparse would otherwise list `show` twice.
    traces_sub = traces.add_subparsers(
        dest="traces_command",
        title="one trace",
        metavar="show TRACE_ID",
        help="one trace in full (the id, or a unique prefix of 8+ characters)",
    )
    show = traces_sub.add_parser("show", description="Print one trace in full.")
    show.add_argument("trace_id", metavar="TRACE_ID")
    # SUPPRESS: a sub-parser's defaults would overwrite `traces --db X show ID`'s values.
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    show.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="trace store (as for traces)")
    show.add_argument(
        "--project", metavar="NAME", default=argparse.SUPPRESS, help="only if the trace is in this project"
    )
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
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then keep the proxy and its dashboard running (prints the URL and a key to log in; Ctrl+C stops)",
    )
    demo.set_defaults(handler=_demo_command)

    ui = subparsers.add_parser(
        "ui",
        help="serve the dashboard read-only over an existing trace store (no proxying)",
        description=(
            "Serve the web dashboard over an existing trace store, read-only: no requests are proxied and no "
            "traces are written. Log in with one of the keys given here. See docs/proxy.md, 'The dashboard'."
        ),
    )
    _add_db(ui)
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
    _add_config(ui)
    ui.set_defaults(handler=_ui_command)

    from .keys import add_parser as add_keys_commands

    add_keys_commands(subparsers)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="projects config file (TOML; also $PRYSM_CONFIG): projects, their keys, providers and limits; "
        "replaces --key/--keys-file and --upstream (see docs/projects.md)",
    )


def _config_path(args: argparse.Namespace) -> str | None:
    from ..config.file import CONFIG_ENV

    return args.config or os.environ.get(CONFIG_ENV) or None


def _load_tenancy(args: argparse.Namespace, keys: list[str], upstream: str) -> tuple[Any, str | None]:
    """The tenancy the command runs with, and an error line instead (never containing a key)."""
    from ..config.file import ConfigError, load
    from ..config.projects import flat

    path = _config_path(args)
    if path is None:
        return flat(keys, upstream, os.environ.get(UPSTREAM_KEY_ENV) or None), None
    if args.key or args.keys_file:
        return None, "--config names the keys: drop --key/--keys-file, or put those keys in the config's projects"
    try:
        return load(path), None
    except ConfigError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read the config file {path}: {exc.strerror or exc}"


# -- handlers ------------------------------------------------------------------------------------
def _proxy_command(args: argparse.Namespace) -> int:
    if not _has_extra():
        _err(EXTRA_MESSAGE)
        return 2
    from ..server import logs

    # Every line from here on, ours and uvicorn's, has one format (see .logs).
    with logs.configured(args.log_level, args.log_format) as log:
        return _run_proxy(args, log)


def _run_proxy(args: argparse.Namespace, log: logging.Logger) -> int:
    from ..config.keys import KeyConfigError, collect_keys, generate_key
    from ..config.pricing import PriceTable, PricingError
    from ..config.settings import ProxyConfig
    from ..server import listen
    from ..server.app import ProxyApp
    from ..server.serve import serve
    from ..store import private_files
    from ..store.writer import StoreError, open_db

    config_file = _config_path(args)
    keys: list[str] = []
    generated = None
    if config_file is None:
        try:
            keys = collect_keys(args.key, args.keys_file)
        except (KeyConfigError, OSError) as exc:
            log.error("key configuration: %s", exc)
            return 2
        if not keys:
            generated = generate_key()
            keys = [generated]
    elif args.upstream:
        log.error("--config names each project's providers: drop --upstream, or add it to the config as a provider")
        return 2
    upstream = args.upstream or os.environ.get(UPSTREAM_ENV) or DEFAULT_UPSTREAM
    if upstream != DEMO_UPSTREAM and not upstream.startswith(("http://", "https://")):
        log.error("--upstream must be an http(s) URL or '%s', not %r", DEMO_UPSTREAM, upstream)
        return 2
    tenancy, config_error = _load_tenancy(args, keys, upstream)
    if config_error is not None:
        log.error("%s", config_error)
        return 2
    tls_error = _check_tls(args.ssl_certfile, args.ssl_keyfile)
    if tls_error:
        log.error("%s", tls_error)
        return 2
    for name, value in (
        ("--header-timeout", args.header_timeout),
        ("--max-connections", args.max_connections),
        ("--max-header-bytes", args.max_header_bytes),
        ("--queue-size", args.queue_size),
    ):
        if not value > 0:
            log.error("%s must be greater than 0", name)
            return 2
    db_path = args.db or default_db_path()
    try:
        prices = PriceTable.load(args.pricing or os.environ.get(PRICING_ENV) or None)
    except (PricingError, OSError) as exc:
        log.error("%s", exc)
        return 1
    # Bind before anything is announced or created: a busy port leaves no store and no banner.
    try:
        sock = listen.bind(args.host, args.port)
    except listen.PortInUse:
        log.error("port %d is in use; choose another with --port", args.port)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.host, args.port, exc.strerror or exc)
        return 1
    try:
        try:
            open_db(db_path).close()
        except (StoreError, OSError) as exc:
            log.error("%s", exc)
            return 1
        mode = private_files.loose_mode(db_path)
        if mode is not None:
            log.warning(
                "the trace store %s is readable by other users (mode %o): it holds every prompt and answer; "
                "`chmod 600 %s`",
                db_path,
                mode,
                db_path,
            )
        port = sock.getsockname()[1]
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
            trace_writer=args.trace_writer,
            header_timeout=args.header_timeout,
            max_client_connections=args.max_connections,
            max_header_bytes=args.max_header_bytes,
            config_file=config_file,
        )
        if generated is not None:
            # Printed, not logged: shown once to the person starting the proxy.
            print(
                "prysmai proxy: no key configured (--key, PRYSM_PROXY_KEYS or --keys-file); "
                f"accepting this generated key for this run only:\n\n    {generated}\n",
                file=sys.stderr,
            )
        if config_file is None and upstream != DEMO_UPSTREAM and config.upstream_api_key is None:
            log.warning(
                "%s is not set: each request must bring its provider key in X-Prysm-Upstream-Key "
                "(prysmai: upstream_api_key=...)",
                UPSTREAM_KEY_ENV,
            )
        tls = bool(args.ssl_certfile)
        if args.host not in _LOOPBACK:
            if tls:
                log.info("listening on %s: reachable from other machines (https)", args.host)
            else:
                log.warning(
                    "listening on %s without TLS: Prysm keys, prompts and answers cross the network in clear "
                    "text; use --ssl-certfile/--ssl-keyfile, or a TLS-terminating reverse proxy with "
                    "--host 127.0.0.1",
                    args.host,
                )
        scheme = "https" if tls else "http"
        if config_file is None:
            where = f"-> {upstream}; {len(keys)} key(s)"
        else:
            names = ", ".join(sorted(tenancy.projects))
            where = f"with {config_file}: {len(tenancy.projects)} project(s) ({names}), {len(tenancy)} key(s)"
        log.info("serving %s://%s:%d/api/v1 %s; traces in %s", scheme, listen.url_host(args.host), port, where, db_path)
        log.info("dashboard at %s://%s:%d/ (log in with a proxy key)", scheme, listen.url_host(args.host), port)
        serve(
            ProxyApp(config, prices),
            sock,
            log_level=None,
            access_log=args.access_log,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    finally:
        sock.close()
    return 0


def _check_tls(certfile: str | None, keyfile: str | None) -> str | None:
    """Load the certificate now, so a mistake is one line at start-up, not a traceback."""
    if not certfile and not keyfile:
        return None
    if not certfile:
        return "--ssl-keyfile needs --ssl-certfile"
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use the TLS certificate {certfile}: {exc}"
    return None


def _fail(args: argparse.Namespace, message: str, code: str, status: int) -> int:
    """An error: JSON on stderr under --json (the API's error shape), else a plain line."""
    if getattr(args, "json", False):
        from ..api import jsonshape

        print(jsonshape.dumps(jsonshape.error(message, code), pretty=False), file=sys.stderr)
    else:
        _err(message)
    return status


def _open_store(args: argparse.Namespace) -> tuple[Any, int]:
    """(connection, 0), or (None, exit status) after saying why."""
    from ..store.writer import StoreError, open_existing

    path = args.db or default_db_path()
    try:
        conn = open_existing(path)
    except StoreError as exc:
        return None, _fail(args, str(exc), "store_unreadable", 1)
    if conn is None:
        message = f"No trace store at {path} yet. Start one with `prysmai proxy` (or try `prysmai demo`)."
        if getattr(args, "json", False):
            return None, _fail(args, message, "store_not_found", 1)
        print(message)
        return None, 1
    return conn, 0


def _filters(args: argparse.Namespace) -> Any:
    """The command's filter flags as a :class:`~.queries.TraceFilter` (``None`` after an error)."""
    from ..store.queries import TraceFilter

    if getattr(args, "project", None) == "":
        _fail(args, "--project: give a project's name (leave the flag out for every project)", "invalid_parameter", 2)
        return None
    names = {
        "project": "project",
        "model": "model",
        "user": "user",
        "session": "session",
        "status": "status",
        "since": "since",
    }
    try:
        return TraceFilter.from_query({q: getattr(args, a) for a, q in names.items() if getattr(args, a, None)})
    except ValueError as exc:
        message = str(exc)
        _fail(args, "--" + message if message.startswith("since:") else message, "invalid_parameter", 2)  # the flag
        return None


def _traces_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.queries import MAX_LIMIT, TraceFilter, list_traces
    from .report import traces_table

    f = _filters(args)
    if f is None:
        return 2
    if not 1 <= args.limit <= MAX_LIMIT:
        return _fail(args, f"--limit must be a whole number from 1 to {MAX_LIMIT}", "invalid_parameter", 2)
    conn, status = _open_store(args)
    if conn is None:
        return status
    try:
        rows, next_cursor = list_traces(conn, f, limit=args.limit)
    except ValueError as exc:
        return _fail(args, str(exc), "invalid_parameter", 2)
    finally:
        conn.close()
    if args.json:
        print(jsonshape.dumps(jsonshape.trace_list({"data": rows, "next_cursor": next_cursor})))
    elif not rows:
        filtered = f != TraceFilter()
        print("No traces" + (" match these filters." if filtered else " yet: send a request through the proxy."))
    else:
        print(traces_table(rows))
    return 0


def _show_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.queries import get_trace
    from .report import trace_detail

    project = getattr(args, "project", None)
    if project == "":
        return _fail(args, "--project: give a project's name", "invalid_parameter", 2)
    conn, status = _open_store(args)
    if conn is None:
        return status
    try:
        trace = get_trace(conn, args.trace_id, project=project)
    except ValueError as exc:  # a prefix too short, or matching several traces
        code = "prefix_too_short" if "too short" in str(exc) else "ambiguous_prefix"
        return _fail(args, str(exc), code, 2)
    finally:
        conn.close()
    if trace is None:
        where = f" in project {project!r}" if project is not None else ""
        message = f"no trace {args.trace_id!r}{where} (give the id, or a unique prefix of 8+ characters)"
        return _fail(args, message, "not_found", 1)
    print(jsonshape.dumps(jsonshape.trace(trace)) if args.json else trace_detail(trace))
    return 0


def _stats_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.queries import TraceFilter, stats

    # Aggregated by SQLite from the hourly rollups (queries.py): constant memory, whatever the store's size.
    from .report import stats_text

    f = _filters(args)
    if f is None:
        return 2
    conn, status = _open_store(args)
    if conn is None:
        return status
    try:
        result = stats(conn, f)
    finally:
        conn.close()
    if args.json:
        print(jsonshape.dumps(jsonshape.stats(result)))
    elif not result["requests"]:
        filtered = f != TraceFilter()
        print("No traces" + (" match these filters." if filtered else " yet: send a request through the proxy."))
    else:
        print(stats_text(result))
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    if not _has_extra():
        _err(EXTRA_MESSAGE)
        return 2
    from .demo import run_demo

    return run_demo(real=args.real, keep_db=args.keep_db, model=args.model, serve=args.serve)


def _ui_command(args: argparse.Namespace) -> int:
    if not _has_extra():
        _err(EXTRA_MESSAGE)
        return 2
    from ..config.keys import KeyConfigError, collect_keys, generate_key
    from ..store.writer import StoreError, open_existing

    db_path = args.db or default_db_path()
    if not os.path.exists(db_path):
        _err(f"no trace store at {db_path} (give --db PATH; `prysmai proxy` creates one)")
        return 1
    try:
        keys = collect_keys(args.key, args.keys_file)
    except (KeyConfigError, OSError) as exc:
        _err(f"key configuration: {exc}")
        return 2
    try:
        # Brings a store written by an older prysmai to the current schema (its traces are kept as
        # they are); the dashboard itself only reads, on read-only connections.
        conn = open_existing(db_path)
    except (StoreError, OSError) as exc:
        _err(str(exc))
        return 1
    if conn is None:
        _err(f"{db_path} holds no traces table (is it a prysmai trace store?)")
        return 1
    conn.close()
    if not keys and _config_path(args) is None:
        keys = [generate_key()]
        print(
            "prysmai ui: no key configured (--key, PRYSM_PROXY_KEYS, --keys-file or --config); "
            f"log in with this generated key (this run only):\n\n    {keys[0]}\n",
            file=sys.stderr,
        )
    tenancy, config_error = _load_tenancy(args, keys, DEMO_UPSTREAM)
    if config_error is not None:
        _err(config_error)
        return 2
    from ..web.standalone import serve_read_only

    port = args.port
    if port == 0:  # pick it now so the banner can name it
        import socket

        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.bind((args.host, 0))
            port = probe.getsockname()[1]
    if args.host not in _LOOPBACK:
        print(f"prysmai ui: listening on {args.host}, reachable from other machines.", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"prysmai ui: dashboard at http://{host}:{port}/ (read-only) over {db_path}", file=sys.stderr)
    serve_read_only(db_path, tenancy, args.host, port)
    return 0
