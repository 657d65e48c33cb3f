"""``prysmai proxy``: the capture proxy in the foreground.

Imported on every ``prysmai`` invocation: standard library only at module level; the proxy's
extra (uvicorn, aiohttp) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config.policy import CAPTURE_MODES, DEFAULT_MAX_STORED_BODY_BYTES, DEFAULT_REDACT, REDACTION_SETS
from ..config.settings import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_EXPORT_PRIORITY,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_EXPORTS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TRACE_WRITER,
    DEFAULT_UPSTREAM,
    DEFAULT_WHEN_BEHIND,
    DEMO_UPSTREAM,
    EXPORT_PRIORITIES,
    PRICING_ENV,
    PUBLIC_URL_ENV,
    TRACE_WRITERS,
    UPSTREAM_ENV,
    UPSTREAM_KEY_ENV,
    default_db_path,
)
from .common import LOOPBACK, add_config, add_db, config_path, needs_extra, tenancy_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any

    from ..config.projects import Tenancy
    from ..config.settings import ProxyConfig

#: Printed under ``prysmai proxy --help``: what an installed package cannot otherwise show.
PROXY_ESSENTIALS = """\
essentials:
  keys     PRYSM_PROXY_KEYS / --keys-file (--key shows in ps): 'sk-prysm-' then 16+ characters. With none, a key
           is generated and printed for this run only. Make one:
           python3 -c "import secrets; print('sk-prysm-' + secrets.token_urlsafe(24))"
  clients  base_url=http://HOST:PORT/api/v1 and the Prysm key as api_key (prysmai: prysm_key=...).
           The provider key is OPENAI_API_KEY in the proxy's environment, or X-Prysm-Upstream-Key per request.
  store    SQLite (WAL) created 0600 in a 0700 directory; holds every prompt and answer (never keys),
           API keys and tokens in them redacted (--redact), each body cut at 1 MiB; --retention 30d deletes
           older traces. Read it with `prysmai traces`, `prysmai stats`, or GET /api/v1/traces (key needed).
  export   --otlp-endpoint URL (or OTEL_EXPORTER_OTLP_ENDPOINT): every stored trace as an OpenTelemetry span.
  health   GET /api/v1/health (no key): status and the store's queued/written/dropped counters.
  network  Plain http on 127.0.0.1 by default. Beyond loopback, use --ssl-certfile/--ssl-keyfile or a
           TLS-terminating reverse proxy in front (keep --host 127.0.0.1 then).
  stop     Ctrl-C or SIGTERM: in-flight requests finish (up to 10 s), pending traces are written, exit 0.

