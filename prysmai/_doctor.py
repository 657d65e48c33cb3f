"""``prysmai doctor``: what is installed, which settings are in effect and where each comes from,
whether the proxy answers and accepts the key -- one line per check, each ok / warning / error
with what to do. Keys are shown masked, never in full.
"""

from __future__ import annotations

import os
import re
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OK, WARNING, ERROR = "ok", "warning", "error"


class Check:
    __slots__ = ("detail", "fix", "name", "status")

    def __init__(self, name: str, status: str, detail: str, fix: str | None = None) -> None:
        self.name = name
        self.status = status
        self.detail = _printable(detail)
        self.fix = _printable(fix) if fix else None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _printable(text: str) -> str:
    # Server answers and exception texts end up here: no control characters on the terminal.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _source(argument: str | None, env: str) -> tuple[str | None, str]:
    if argument is not None:
        return argument, "argument"
    value = os.environ.get(env) or None
    return value, ("environment" if value is not None else "default")


def run_checks(base_url_argument: str | None = None, timeout: float = 5.0) -> list[Check]:
    """Every check, in order; the network ones only when the settings allow them. A URL's
    ``user:password`` is never shown: masked in every line, wherever it appears (an error text
    may quote it without its URL)."""
    checks = _run_checks(base_url_argument, timeout)
    userinfo = {_userinfo(u) for u in (base_url_argument, *(os.environ.get(n) for n in _URL_VARIABLES))} - {""}
    for check in checks:
        check.detail = _mask_userinfo(check.detail, userinfo)
        if check.fix:
            check.fix = _mask_userinfo(check.fix, userinfo)
    return checks


#: The settings doctor shows that hold URLs.
_URL_VARIABLES = ("PRYSM_BASE_URL", "OPENAI_BASE_URL")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]*@")


def _userinfo(url: str | None) -> str:
    """The ``user:password`` of ``url`` (``""``: none)."""
    if not url or "@" not in url:
        return ""
    found = _URL_USERINFO.search(url)
    return "" if found is None else found.group()[len(found.group(1)) : -1]


def _mask_userinfo(text: str, userinfo: set[str]) -> str:
    text = _URL_USERINFO.sub(lambda m: m.group(1) + "***@", text)
    for secret in userinfo:
        for part in (secret, *secret.split(":", 1)):
            if len(part) >= 3 and part in text:  # the password, or the user alone, quoted without its URL
                text = text.replace(part, "***")
    return text


