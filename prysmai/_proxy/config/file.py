"""The proxy's config file (``--config prysm.toml`` or ``PRYSM_CONFIG``): projects, their keys and
their providers, read into a :class:`~.projects.Tenancy`.

Everything is checked here, at load, because this is the earliest point: a typo, a missing
credential or an ambiguous route stops the start-up (or is refused by a reload) with one message
naming the file and line and saying what to do. No message ever holds a key or a credential:
they name the key's position, its id, the environment variable or the file instead.

The format is described in docs/projects.md (an example: docs/prysm.example.toml).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import sys
from urllib.parse import urlsplit

from . import projects
from .keys import KeyConfigError, _validate, digest_key_id, key_digest
from .policy import PolicyError, StoragePolicy, check_capture, check_pattern, check_sets, parse_duration
from .pricing import Price
from .projects import AZURE, DEMO, OPENAI, PROVIDER_KINDS, Limits, Project, Provider, Tenancy
from .reload import identity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport, in the proxy extra below Python 3.11
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, NoReturn, Union

    #: A place in the parsed document: table keys and array indexes.
    Path = tuple[Union[str, int], ...]

#: The environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "PRYSM_CONFIG"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-'"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})\Z")
#: Anything that looks like a key or a provider credential, scrubbed from every message as a last
#: line of defence (the messages are built not to hold one in the first place).
_SECRETISH = re.compile(r"sk-[A-Za-z0-9_\-]{12,}")
_SYNTAX_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")

_TOP_FIELDS = ("admin", "dashboard", "projects")
_ADMIN_FIELDS = ("keys",)
_DASHBOARD_FIELDS = ("session_secret",)
#: The fewest characters a configured session secret may have (it signs every log-in's cookie).
MIN_SESSION_SECRET = 32
_PROJECT_FIELDS = (
    "name",
    "keys",
    "default_provider",
    "requests_per_minute",
    "monthly_budget_usd",
    "providers",
    "capture",
    "redact",
    "redact_patterns",
    "retention",
)
_PROVIDER_FIELDS = (
    "name",
    "kind",
    "base_url",
    "api_key",
    "api_version",
    "models",
    "prefix",
    "deployments",
    "prices",
)
_PRICE_FIELDS = ("input", "output", "cached_input")
#: Last path segments that mean a base_url is an endpoint, not an API base.
_ENDPOINTS = frozenset({"completions", "responses", "embeddings", "models"})


class ConfigError(ValueError):
    """The config file cannot be used. The message names the file and line and says what to do;
    it never contains a key or a credential."""


def load_tenancy(
    config_file: str | None,
    keys: Iterable[str],
    upstream: str,
    upstream_api_key: str | None,
    policy: StoragePolicy | None = None,
) -> Tenancy:
    """Who may do what: the config file's projects (``config_file``), else the command line's
    keys and upstream as the one project ``default``. ``policy``: the storage policy of the
    proxy's flags (a project of the file that sets no policy field of its own has it). The one
    loader of the proxy, its reloads, ``prysmai ui`` and the CLI. Raises :class:`ConfigError`
    (``OSError`` for a file it cannot read)."""
    if config_file:
        return load(config_file, policy=policy)
    return projects.flat(keys, upstream, upstream_api_key, policy)


def load(
    path: str,
    environ: Mapping[str, str] | None = None,
    *,
    secrets: bool = True,
    policy: StoragePolicy | None = None,
) -> Tenancy:
    """Read and check the config file at ``path`` (see the module docstring).

    ``environ`` (default ``os.environ``) holds the variables that ``{ env = "NAME" }`` entries
    name. With ``secrets=False`` those entries and ``{ file = ... }`` credentials are not read (no
    credential, no key from the environment): for tools that need the file's structure, such as
    its project names, where the proxy's secrets are not set.
    """
    raw, stamp = _read(path)
    text, doc = _parse(path, raw)
    reader = _Reader(path, text, os.environ if environ is None else environ, secrets, policy or StoragePolicy())
    tenancy = reader.tenancy(doc)
    tenancy.stamp = stamp
    return tenancy


def read_document(path: str) -> tuple[str, dict[str, Any]]:
    """The file's text and its parsed TOML, unchecked (:class:`ConfigError` if either fails)."""
    return _parse(path, _read(path)[0])


