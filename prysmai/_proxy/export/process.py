"""The proxy's end of the export process (:mod:`.worker`): starts it, tells it about config
reloads, keeps its latest counters for ``/api/v1/health``, logs what it reports, starts it again
if it dies, and stops it (after a short drain) when the proxy stops.

The child gets the proxy's environment less its secrets -- what Python reads, and OpenTelemetry's
own ``OTEL_*`` variables (the collector's headers are its credentials, and the export's to use);
never ``OPENAI_API_KEY``, ``PRYSM_*`` or a provider key a config file names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time

from ..config.otlp import shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..config.projects import Tenancy

log = logging.getLogger("prysmai.proxy")

_CHILD = """# prysmai export
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
if sys.argv[1] not in sys.path:
    sys.path.insert(0, sys.argv[1])
from prysmai._proxy.export.worker import main
main()
"""
_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "LANG", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "VIRTUAL_ENV", "LD_LIBRARY_PATH"}
)
#: Seconds the export may fail before ``/api/v1/health`` says ``degraded``.
FAILING_DEGRADED = 30.0
#: Longest wait before a dead export process is started again.
MAX_RESTART_WAIT = 30.0


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in environ.items()
        if k in _ENVIRONMENT or k.startswith(("PYTHON", "LC_", "OTEL_", "SSL_", "REQUESTS_CA_BUNDLE"))
    }


def providers_of(tenancy: Tenancy) -> dict[str, dict[str, str]]:
    """``"project/provider"`` -> its kind and base URL (what a span's provider attributes need;
    never a credential)."""
    return {
        f"{project.name}/{p.name}": {"kind": p.kind, "base_url": p.base_url}
        for project in tenancy.projects.values()
        for p in project.providers
    }


class ExportProcess:
    """The export of one proxy: ``settings`` are the worker's (see :mod:`.worker`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.endpoint = shown(str(settings["endpoint"]))
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._stopping = False
        self._reader: threading.Thread | None = None
        self.restarts = 0
        self.fatal: str | None = None
        self._down_since: float | None = None

    def start(self) -> None:
        self._stopping = False
        self._spawn()

    def _spawn(self) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.Popen(
            [sys.executable or "python3", "-c", _CHILD, package_root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_environment(os.environ),
            close_fds=True,
        )
        assert proc.stdin is not None
        # A child that died at once (its pipe broken) is seen by the reader: its output ends, and
        # it is started again after a wait, as any child that exits.
        with contextlib.suppress(OSError):
            proc.stdin.write((json.dumps(self.settings) + "\n").encode())
            proc.stdin.flush()
        self._proc = proc
        self._down_since = None
        self._reader = threading.Thread(target=self._read, args=(proc,), name="prysmai-export-reader", daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "fatal" in message:
                self.fatal = str(message["fatal"])
                log.error("OTLP export cannot run: %s", self.fatal)
                continue
            for level, text in message.pop("log", ()):
                log.log(level, "%s", text)
            with self._lock:
                before = self._status.get("failing_since")
                self._status = message
            if before is None and message.get("failing_since") is not None:
                log.warning(
                    "OTLP export to %s failing (%s): spans wait in the export outbox and are retried",
                    self.endpoint,
                    message.get("last_error"),
                )
        proc.wait()
        if self._stopping or self.fatal:
            return
        self._down_since = time.monotonic()
        wait = min(MAX_RESTART_WAIT, 2.0 ** min(self.restarts, 5))
        self.restarts += 1
        log.error("the OTLP export process exited (code %s); starting it again in %.0f s", proc.returncode, wait)
        time.sleep(wait)
        if not self._stopping:
            try:
                self._spawn()
            except OSError as exc:
                log.error("could not start the OTLP export process again: %s", exc)

    def update(self, tenancy: Tenancy) -> None:
        """The config was reloaded: the providers' addresses may have changed."""
        self.settings["providers"] = providers_of(tenancy)
        self._send({"providers": self.settings["providers"]})

    def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()

    def stop(self, drain: float = 5.0) -> None:
        """Send what waits for up to ``drain`` seconds, then stop the process (what is not sent
        stays in the store's outbox for the next start)."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        self._send({"drain": drain})
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(drain + 15.0)
        except subprocess.TimeoutExpired:
            log.error("the OTLP export process did not stop: killed (its last batch will be sent again)")
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(5.0)
        self._proc = None

    def status(self) -> dict[str, Any]:
        """The counters for ``/api/v1/health``: where to, exported, failed, waiting..."""
        with self._lock:
            status = dict(self._status)
        status.pop("log", None)
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "running": self._proc is not None and self._down_since is None,
        }
        for key in ("exported", "failed", "waiting", "sampled_out", "expired", "skipped"):
            out[key] = status.get(key, 0)
        for key in ("last_error", "last_export"):
            out[key] = status.get(key)
        out["failing_since"] = status.get("failing_since")
        out["restarts"] = self.restarts
        if self.fatal:
            out["error"] = self.fatal
        return out

    def trouble(self) -> str | None:
        """Why the export is not working now (for ``degraded``), or ``None``."""
        if self.fatal:
            return f"OTLP export cannot run: {self.fatal}"
        if self._down_since is not None:
            return "the OTLP export process is being started again"
        with self._lock:
            since = self._status.get("failing_since")
            waiting = self._status.get("waiting", 0)
            error = self._status.get("last_error")
        if since is not None and time.time() - since >= FAILING_DEGRADED:
            failing = time.time() - since
            return f"OTLP export to {self.endpoint} failing for {failing:.0f} s ({error}); {waiting} trace(s) waiting"
        return None