def _run_checks(base_url_argument: str | None, timeout: float) -> list[Check]:
    from . import __version__, _auto
    from ._config import BASE_URL_ENV, DEFAULT_BASE_URL, KEY_ENV, mask_key, resolve_key, validate_url
    from ._fallback import COOLDOWN_ENV, FALLBACK_ENV, resolve_cooldown, resolve_fallback

    checks: list[Check] = []
    python = ".".join(map(str, sys.version_info[:3]))
    checks.append(Check("python", OK if sys.version_info >= (3, 9) else ERROR, python, "prysmai needs Python 3.9+"))
    checks.append(Check("prysmai", OK, __version__))
    for package, need in (("openai", "pip install 'openai>=1'"), ("wrapt", "pip install 'wrapt>=1.14'")):
        found = _version(package)
        if found is None:
            checks.append(Check(package, ERROR, "not installed", need))
        else:
            checks.append(Check(package, OK, found))

    # -- settings ---------------------------------------------------------------------------------
    key: str | None = None
    raw_key, key_source = _source(None, KEY_ENV)
    if raw_key is None:
        checks.append(Check("prysm key", ERROR, f"not set ({KEY_ENV})", f"export {KEY_ENV}=sk-prysm-..."))
    else:
        try:
            key = resolve_key(raw_key)
        except (TypeError, ValueError) as exc:
            checks.append(Check("prysm key", ERROR, f"{KEY_ENV} (from the {key_source}): {exc}", "fix the key"))
        else:
            checks.append(Check("prysm key", OK, f"{mask_key(key)} (from the {key_source}, {KEY_ENV})"))

    url: str | None = None
    raw_url, url_source = _source(base_url_argument, BASE_URL_ENV)
    try:
        url = validate_url(raw_url, "--base-url" if url_source == "argument" else BASE_URL_ENV) if raw_url else None
    except (TypeError, ValueError) as exc:
        checks.append(Check("proxy url", ERROR, str(exc), f"set {BASE_URL_ENV} to the proxy's URL, ending in /api/v1"))
    else:
        if url is None:
            url = DEFAULT_BASE_URL
        from urllib.parse import urlsplit

        where = f"{url} (from the {url_source}{'' if url_source != 'environment' else ', ' + BASE_URL_ENV})"
        parts = urlsplit(url)
        if not parts.path.rstrip("/").endswith(API_PATH):
            suggested = f"{parts.scheme}://{parts.netloc}{API_PATH}"
            fix = f"add {API_PATH}: set {BASE_URL_ENV} to {suggested} (the proxy serves under {API_PATH})"
            checks.append(Check("proxy url", WARNING, f"{where} does not end in {API_PATH}", fix))
        else:
            checks.append(Check("proxy url", OK, where))

    auto_value = os.environ.get(_auto.AUTO_ENV)
    if _auto.enabled():
        if key is not None and url is not None:
            checks.append(
                Check(
                    "PRYSM_AUTO",
                    OK,
                    f"{auto_value!r}: instrument() runs when a Python process imports openai, provided prysmai's "
                    "start-up hook is on its path (`prysmai run -- ...` does that)",
                )
            )
        else:
            checks.append(
                Check(
                    "PRYSM_AUTO",
                    ERROR,
                    f"{auto_value!r}, but the settings above are wrong: processes run unobserved",
                    "fix the settings marked error",
                )
            )
    elif _auto.unrecognised() is not None:
        checks.append(
            Check("PRYSM_AUTO", WARNING, f"{auto_value!r} is not understood: off", "use 1/true/yes, or 0/false/no")
        )
    else:
        checks.append(Check("PRYSM_AUTO", OK, "off (use `prysmai run -- COMMAND` or PRYSM_AUTO=1 to activate)"))

    try:
        fallback = resolve_fallback(None, default=True)
        cooldown = resolve_cooldown(None)
    except (TypeError, ValueError) as exc:
        checks.append(Check("fallback", ERROR, str(exc), f"fix {FALLBACK_ENV} / {COOLDOWN_ENV}"))
    else:
        from ._breaker import DEFAULT_COOLDOWN

        seconds = DEFAULT_COOLDOWN if cooldown is None else cooldown
        _, fb_source = _source(None, FALLBACK_ENV)
        _, cd_source = _source(None, COOLDOWN_ENV)
        pause = f"cool-down {seconds:g} s (from the {cd_source})"
        if not fallback:
            checks.append(
                Check(
                    "fallback",
                    OK,
                    f"off (from the {fb_source}): instrument()/PRYSM_AUTO requests fail while the proxy is down",
                )
            )
        elif not os.environ.get("OPENAI_API_KEY"):
            checks.append(
                Check(
                    "fallback",
                    WARNING,
                    f"on (from the {fb_source}), {pause}, but OPENAI_API_KEY is not set here: "
                    "requests sent direct while the proxy is down need the app's own provider key",
                    "set OPENAI_API_KEY in the application's environment (or PRYSM_FALLBACK=0)",
                )
            )
        else:
            checks.append(
                Check(
                    "fallback",
                    OK,
                    f"on (from the {fb_source}) for instrument()/PRYSM_AUTO: while the proxy is down, requests go "
                    f"straight to the provider, uncaptured; {pause} before the proxy is tried again",
                )
            )
    openai_base = os.environ.get("OPENAI_BASE_URL")
    if openai_base:
        checks.append(
            Check(
                "OPENAI_BASE_URL",
                WARNING,
                f"{openai_base!r}: instrument() leaves clients that target it alone (not observed)",
                "pass include_base_urls=[...] to instrument(), or unset OPENAI_BASE_URL",
            )
        )

    # -- the proxy ------------------------------------------------------------------------------------
    if url is None:
        return checks
    checks += _proxy_checks(url, key, timeout, mask_key, KEY_ENV, BASE_URL_ENV)
    return checks


