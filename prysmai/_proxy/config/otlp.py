"""Where the OTLP export goes: the endpoint from ``--otlp-endpoint`` or OpenTelemetry's standard
variables, and whether message content goes with it.

As OpenTelemetry's exporters read them: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is the traces URL
as is; ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``--otlp-endpoint``) is a base URL to which
``/v1/traces`` is added, unless it already ends with it. Headers (``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TRACES_HEADERS``: where a collector's credentials go), the timeout, TLS
files and ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` are read by the exporter itself, in
the export process (:mod:`..export`).

Standard library only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: The GenAI conventions' switch for message content (``true``; some instrumentations also take
#: ``SPAN_ONLY`` / ``SPAN_AND_EVENT``).
CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
TRACES_PATH = "/v1/traces"
_TRUE = frozenset({"true", "1", "yes", "on", "span_only", "span_and_event"})


class OtlpError(ValueError):
    """An endpoint that cannot be used; the message says what to do (and holds no credential)."""


def endpoint_from(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """The traces URL to export to, or ``None`` (no export)."""
    if flag:
        return _checked(_with_path(flag.strip()), "--otlp-endpoint")
    if environ.get(TRACES_ENDPOINT_ENV, "").strip():
        return _checked(environ[TRACES_ENDPOINT_ENV].strip(), TRACES_ENDPOINT_ENV)
    if environ.get(ENDPOINT_ENV, "").strip():
        return _checked(_with_path(environ[ENDPOINT_ENV].strip()), ENDPOINT_ENV)
    return None


def content_from_env(environ: Mapping[str, str]) -> bool:
    return environ.get(CONTENT_ENV, "").strip().lower() in _TRUE


def _with_path(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def _checked(url: str, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtlpError(f"{source}: the OTLP endpoint must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # It would be shown in logs and health answers; headers are where credentials go.
        raise OtlpError(
            f"{source}: the OTLP endpoint must not hold a user or password; "
            "send credentials in OTEL_EXPORTER_OTLP_HEADERS (e.g. Authorization=Basic ...)"
        )
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise OtlpError(f"{source}: the OTLP endpoint has an invalid port") from None
    return url


def shown(url: str) -> str:
    """The endpoint for logs and the health answer: scheme, host, port and path, no query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