Full reference: docs/proxy.md and docs/operations.md (systemd, nginx, security) in the source tree and sdist."""


def add_parser(subparsers: Any) -> None:
    """Add ``proxy`` to ``prysmai``."""
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
    add_db(proxy)
    proxy.add_argument(
        "--outbox",
        metavar="PATH",
        default=None,
        help="with --db postgresql://...: the local file traces are written to first, then shipped "
        "(default: outbox.db beside the default store)",
    )
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
    add_config(proxy)
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
        "--search-index",
        choices=("on", "off"),
        default="on",
        help="keep a words index of the bodies, so that a text search (q=) reads it instead of every body; "
        "off saves the writer its upkeep (default on)",
    )
    proxy.add_argument(
        "--trace-writer",
        choices=TRACE_WRITERS,
        default=DEFAULT_TRACE_WRITER,
        help="build and store trace rows in a child process at the lowest CPU priority, off the proxy's "
        f"interpreter (process), or on a thread of the proxy (thread); default {DEFAULT_TRACE_WRITER}",
    )
    proxy.add_argument(
        "--max-exports",
        type=int,
        default=DEFAULT_MAX_EXPORTS,
        metavar="N",
        help="downloads (format=csv|jsonl) running at once; one more gets 429 with Retry-After "
        f"(default {DEFAULT_MAX_EXPORTS})",
    )
    proxy.add_argument(
        "--export-priority",
        choices=EXPORT_PRIORITIES,
        default=DEFAULT_EXPORT_PRIORITY,
        help="CPU priority of a download's process: idle (SCHED_IDLE; a starved one goes on at low), "
        f"low (nice 19) or normal; default {DEFAULT_EXPORT_PRIORITY}",
    )
    proxy.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="SECONDS",
        help=f"time a client has to send a request's headers (default {DEFAULT_HEADER_TIMEOUT:g}); then 408",
    )
    proxy.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help=f"longest pause in a request's body, and the time a request without a valid key has for its "
        f"whole body (default {DEFAULT_BODY_TIMEOUT:g}); then 408",
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
    keeping = proxy.add_argument_group(
        "what is stored (per project in a --config file; these flags are the default for projects that say nothing)"
    )
    keeping.add_argument(
        "--capture",
        choices=CAPTURE_MODES,
        default="full",
        help="full: store the bodies (redacted); metadata: only model, tokens, cost, timing, status, ids, "
        "metadata and the request's parameters (default full)",
    )
    keeping.add_argument(
        "--redact",
        metavar="SETS",
        default=",".join(DEFAULT_REDACT),
        help=f"pattern sets replaced by [redacted:TYPE] before anything is stored or exported: "
        f"{', '.join(REDACTION_SETS)}, comma-separated, or 'none' (default {','.join(DEFAULT_REDACT)})",
    )
    keeping.add_argument(
        "--redact-pattern",
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="also redact this regular expression, as [redacted:NAME] (repeatable)",
    )
    keeping.add_argument(
        "--max-stored-body-bytes",
        type=int,
        default=DEFAULT_MAX_STORED_BODY_BYTES,
        metavar="N",
        help="store larger request/response bodies cut to N bytes, with a note (default %(default)s = 1 MiB; "
        "0 = no limit); the client still gets everything",
    )
    keeping.add_argument(
        "--retention",
        metavar="DURATION",
        help="delete traces older than this (30d, 12h, 2w...), in the background; default: keep everything",
    )
    export = proxy.add_argument_group("export (OpenTelemetry, OTLP/HTTP; needs prysmai[otel])")
    export.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send every stored trace as a span to this OTLP/HTTP endpoint (/v1/traces is added to a base "
        "URL); also OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    export.add_argument(
        "--otlp-content",
        action="store_true",
        help="add the (redacted) messages to the spans (also OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true)",
    )
    export.add_argument(
        "--otlp-sample",
        type=float,
        default=1.0,
        metavar="RATIO",
        help="export this share of the stored traces, 0 to 1 (default 1: every one); never changes what is stored",
    )
    proxy.add_argument(
        "--forwarded-allow-ips",
        metavar="ADDRESSES",
        default=None,
        help="believe X-Forwarded-For/-Proto from these reverse proxies only (comma-separated addresses, "
        "or '*'); default: from none, the client is the connection's peer",
    )
    proxy.add_argument(
        "--public-url",
        metavar="URL",
        default=None,
        help=f"the proxy's address as clients reach it, behind a reverse proxy (also ${PUBLIC_URL_ENV}); the "
        "dashboard's first-trace snippets show it (default: the address the browser used)",
    )
    proxy.add_argument("--ssl-certfile", metavar="PATH", help="serve https with this certificate (PEM)")
    proxy.add_argument("--ssl-keyfile", metavar="PATH", help="the certificate's private key (PEM)")
    proxy.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    status = needs_extra()
    if status is not None:
        return status
    from ..server import logs

    # Every line from here on, ours and uvicorn's, has one format (see server/logs.py).
    with logs.configured(args.log_level, args.log_format) as log:
        return _run(args, log)


def _run(args: argparse.Namespace, log: logging.Logger) -> int:
    """Check everything, bind, create the store, announce, serve: the first failure is one line
    and an exit status, with nothing left behind."""
    from ..config.reload import catch_sighup

    # Before anything is announced: from the banner on, a service manager may send SIGHUP
    # (`systemctl reload` right after `start`), and its default action would stop the proxy.
    restore_hup = catch_sighup()
    try:
        return _checked_run(args, log)
    finally:
        restore_hup()


def _checked_run(args: argparse.Namespace, log: logging.Logger) -> int:
    from ..config.pricing import PriceTable, PricingError
    from ..server import listen
    from ..server.app import ProxyApp
    from ..server.serve import serve

    checked = _settings(args, log)
    if isinstance(checked, int):
        return checked
    config, tenancy, generated = checked
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
        if not _create_store(config, log):
            return 1
        config.port = sock.getsockname()[1]
        _announce(args, log, config, tenancy, generated)
        serve(
            ProxyApp(config, tenancy, prices),
            sock,
            log_level=None,
            access_log=args.access_log,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    finally:
        sock.close()
    return 0


def _settings(args: argparse.Namespace, log: logging.Logger) -> tuple[ProxyConfig, Tenancy, str | None] | int:
    """The proxy's settings and tenancy from the command line, and the key generated for this
    run (when none was configured); or the exit status after logging what is wrong."""
    from ..config.keys import KeyConfigError, collect_keys, generate_key
    from ..config.settings import ProxyConfig

    config_file = config_path(args)
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
    kept = _storage(args)
    if isinstance(kept, str):
        log.error("%s", kept)
        return 2
    upstream = args.upstream or os.environ.get(UPSTREAM_ENV) or DEFAULT_UPSTREAM
    if upstream != DEMO_UPSTREAM and not upstream.startswith(("http://", "https://")):
        log.error("--upstream must be an http(s) URL or '%s', not %r", DEMO_UPSTREAM, upstream)
        return 2
    tenancy, config_error = tenancy_of(args, keys, upstream, kept["policy"])
    if config_error is not None:
        log.error("%s", config_error)
        return 2
    from ..config.settings import PublicURLError, check_public_url

    public_url = args.public_url or os.environ.get(PUBLIC_URL_ENV) or None
    try:
        public_url = None if public_url is None else check_public_url(public_url)
    except PublicURLError as exc:
        log.error("%s", exc)
        return 2
    tls_error = _check_tls(args.ssl_certfile, args.ssl_keyfile)
    if tls_error:
        log.error("%s", tls_error)
        return 2
    for name, value in (
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--max-connections", args.max_connections),
        ("--max-header-bytes", args.max_header_bytes),
        ("--queue-size", args.queue_size),
        ("--max-exports", args.max_exports),
    ):
        if not value > 0:
            log.error("%s must be greater than 0", name)
            return 2
    config = ProxyConfig(
        keys=keys,
        db_path=args.db or default_db_path(),
        upstream=upstream,
        upstream_api_key=os.environ.get(UPSTREAM_KEY_ENV) or None,
        host=args.host,
        port=args.port,
        upstream_timeout=args.upstream_timeout,
        max_body_bytes=args.max_body_bytes,
        queue_size=args.queue_size,
        inject_stream_usage=not args.no_stream_usage,
        when_behind=args.when_behind,
        trace_writer=args.trace_writer,
        max_exports=args.max_exports,
        export_priority=args.export_priority,
        search_index=args.search_index == "on",
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_client_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes,
        config_file=config_file,
        capture=args.capture,
        redact=kept["policy"].redact,
        redact_patterns=kept["policy"].patterns,
        max_stored_body_bytes=args.max_stored_body_bytes,
        retention_seconds=kept["policy"].retention_seconds,
        otlp_endpoint=kept["otlp_endpoint"],
        otlp_content=kept["otlp_content"],
        otlp_sample=args.otlp_sample,
        forwarded_allow_ips=args.forwarded_allow_ips,
        outbox_path=args.outbox,
        public_url=public_url,
    )
    return config, tenancy, generated


def _storage(args: argparse.Namespace) -> dict[str, Any] | str:
    """The storage policy and the export settings of the flags (and the standard OpenTelemetry
    variables), or what is wrong with them."""
    from ..config.policy import PolicyError, StoragePolicy, parse_duration, parse_pattern, parse_sets

    try:
        retention = None if args.retention is None else parse_duration(args.retention)
        policy = StoragePolicy(
            args.capture,
            parse_sets(args.redact),
            tuple(parse_pattern(p) for p in args.redact_pattern),
            args.max_stored_body_bytes,
            retention,
        )
    except PolicyError as exc:
        flag = "--retention" if "duration" in str(exc) else "--redact / --redact-pattern / --max-stored-body-bytes"
        return f"{flag}: {exc}"
    if not 0.0 <= args.otlp_sample <= 1.0:
        return f"--otlp-sample must be from 0 to 1 (a share of the traces), not {args.otlp_sample:g}"
    from ..config.otlp import OtlpError, content_from_env, endpoint_from

    try:
        endpoint = endpoint_from(args.otlp_endpoint, os.environ)
    except OtlpError as exc:
        return str(exc)
    if endpoint is not None:
        missing = _otel_missing()
        if missing is not None:
            return missing
    return {
        "policy": policy,
        "otlp_endpoint": endpoint,
        "otlp_content": args.otlp_content or content_from_env(os.environ),
    }


def _otel_missing() -> str | None:
    """Why OTLP export cannot run here (its packages are missing), or ``None``."""
    import importlib.util

    for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                "OTLP export (--otlp-endpoint or OTEL_EXPORTER_OTLP_*ENDPOINT) needs OpenTelemetry's SDK and "
                "OTLP/HTTP exporter: pip install 'prysmai[proxy,otel]' (or unset the endpoint)"
            )
    return None


def _create_store(config: ProxyConfig, log: logging.Logger) -> bool:
    """Create (or migrate) the store now, so that a bad ``--db`` is one line at start-up; warn
    when other users can read it. A PostgreSQL store that does not answer is no reason not to
    start: traces wait in the outbox until it does (a refusal -- a wrong password, no such
    database -- is)."""
    from ..config.settings import default_outbox_path
    from ..store import StoreError, StoreUnavailable, engine_for, private_files
    from ..store.outbox import OutboxEngine
    from ..store.postgres.engine import is_postgres

    files = [config.db_path]
    try:
        if is_postgres(config.db_path):
            outbox = config.outbox_path or default_outbox_path()
            files = [outbox]
            OutboxEngine(outbox).open_for_writing().close()
            try:
                engine_for(config.db_path).open_for_writing().close()
            except StoreUnavailable as exc:
                log.warning("%s; starting anyway: traces wait in the outbox %s until it answers", exc, outbox)
        else:
            engine_for(config.db_path).open_for_writing().close()
    except (StoreError, OSError) as exc:
        log.error("%s", exc)
        return False
    for path in files:
        mode = private_files.loose_mode(path)
        if mode is not None:
            log.warning(
                "%s %s is readable by other users (mode %o): it holds every prompt and answer; `chmod 600 %s`",
                "the trace store" if path == config.db_path else "the outbox",
                path,
                mode,
                path,
            )
    return True


def _announce(
    args: argparse.Namespace, log: logging.Logger, config: ProxyConfig, tenancy: Tenancy, generated: str | None
) -> None:
    """The banner: the generated key (printed, not logged: shown once to the person starting the
    proxy), warnings about the network and the provider key, where it serves and stores."""
    from ..server import listen
    from ..server.app import summary

    if generated is not None:
        print(
            "prysmai proxy: no key configured (--key, PRYSM_PROXY_KEYS or --keys-file); "
            f"accepting this generated key for this run only:\n\n    {generated}\n",
            file=sys.stderr,
        )
    if config.config_file is None and config.upstream != DEMO_UPSTREAM and config.upstream_api_key is None:
        log.warning(
            "%s is not set: each request must bring its provider key in X-Prysm-Upstream-Key "
            "(prysmai: upstream_api_key=...)",
            UPSTREAM_KEY_ENV,
        )
    tls = bool(args.ssl_certfile)
    if args.key and args.host not in LOOPBACK:
        log.warning(
            "--key puts Prysm keys on the command line, where every local user can read them "
            "(ps, /proc/PID/cmdline); give them in PRYSM_PROXY_KEYS or a --keys-file instead"
        )
    if args.host not in LOOPBACK:
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
    if config.config_file is None:
        where = f"-> {config.upstream}; {len(config.keys)} key(s)"
    else:
        where = f"with {config.config_file}: {summary(tenancy)}"
    host, port = listen.url_host(args.host), config.port
    log.info("serving %s://%s:%d/api/v1 %s; traces in %s", scheme, host, port, where, _where_traces(config))
    log.info("dashboard at %s://%s:%d/ (log in with a proxy key)", scheme, host, port)


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


def _where_traces(config: ProxyConfig) -> str:
    """The store as the banner names it: a path, or a URL without its password and the outbox."""
    from ..config.settings import default_outbox_path
    from ..store.postgres.engine import is_postgres, masked

    if not is_postgres(config.db_path):
        return config.db_path
    return f"{masked(config.db_path)} (outbox {config.outbox_path or default_outbox_path()})"