#: Where the proxy serves its API (and the OpenAI-compatible paths).
API_PATH = "/api/v1"


def _proxy_checks(url: str, key: str | None, timeout: float, mask_key: Any, key_env: str, url_env: str) -> list[Check]:
    """Whether the proxy at ``url`` is there, answers, and accepts ``key`` for sending requests."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    api_url = f"{parts.scheme}://{parts.netloc}{API_PATH}"
    lacks_api = not parts.path.rstrip("/").endswith(API_PATH)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    # A connection first: "nothing listens there" is not "something listens but never answers".
    reached = _connect(host, port, timeout)
    if reached is not None:
        fix = "start the proxy (`prysmai proxy`) or fix the URL's host and port"
        return [Check("proxy health", ERROR, f"cannot connect to {host}:{port} ({reached})", fix)]
    status, rtt, error = _get(url + "/health", None, timeout)
    if error == TIMED_OUT:
        detail = (
            f"{host}:{port} accepts connections but did not answer {url}/health within {timeout:g} s: "
            "the proxy is stuck or overloaded, or something else listens there"
        )
        return [Check("proxy health", ERROR, detail, "check the proxy's log and that this port is the proxy's")]
    if error is not None:
        return [Check("proxy health", ERROR, f"{url}/health: {error}", "check the URL and the proxy's log")]
    if status == 404 and lacks_api:
        detail = f"{url}/health answered HTTP 404: the URL lacks {API_PATH}, under which the proxy serves"
        return [Check("proxy health", ERROR, detail, f"add {API_PATH}: set {url_env} to {api_url}")]
    if status != 200:
        return [Check("proxy health", ERROR, f"{url}/health answered HTTP {status}", "is this a Prysm proxy?")]
    checks = [Check("proxy health", OK, f"{url}/health answered in {rtt * 1000:.1f} ms")]
    if key is None:
        return checks
    masked = mask_key(key)
    status, rtt, error, doc = _get_json(url + "/me", key, timeout)
    if error is not None:
        checks.append(Check("key accepted", ERROR, f"{url}/me: {error}", "check the proxy's log"))
    elif status == 401:
        message = _error_message(doc)
        from ._wire import KEYS_FROM_CONFIG, KEYS_FROM_FLAGS

        if KEYS_FROM_CONFIG in message:  # the proxy runs from a config file
            fix = (
                f"set {key_env} to {KEYS_FROM_CONFIG} (`keys = [...]` under `[projects.NAME]`, docs/projects.md); "
                "the proxy reloads the file on SIGHUP"
            )
        else:
            fix = f"set {key_env} to {KEYS_FROM_FLAGS} (read at start-up: restart it after adding one)"
        detail = f"the proxy rejects {masked} (HTTP 401): requests would fail with AuthenticationError"
        checks.append(Check("key accepted", ERROR, detail, fix))
    elif status == 200 and isinstance(doc, dict):
        if doc.get("admin"):
            detail = (
                f"{masked} is an admin key: it reads every project's traces (the dashboard, the read API) but "
                "cannot send requests; each would be refused with 403 admin_key_cannot_send"
            )
            checks.append(Check("key accepted", ERROR, detail, f"set {key_env} to a project's key"))
        else:
            project = doc.get("project")
            detail = f"the proxy accepts {masked} for sending, in project {project!r} ({rtt * 1000:.1f} ms)"
            checks.append(Check("key accepted", OK, detail))
        doc = _health_doc(url, key, timeout)
        for check in (_store_check(doc), _export_check(doc)):
            if check is not None:
                checks.append(check)
    else:
        checks.append(Check("key accepted", WARNING, f"could not check the key (HTTP {status} from {url}/me)", None))
    return checks


def _health_doc(url: str, key: str, timeout: float) -> dict[str, Any]:
    """The proxy's health answer to ``key`` (empty if it could not be read)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + "/health", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            doc = json.loads(response.read(65536))
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _store_check(doc: dict[str, Any]) -> Check | None:
    """Which store the proxy writes -- where, to an admin key (a URL's password masked by the
    proxy, its user too here) -- and, for a shared one, how far behind its outbox is and whether
    limits and log-ins are shared (``None``: the key may not see it, or the proxy predates it)."""
    kind = doc.get("store_kind")
    store = doc.get("store")
    if kind not in ("sqlite", "postgresql") or not isinstance(store, dict):
        return None
    location = doc.get("store_location")
    named = "SQLite" if kind == "sqlite" else "PostgreSQL"
    where = f"{named} {_printable(location)}" if isinstance(location, str) else f"{named} (an admin key sees where)"
    if kind == "sqlite":
        return Check("trace store", OK, where)
    backlog, behind = store.get("outbox_backlog", 0), store.get("outbox_behind_s", 0)
    detail = f"{where}; outbox: {backlog} trace(s) waiting"
    if backlog:
        detail += f", the oldest {behind} s old"
    replicas = doc.get("replicas")
    shared = isinstance(replicas, dict) and not replicas.get("error")
    detail += "; limits and log-ins shared with the other replicas" if shared else ""
    reason = doc.get("reason")
    if doc.get("status") != "ok" and isinstance(reason, str):
        fix = "check that PostgreSQL is up and reachable from the proxy; traces wait in the outbox meanwhile"
        return Check("trace store", WARNING, f"{detail}; {_printable(reason)}", fix)
    return Check("trace store", OK, detail)


