"""The proxy's settings and default locations."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .policy import DEFAULT_MAX_STORED_BODY_BYTES, DEFAULT_REDACT, StoragePolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
DEFAULT_UPSTREAM = "https://api.openai.com/v1"
#: ``--upstream demo`` selects the built-in offline model instead of a URL.
DEMO_UPSTREAM = "demo"
DB_ENV = "PRYSM_DB"
UPSTREAM_ENV = "PRYSM_UPSTREAM_URL"
PRICING_ENV = "PRYSM_PRICING"
#: The proxy's stored upstream credentials.
UPSTREAM_KEY_ENV = "OPENAI_API_KEY"
#: The address clients reach the proxy at, when it is not the one the browser used (a reverse proxy).
PUBLIC_URL_ENV = "PRYSM_PUBLIC_URL"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_QUEUE_SIZE = 10_000
#: ``--when-behind``: what to do when the trace queue is full (see docs/proxy.md).
DEFAULT_WHEN_BEHIND = "block"
#: ``--trace-writer``: where trace rows are built and stored (see docs/proxy.md).
TRACE_WRITERS = ("process", "thread")
DEFAULT_TRACE_WRITER = "process"
#: ``--max-exports``: downloads (``format=csv|jsonl``) running at once; one more gets ``429``.
DEFAULT_MAX_EXPORTS = 2
#: ``--export-priority``: the CPU priority of a download's process (see docs/proxy.md).
EXPORT_PRIORITIES = ("idle", "low", "normal")
DEFAULT_EXPORT_PRIORITY = "idle"
#: Seconds a client has to send a request's headers, from connection or the previous request.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds between two reads of a request's body; a request without a valid key or session has
#: this long for its whole body.
DEFAULT_BODY_TIMEOUT = 10.0
#: Concurrent client connections; beyond it new connections get ``503``.
DEFAULT_MAX_CONNECTIONS = 1000
#: Bytes of request line plus headers; beyond it ``431``.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


def default_db_path(environ: dict[str, str] | None = None) -> str:
    """``$PRYSM_DB``, else ``$XDG_DATA_HOME/prysmai/traces.db``, else
    ``~/.local/share/prysmai/traces.db`` (``%LOCALAPPDATA%\\prysmai\\traces.db`` on Windows)."""
    env = os.environ if environ is None else environ
    if env.get(DB_ENV):
        return env[DB_ENV]
    base = env.get("XDG_DATA_HOME")
    if not base and os.name == "nt":
        base = env.get("LOCALAPPDATA")
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "prysmai", "traces.db")


def default_outbox_path(environ: dict[str, str] | None = None) -> str:
    """Where a proxy whose store is PostgreSQL keeps its outbox by default: ``outbox.db`` in the
    folder of :func:`default_db_path` (``$XDG_DATA_HOME/prysmai/``)."""
    env = dict(os.environ if environ is None else environ)
    env.pop(DB_ENV, None)  # (PRYSM_DB names the shared store then, not a file)
    return os.path.join(os.path.dirname(default_db_path(env)), "outbox.db")


@dataclass
class ProxyConfig:
    """Everything the proxy needs to run. Keys and the upstream key are never shown in its repr."""

    keys: list[str] = field(repr=False)
    db_path: str = field(default_factory=default_db_path)
    upstream: str = DEFAULT_UPSTREAM
    upstream_api_key: str | None = field(default=None, repr=False)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Read timeout for the upstream, in seconds (time between two bytes, not the whole call).
    upstream_timeout: float = 600.0
    connect_timeout: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_size: int = DEFAULT_QUEUE_SIZE
    pricing_file: str | None = None
    #: Ask the upstream for streaming usage when the client did not (and hide it from the client).
    inject_stream_usage: bool = True
    max_connections: int = 1000
    max_keepalive: int = 256
    #: Full trace queue: hold new requests until there is room ("block") or drop traces ("drop").
    when_behind: str = DEFAULT_WHEN_BEHIND
    #: Build and insert trace rows in a child process ("process") or on a thread of the proxy.
    trace_writer: str = DEFAULT_TRACE_WRITER
    #: Downloads running at once (``--max-exports``), and their processes' CPU priority
    #: (``--export-priority``).
    max_exports: int = DEFAULT_MAX_EXPORTS
    export_priority: str = DEFAULT_EXPORT_PRIORITY
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    #: Addresses of the reverse proxies whose ``X-Forwarded-For`` / ``-Proto`` are believed
    #: (comma-separated, or ``*``); ``None``: nobody's (the client is the connection's peer).
    forwarded_allow_ips: str | None = None
    max_client_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    #: A projects config file (``--config``; see docs/projects.md). With it, ``keys``, ``upstream``
    #: and ``upstream_api_key`` are not used: the file says which keys, projects and providers.
    config_file: str | None = None
    #: What the store keeps (``--capture``, ``--redact``, ``--redact-pattern``): the policy of the
    #: project ``default`` without a config file, and of a config file's projects that set none.
    capture: str = "full"
    redact: tuple[str, ...] = DEFAULT_REDACT
    redact_patterns: tuple[tuple[str, str], ...] = ()
    #: Bytes of a stored request or response body at most (``--max-stored-body-bytes``; 0: no limit).
    max_stored_body_bytes: int = DEFAULT_MAX_STORED_BODY_BYTES
    #: Traces older than this many seconds are deleted (``--retention``; ``None``: kept for ever).
    retention_seconds: float | None = None
    #: OTLP/HTTP traces endpoint (``--otlp-endpoint`` or the ``OTEL_EXPORTER_OTLP_*`` variables);
    #: ``None``: no export.
    otlp_endpoint: str | None = None
    #: Export message content (``--otlp-content``).
    otlp_content: bool = False
    #: Share of the stored traces exported (``--otlp-sample``).
    otlp_sample: float = 1.0
    #: Keep the search index of the bodies (``--search-index``): text searches read it instead of
    #: every body, for some of the writer's time (bench/README.md).
    search_index: bool = True
    #: With a PostgreSQL store (``db_path`` a ``postgresql://`` URL): the local SQLite outbox its
    #: traces are written to first (``--outbox``; default :func:`default_outbox_path`).
    outbox_path: str | None = None
    #: ``--public-url``: the proxy's address as its clients reach it (behind a reverse proxy); the
    #: dashboard's first-trace snippets show it. ``None``: the address the browser used.
    public_url: str | None = None

    def __post_init__(self) -> None:
        if self.trace_writer not in TRACE_WRITERS:
            raise ValueError(f"trace_writer must be one of {', '.join(TRACE_WRITERS)}, not {self.trace_writer!r}")
        if self.export_priority not in EXPORT_PRIORITIES:
            raise ValueError(
                f"export_priority must be one of {', '.join(EXPORT_PRIORITIES)}, not {self.export_priority!r}"
            )
        if self.max_exports < 1:
            raise ValueError(f"max_exports must be 1 or more, not {self.max_exports!r}")
        if not 0.0 <= self.otlp_sample <= 1.0:
            raise ValueError(f"otlp_sample must be from 0 to 1, not {self.otlp_sample!r}")
        self.storage_policy()  # checked now: a bad setting is an error at start-up

    def storage_policy(self) -> StoragePolicy:
        """The policy of the flags (see ``capture`` and what follows it)."""
        return StoragePolicy(
            self.capture,
            tuple(self.redact),
            tuple(self.redact_patterns),
            self.max_stored_body_bytes,
            self.retention_seconds,
        )


class PublicURLError(ValueError):
    """``--public-url`` / ``$PRYSM_PUBLIC_URL`` is not a usable address; the message says why."""


def check_public_url(value: str) -> str:
    """``value`` as the proxy's public address (``https://llm.example.com`` or with a path prefix,
    ``https://example.com/prysm``), without a trailing slash; :class:`PublicURLError` if it is not
    an http(s) URL with a host, or holds a user, password, query or fragment (it is shown to every
    dashboard user, and put into copy-paste snippets)."""
    from urllib.parse import urlsplit

    text = value.strip().rstrip("/")
    if not text.isprintable() or any(c.isspace() or c in "<>\"'`\\" for c in text):
        raise PublicURLError("--public-url must not contain spaces, quotes, angle brackets or control characters")
    parts = urlsplit(text)
    try:
        port_ok = parts.port != 0
    except ValueError:  # a port out of range or not a number
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        # (The value is not echoed: it may hold a credential.)
        raise PublicURLError(
            "--public-url must be an http:// or https:// URL with a host, like https://llm.example.com"
        )
    if parts.username is not None or parts.password is not None:
        raise PublicURLError("--public-url must not hold a user or password")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise PublicURLError("--public-url must have no query or fragment (?... or #...)")
    if parts.path.endswith("/api/v1"):
        raise PublicURLError("--public-url is the proxy's address without /api/v1 (the snippets add it)")
    return text