def _read(path: str) -> tuple[bytes, tuple[int, int, int]]:
    """The file's bytes and the identity of the file they were read from (for the reload's watch)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
            stamp = identity(os.fstat(fh.fileno()))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc}); check the path") from None
    return raw, stamp


def _parse(path: str, raw: bytes) -> tuple[str, dict[str, Any]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_message(path, text, str(exc))) from None


def _syntax_message(path: str, text: str, message: str) -> str:
    found = _SYNTAX_AT.search(message)
    where = f"{path}:{text.count(chr(10)) + 1}"
    if found:
        message = message[: found.start()]
        if found.group(1):
            where = f"{path}:{found.group(1)}:{found.group(2)}"
    return _scrub(f"{where}: TOML syntax error: {message}; fix the syntax (see https://toml.io)")


def _scrub(message: str) -> str:
    return _SECRETISH.sub("sk-***", message)


def _label(table: dict[str, Any], what: str, index: int) -> str:
    """``project 'web'`` when the table has a valid name, else ``the project #2``."""
    name = table.get("name")
    if isinstance(name, str) and _valid_name(name):
        return f"{what} {name!r}"
    return f"the {what} #{index + 1}"


def _valid_name(name: str) -> bool:
    # A key pasted as a name would be shown in every trace and log line: names never look like one.
    return bool(_NAME.match(name)) and not name.lower().startswith("sk-")


def _show(value: str) -> str:
    """A user's string for a message, unless it may be a secret."""
    if _SECRETISH.search(value) or len(value) > 200:
        return "(a value not shown)"
    return repr(value)