def _export_check(doc: dict[str, Any]) -> Check | None:
    """The proxy's OTLP export, from its health answer (``None``: export is off, or the proxy
    predates it)."""
    export = doc.get("export")
    if not isinstance(export, dict):
        return None
    counts = (
        f"to {export.get('endpoint')}: {export.get('exported', 0)} exported, "
        f"{export.get('failed', 0)} failed, {export.get('waiting', 0)} waiting"
    )
    if export.get("error"):
        return Check("trace export", ERROR, f"OTLP export {counts}; {export['error']}", "see the proxy's log")
    if export.get("failing_since") is not None:
        return Check(
            "trace export",
            WARNING,
            f"OTLP export {counts}; failing ({export.get('last_error')})",
            "check that the collector is up and reachable from the proxy; spans wait in its outbox meanwhile",
        )
    return Check("trace export", OK, f"OTLP export {counts}")


#: What :func:`_get` says when the server took the request but did not answer in time.
TIMED_OUT = "timed out"


def _connect(host: str, port: int, timeout: float) -> str | None:
    """``None`` if a TCP connection to ``host:port`` opens, else why not."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"unknown host: {exc.strerror or exc}"
    except socket.timeout:  # TimeoutError from Python 3.10
        return f"no answer to the connection within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def _get(url: str, key: str | None, timeout: float) -> tuple[int, float, str | None]:
    """``(status, seconds, error)`` of one GET that costs nothing at the provider."""
    status, seconds, error, _ = _get_json(url, key, timeout)
    return status, seconds, error


def _get_json(url: str, key: str | None, timeout: float) -> tuple[int, float, str | None, Any]:
    """``(status, seconds, error, JSON document or None)`` of one GET."""
    import json
    import socket
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(65536)
            status = response.status
    except urllib.error.HTTPError as exc:
        body = exc.read(65536)
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:  # socket.timeout is an OSError
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.timeout) or isinstance(exc, socket.timeout):
            return 0, time.perf_counter() - start, TIMED_OUT, None
        return 0, time.perf_counter() - start, f"cannot connect ({reason})", None
    seconds = time.perf_counter() - start
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return status, seconds, None, doc


def _error_message(doc: Any) -> str:
    error = doc.get("error") if isinstance(doc, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


def main(base_url: str | None, as_json: bool, timeout: float) -> int:
    """Print the checks; 1 if any is an error, else 0."""
    checks = run_checks(base_url, timeout)
    failed = any(c.status == ERROR for c in checks)
    if as_json:
        import json

        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status:<8} {c.name:<{width}}  {c.detail}")
            if c.fix and c.status != OK:
                print(f"{'':<8} {'':<{width}}  -> {c.fix}")
        print("\n" + ("problems found (see the lines marked error)" if failed else "no problems found"))
    return 1 if failed else 0