class _Reader:
    """Turns the parsed document into a :class:`Tenancy`, raising :class:`ConfigError` at the first
    problem."""

    def __init__(self, path: str, text: str, environ: Mapping[str, str], secrets: bool, policy: StoragePolicy) -> None:
        self.path = path
        self.text = text
        self.environ = environ
        self.secrets = secrets
        #: The proxy's flags: what a project that says nothing keeps.
        self.default_policy = policy
        self._lines: dict[Path, int] | None = None

    # -- errors ----------------------------------------------------------------------------------
    def fail(self, where: Path, message: str) -> NoReturn:
        # from None: an exception being handled (a decoding error holds the bytes it could not
        # decode) is not shown under this one in a traceback.
        raise ConfigError(_scrub(f"{self.path}:{self.line(where)}: {message}")) from None

    def line(self, where: Path) -> int:
        """The line of ``where`` in the text, else of its closest enclosing table or array."""
        if self._lines is None:
            try:
                self._lines = _line_index(self.text)
            except Exception:  # the index is a help for messages; a gap in it must not hide the error
                self._lines = {}
        while where:
            if where in self._lines:
                return self._lines[where]
            where = where[:-1]
        return 1

    # -- shapes ----------------------------------------------------------------------------------
    def table(self, value: Any, where: Path, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"{what} must be a table")
        return value

    def fields(self, table: dict[str, Any], allowed: tuple[str, ...], where: Path, what: str) -> None:
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "a typo?"
                fields = ", ".join(allowed)
                self.fail((*where, name), f"{what}: unknown field {_show(name)} ({hint}); the fields are: {fields}")

    def string(self, table: dict[str, Any], name: str, where: Path, what: str, required: bool = False) -> str | None:
        value = table.get(name)
        if value is None:
            if required:
                self.fail(where, f'{what}: {name} is missing; add {name} = "..."')
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail((*where, name), f"{what}: {name} must be a non-empty string")
        return value

    def name(self, table: dict[str, Any], where: Path, what: str) -> str:
        value = self.string(table, "name", where, what, required=True)
        assert value is not None
        if not _valid_name(value):
            self.fail((*where, "name"), f"{what}: name {_show(value)} is not a valid name; use {_NAME_RULE}")
        return value

    def strings(self, table: dict[str, Any], name: str, where: Path, what: str) -> list[str]:
        value = table.get(name, [])
        if not isinstance(value, list):
            self.fail((*where, name), f'{what}: {name} must be a list of strings, like {name} = ["..."]')
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.fail((*where, name, i), f"{what}: {name} must hold non-empty strings only")
        return list(dict.fromkeys(value))

    # -- the document ----------------------------------------------------------------------------
    def tenancy(self, doc: dict[str, Any]) -> Tenancy:
        self.fields(doc, _TOP_FIELDS, (), "the config file")
        owners: dict[bytes, tuple[str, Path]] = {}
        keys: list[tuple[bytes, Project | None]] = []

        def add_keys(found: list[tuple[bytes, Path]], project: Project | None, label: str) -> None:
            for digest, where in found:
                if digest in owners:
                    other, _ = owners[digest]
                    if other == label:
                        continue  # the same key twice in one list: harmless
                    self.fail(
                        where,
                        f"the key {digest_key_id(digest)} is in both {other} and {label}; "
                        "a key belongs to one project (or to [admin]): remove one of them",
                    )
                owners[digest] = (label, where)
                keys.append((digest, project))

        admin = doc.get("admin")
        if admin is not None:
            admin = self.table(admin, ("admin",), "[admin]")
            self.fields(admin, _ADMIN_FIELDS, ("admin",), "[admin]")
            add_keys(self.keys(admin, ("admin",), "[admin]"), None, "[admin]")

        entries = doc.get("projects")
        if entries is None or entries == []:
            self.fail((), "no projects: declare at least one [[projects]] table with a name, keys and providers")
        if not isinstance(entries, list):
            self.fail(("projects",), "projects must be an array of tables: write each one as [[projects]]")
        seen: dict[str, int] = {}
        built: list[Project] = []
        for i, entry in enumerate(entries):
            where: Path = ("projects", i)
            entry = self.table(entry, where, f"the project #{i + 1}")
            project = self.project(entry, where, i)
            if project.name in seen:
                self.fail(
                    (*where, "name"),
                    f"project {project.name!r} is declared twice (also project #{seen[project.name] + 1}); "
                    "project names must be unique",
                )
            seen[project.name] = i
            built.append(project)
            label = f"project {project.name!r}"
            add_keys(self.keys(entry, where, label), project, label)
        if not keys and self.secrets:
            self.fail(
                ("projects", 0),
                "no keys: give a project (or [admin]) keys = [...]; make one with `prysmai keys new --project NAME`",
            )
        return Tenancy(built, keys, source=self.path, session_secret=self.session_secret(doc.get("dashboard")))

    def session_secret(self, value: Any) -> bytes | None:
        """``[dashboard] session_secret``: the secret that signs the dashboard's log-ins, the same
        on every replica given this file (``None``: not configured)."""
        if value is None:
            return None
        table = self.table(value, ("dashboard",), "[dashboard]")
        self.fields(table, _DASHBOARD_FIELDS, ("dashboard",), "[dashboard]")
        where: Path = ("dashboard", "session_secret")
        secret = self.credential(table.get("session_secret"), where, "[dashboard]", "session_secret")
        if secret is not None and len(secret) < MIN_SESSION_SECRET:
            self.fail(
                where,
                f"[dashboard]: session_secret must have at least {MIN_SESSION_SECRET} characters (it signs the "
                "log-ins' cookies); make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            )
        return secret

    def project(self, entry: dict[str, Any], where: Path, index: int) -> Project:
        what = _label(entry, "project", index)
        self.fields(entry, _PROJECT_FIELDS, where, what)
        name = self.name(entry, where, what)
        limits = Limits(
            requests_per_minute=self.positive(entry, "requests_per_minute", where, what, whole=True),
            monthly_budget_usd=self.positive(entry, "monthly_budget_usd", where, what, whole=False),
        )
        raw_providers = entry.get("providers", [])
        if not isinstance(raw_providers, list):
            self.fail((*where, "providers"), f"{what}: write each provider as a [[projects.providers]] table")
        providers: list[Provider] = []
        for j, raw in enumerate(raw_providers):
            pwhere: Path = (*where, "providers", j)
            raw = self.table(raw, pwhere, f"{what}, provider #{j + 1}")
            provider = self.provider(raw, pwhere, f"{what}, {_label(raw, 'provider', j)}")
            for other in providers:
                if other.name == provider.name:
                    self.fail((*pwhere, "name"), f"{what}: two providers are named {provider.name!r}; rename one")
            providers.append(provider)
        self.check_routes(providers, where, what)
        default = None
        default_name = self.string(entry, "default_provider", where, what)
        if default_name is not None:
            default = next((p for p in providers if p.name == default_name), None)
            if default is None:
                names = ", ".join(repr(p.name) for p in providers) or "none declared"
                self.fail(
                    (*where, "default_provider"),
                    f"{what}: default_provider {_show(default_name)} is not one of its providers ({names})",
                )
        if default is None and not any(p.models or p.prefix for p in providers):
            self.fail(
                where,
                f"{what} routes no model anywhere: give it a default_provider, or a provider with models = [...] "
                'or prefix = "..."',
            )
        for j, provider in enumerate(providers):
            if provider is not default and not provider.models and not provider.prefix:
                self.fail(
                    (*where, "providers", j),
                    f"{what}: no request can reach provider {provider.name!r}: give it models = [...] or "
                    'prefix = "...", or make it the default_provider',
                )
        return Project(name, tuple(providers), default, limits, self.policy(entry, where, what))

    def policy(self, entry: dict[str, Any], where: Path, what: str) -> StoragePolicy:
        """The project's storage policy: its own fields over the proxy's flags."""
        base = self.default_policy
        capture = self.string(entry, "capture", where, what) or base.capture
        try:
            check_capture(capture)
        except PolicyError as exc:
            self.fail((*where, "capture"), f"{what}: {exc}")
        redact = base.redact
        if "redact" in entry:
            redact = tuple(self.strings(entry, "redact", where, what))
            try:
                check_sets(redact)
            except PolicyError as exc:
                self.fail((*where, "redact"), f"{what}: redact: {exc}")
        patterns = base.patterns
        raw = entry.get("redact_patterns")
        if raw is not None:
            table = self.table(raw, (*where, "redact_patterns"), f"{what}: redact_patterns")
            found: list[tuple[str, str]] = []
            for name, pattern in table.items():
                pwhere: Path = (*where, "redact_patterns", name)
                if not isinstance(pattern, str):
                    self.fail(
                        pwhere,
                        f"{what}: redact_patterns maps a name to a regular expression, "
                        'like employee_id = "EMP-[0-9]{6}"',
                    )
                try:
                    check_pattern(name, pattern)
                except PolicyError as exc:
                    self.fail(pwhere, f"{what}: {exc}")
                found.append((name, pattern))
            patterns = tuple(found)
        retention = base.retention_seconds
        text = self.string(entry, "retention", where, what)
        if text is not None:
            if text.strip().lower() == "forever":
                retention = None
            else:
                try:
                    retention = parse_duration(text)
                except PolicyError as exc:
                    self.fail((*where, "retention"), f'{what}: retention: {exc} (or "forever")')
        return StoragePolicy(capture, redact, patterns, base.max_body_bytes, retention)

    def check_routes(self, providers: list[Provider], where: Path, what: str) -> None:
        """A model or a prefix in two providers would make the route depend on their order."""
        owner: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        for j, provider in enumerate(providers):
            pwhere: Path = (*where, "providers", j)
            for k, model in enumerate(provider.models):
                if model in owner:
                    self.fail(
                        (*pwhere, "models", k),
                        f"{what}: the model {_show(model)} is in the models of both providers {owner[model]!r} "
                        f"and {provider.name!r}; keep it in one",
                    )
                owner[model] = provider.name
            if provider.prefix is not None:
                if provider.prefix in prefixes:
                    self.fail(
                        (*pwhere, "prefix"),
                        f"{what}: providers {prefixes[provider.prefix]!r} and {provider.name!r} have the same "
                        "prefix; give each its own",
                    )
                prefixes[provider.prefix] = provider.name

    def positive(self, entry: dict[str, Any], name: str, where: Path, what: str, whole: bool) -> Any:
        value = entry.get(name)
        if value is None:
            return None
        ok = isinstance(value, int) if whole else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
            kind = "a whole number" if whole else "a number"
            self.fail((*where, name), f"{what}: {name} must be {kind} greater than 0 (leave it out for no limit)")
        return value if whole else float(value)

    # -- keys ------------------------------------------------------------------------------------
    def keys(self, entry: dict[str, Any], where: Path, label: str) -> list[tuple[bytes, Path]]:
        """The digests of the keys in ``entry['keys']``, each with its place."""
        value = entry.get("keys", [])
        kwhere: Path = (*where, "keys")
        if not isinstance(value, list):
            self.fail(kwhere, f'{label}: keys must be a list, like keys = ["sha256:..."]')
        found = []
        for i, item in enumerate(value):
            digest = self.key(item, (*kwhere, i), f"{label}, key #{i + 1}")
            if digest is not None:
                found.append((digest, (*kwhere, i)))
        return found

    def key(self, item: Any, where: Path, what: str) -> bytes | None:
        hint = 'a "sha256:<64 hex digits>" hash (see `prysmai keys hash`), a key, or { env = "NAME" }'
        if isinstance(item, str):
            hashed = _HASH.match(item)
            if hashed:
                return bytes.fromhex(hashed.group(1))
            if item.startswith("sha256:"):
                self.fail(where, f"{what}: a sha256: hash needs exactly 64 hex digits after 'sha256:'")
            try:
                key = _validate(item, what)
            except KeyConfigError as exc:
                self.fail(where, f"{exc}; or store its hash instead (`prysmai keys hash`)")
            return key_digest(key)
        if isinstance(item, dict):
            if set(item) != {"env"} or not isinstance(item["env"], str):
                self.fail(where, f"{what}: must be {hint}")
            variable = self.variable(item["env"], where, what)
            if not self.secrets:
                return None
            if not self.environ.get(variable, "").strip():
                self.fail(where, f"{what}: the environment variable {variable} is not set (or empty); set it")
            try:
                key = _validate(self.environ[variable], f"the environment variable {variable} ({what})")
            except KeyConfigError as exc:
                self.fail(where, str(exc))
            return key_digest(key)
        self.fail(where, f"{what}: must be {hint}")

    def variable(self, name: str, where: Path, what: str) -> str:
        if not _ENV_NAME.match(name):
            self.fail(where, f"{what}: {_show(name)} is not an environment variable name (letters, digits, '_')")
        return name

    # -- providers -------------------------------------------------------------------------------
    def provider(self, raw: dict[str, Any], where: Path, what: str) -> Provider:
        self.fields(raw, _PROVIDER_FIELDS, where, what)
        name = self.name(raw, where, what)
        kind = self.string(raw, "kind", where, what)
        if kind is None or kind not in PROVIDER_KINDS:
            kinds = ", ".join(f'"{k}"' for k in PROVIDER_KINDS)
            where_kind: Path = (*where, "kind") if kind is not None else where
            self.fail(where_kind, f"{what}: kind must be one of {kinds}")
        base_url = self.base_url(raw, kind, where, what)
        api_version = self.string(raw, "api_version", where, what)
        if kind == AZURE and api_version is None:
            self.fail(where, f'{what}: Azure needs api_version; add api_version = "2024-10-21" (or the one you use)')
        if kind != AZURE and api_version is not None:
            self.fail((*where, "api_version"), f'{what}: api_version is for kind = "azure" only; remove it')
        deployments = self.deployments(raw, kind, where, what)
        prefix = self.string(raw, "prefix", where, what)
        return Provider(
            name=name,
            kind=kind,
            base_url=base_url,
            credential=self.credential(raw.get("api_key"), (*where, "api_key"), what),
            api_version=api_version,
            models=tuple(self.strings(raw, "models", where, what)),
            prefix=prefix,
            deployments=deployments,
            prices=self.prices(raw.get("prices"), (*where, "prices"), what),
        )

    def base_url(self, raw: dict[str, Any], kind: str, where: Path, what: str) -> str:
        value = self.string(raw, "base_url", where, what)
        if kind == DEMO:
            if value is not None:
                self.fail((*where, "base_url"), f"{what}: the demo model takes no base_url; remove it")
            return projects.DEMO_BASE_URL
        if value is None:
            if kind == OPENAI:
                return projects.OPENAI_BASE_URL
            example = "https://NAME.openai.azure.com" if kind == AZURE else "http://127.0.0.1:11434/v1"
            self.fail(where, f'{what}: kind = "{kind}" needs base_url, like base_url = "{example}"')
        uwhere: Path = (*where, "base_url")
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(uwhere, f"{what}: base_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            # A credential in the URL would end up in logs: it belongs in api_key.
            self.fail(uwhere, f"{what}: base_url must not hold a user or password; put the credential in api_key")
        if parts.query or parts.fragment:
            self.fail(uwhere, f"{what}: base_url must have no query or fragment (?... or #...)")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            self.fail(uwhere, f"{what}: base_url has an invalid port")
        url = value.strip().rstrip("/")
        if kind == AZURE and ("/openai/" in parts.path + "/" or "/deployments" in parts.path):
            self.fail(
                uwhere,
                f"{what}: Azure's base_url is the resource endpoint, like https://NAME.openai.azure.com "
                "(the proxy adds /openai/deployments/...)",
            )
        endpoint = parts.path.rstrip("/").rsplit("/", 1)[-1]
        if endpoint in _ENDPOINTS:
            # The client's path is appended to the base: .../chat/completions/chat/completions.
            self.fail(uwhere, f"{what}: base_url is an endpoint ({endpoint}); give the API's base, like .../v1")
        return url

    def deployments(self, raw: dict[str, Any], kind: str, where: Path, what: str) -> dict[str, str]:
        value = raw.get("deployments")
        if value is None:
            return {}
        dwhere: Path = (*where, "deployments")
        if kind != AZURE:
            self.fail(dwhere, f'{what}: deployments are for kind = "azure" only; remove them')
        table = self.table(value, dwhere, f"{what}: deployments")
        for model, deployment in table.items():
            if not isinstance(deployment, str) or not deployment.strip():
                self.fail((*dwhere, model), f"{what}: deployments maps a model to a deployment name (a string)")
        return dict(table)

    def credential(self, value: Any, where: Path, what: str, field: str = "api_key") -> bytes | None:
        """A secret given as ``{ env = "NAME" }`` or ``{ file = "PATH" }`` (never written in the
        file itself): its ASCII bytes, or ``None`` when absent or not read (``secrets=False``)."""
        if value is None:
            return None
        if isinstance(value, str):
            self.fail(
                where,
                f'{what}: {field} must not be written in the file; use {field} = {{ env = "NAME" }} '
                f'(an environment variable) or {field} = {{ file = "/run/secrets/NAME" }}',
            )
        if not isinstance(value, dict) or len(value) != 1 or not set(value) <= {"env", "file"}:
            self.fail(where, f'{what}: {field} must be {{ env = "NAME" }} or {{ file = "PATH" }}')
        ((source, name),) = value.items()
        if not isinstance(name, str) or not name:
            self.fail(where, f"{what}: {field}'s {source} must be a non-empty string")
        if source == "env":
            variable = self.variable(name, where, what)
            if not self.secrets:
                return None
            secret = self.environ.get(variable, "").strip()
            if not secret:
                self.fail(where, f"{what}: the environment variable {variable} (its {field}) is not set or empty")
            origin = f"the environment variable {variable}"
        else:
            if not self.secrets:
                return None
            # A relative path is taken from the config file's folder, wherever the proxy was started.
            full = os.path.join(os.path.dirname(os.path.abspath(self.path)), os.path.expanduser(name))
            try:
                secret = _read_secret(full).decode("utf-8").strip()
            except _NotAFile as exc:
                self.fail(
                    where,
                    f"{what}: its {field} file {name} is not a regular file ({exc}); give the path of a file "
                    "holding the credential",
                )
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
                self.fail(where, f"{what}: cannot read its {field} file {name} ({reason})")
            if not secret:
                self.fail(where, f"{what}: its {field} file {name} is empty")
            origin = f"the file {name}"
        if not secret.isascii() or not secret.isprintable() or any(c.isspace() for c in secret):
            # It goes into an HTTP header, where a line break or a non-ASCII byte cannot be sent.
            self.fail(where, f"{what}: the {field} in {origin} has spaces, line breaks or non-ASCII characters")
        return secret.encode("ascii")

    def prices(self, value: Any, where: Path, what: str) -> dict[str, Price]:
        if value is None:
            return {}
        table = self.table(value, where, f"{what}: prices")
        prices: dict[str, Price] = {}
        for model, entry in table.items():
            mwhere: Path = (*where, model)
            shape = f"{what}: the price of {_show(model)} must be {{ input = X, output = Y, cached_input = Z }}"
            if not isinstance(entry, dict) or "input" not in entry:
                self.fail(mwhere, f"{shape} (USD per million tokens; input is required)")
            self.fields(entry, _PRICE_FIELDS, mwhere, f"{what}: the price of {_show(model)}")
            numbers: dict[str, float | None] = {}
            for field in _PRICE_FIELDS:
                number = entry.get(field)
                if number is not None and (
                    isinstance(number, bool)
                    or not isinstance(number, (int, float))
                    or not math.isfinite(number)
                    or number < 0
                ):
                    self.fail((*mwhere, field), f"{shape}: {field} must be a number, 0 or more (0 = free)")
                numbers[field] = None if number is None else float(number)
            prices[model] = Price(float(entry["input"]), numbers["output"], numbers["cached_input"])
        return prices


#: Most bytes read from a credential file (a key is a line; a larger file is not one).
_MAX_SECRET_BYTES = 64 * 1024


class _NotAFile(OSError):
    pass


def _read_secret(path: str) -> bytes:
    """A credential file's bytes. Anything but a regular file is refused before a byte is read:
    a FIFO or a device would block the read until someone writes to it (or forever). Opened
    without blocking, so that a FIFO is seen for what it is rather than waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise _NotAFile(f"it is {kind}")
        return os.read(fd, _MAX_SECRET_BYTES)
    finally:
        os.close(fd)


# -- where things are in the text ------------------------------------------------------------------
def _line_index(text: str) -> dict[Path, int]:
    """The line of every table header, key and array element of a valid TOML document, by its
    place in the parsed document (``("projects", 1, "providers", 0, "base_url")``). Only for
    messages: it assumes the text already parsed."""
    return _Scanner(text).run()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.index: dict[Path, int] = {}

    def run(self) -> dict[Path, int]:
        table: Path = ()
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables name -> elements so far
        text, n = self.text, len(self.text)
        while True:
            self.blank(newlines=True)
            if self.i >= n:
                return self.index
            if text[self.i] == "[":
                array = text.startswith("[[", self.i)
                self.i += 2 if array else 1
                name = tuple(str(part) for part in self.key_parts())
                self.i = text.index("]", self.i) + (2 if array else 1)
                place: list[str | int] = []
                for depth in range(1, len(name) + 1):
                    place.append(name[depth - 1])
                    prefix = name[:depth]
                    if depth == len(name) and array:
                        arrays[prefix] = arrays.get(prefix, 0) + 1
                        # A new element starts its own sub-arrays from zero.
                        for other in [a for a in arrays if len(a) > depth and a[:depth] == prefix]:
                            del arrays[other]
                    if prefix in arrays:
                        place.append(arrays[prefix] - 1)
                table = tuple(place)
                self.index.setdefault(table, self.line)
            else:
                self.pair(table)

    def pair(self, table: Path) -> None:
        line = self.line
        parts = self.key_parts()
        for depth in range(1, len(parts) + 1):  # a dotted key also places its tables
            self.index.setdefault((*table, *parts[:depth]), line)
        where = (*table, *parts)
        self.i += 1  # '='
        self.value(where)

    def key_parts(self) -> list[str]:
        parts: list[str] = []
        text = self.text
        while True:
            self.blank()
            c = text[self.i]
            if c in "\"'":
                start = self.i
                self.string()
                parts.append(str(tomllib.loads("k = " + text[start : self.i])["k"]))
            else:
                start = self.i
                while text[self.i] not in " \t.=]":
                    self.i += 1
                parts.append(text[start : self.i])
            self.blank()
            if text[self.i] != ".":
                return parts
            self.i += 1

    def value(self, where: Path) -> None:
        self.blank()
        text = self.text
        c = text[self.i]
        if c == "[":
            self.i += 1
            element = 0
            while True:
                self.blank(newlines=True)
                if text[self.i] == "]":
                    self.i += 1
                    return
                self.index.setdefault((*where, element), self.line)
                self.value((*where, element))
                self.blank(newlines=True)
                if text[self.i] == ",":
                    self.i += 1
                    element += 1
        elif c == "{":
            self.i += 1
            while True:
                self.blank(newlines=True)
                if text[self.i] == "}":
                    self.i += 1
                    return
                self.pair(where)
                self.blank(newlines=True)
                if text[self.i] == ",":
                    self.i += 1
        elif c in "\"'":
            self.string()
        else:
            while self.i < len(text) and text[self.i] not in ",]}\n#":
                self.i += 1

    def string(self) -> None:
        text = self.text
        quote = text[self.i]
        triple = text.startswith(quote * 3, self.i)
        self.i += 3 if triple else 1
        while True:
            c = text[self.i]
            if c == "\\" and quote == '"':
                self.i += 2
                if text[self.i - 1] == "\n":
                    self.line += 1
                continue
            if c == "\n":
                self.line += 1
            if c == quote and (not triple or text.startswith(quote * 3, self.i)):
                self.i += 3 if triple else 1
                # A multi-line string may end with up to two more quotes of its own.
                while triple and self.i < len(text) and text[self.i] == quote:
                    self.i += 1
                return
            self.i += 1

    def blank(self, newlines: bool = False) -> None:
        """Skip spaces and comments (and line breaks when ``newlines``)."""
        text, n = self.text, len(self.text)
        while self.i < n:
            c = text[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "#":
                while self.i < n and text[self.i] != "\n":
                    self.i += 1
            elif c == "\n" and newlines:
                self.line += 1
                self.i += 1
            else:
                return
