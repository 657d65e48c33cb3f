"""Projects, their keys and their providers: who may send what where, and read which traces.

A :class:`Tenancy` is the proxy's whole access configuration at one moment. It comes from a
config file (:func:`~.file.load`, ``--config prysm.toml``) or, without one, from the flat
key list and upstream of the command line as one project named ``default``
(:func:`flat`). The request path asks it two things: which key is this (:meth:`Tenancy.identify`:
its id, its project, or an admin key that reads every project), and which provider serves this
model in that project (:meth:`Project.route`). A reload builds a new :class:`Tenancy` and swaps it
in; a request in flight keeps the objects it started with, so it finishes under the old one.

Keys are held only as SHA-256 digests: a config file may name ``sha256:`` hashes instead of keys,
and a presented key is hashed once and looked up, so the proxy never needs the key itself.
Provider credentials are held as bytes, never shown in a ``repr``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from urllib.parse import quote

from .keys import digest_key_id, key_digest, sha256
from .policy import StoragePolicy
from .pricing import Price

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: The project of a proxy started without a config file (and of traces written before projects).
DEFAULT_PROJECT = "default"
#: Provider kinds (``kind =`` in the config).
OPENAI, AZURE, COMPATIBLE, DEMO = "openai", "azure", "openai-compatible", "demo"
PROVIDER_KINDS = (OPENAI, AZURE, COMPATIBLE, DEMO)
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: The offline demo model's stand-in address (never contacted).
DEMO_BASE_URL = "http://prysm-demo.invalid/v1"


@dataclass(frozen=True)
class Provider:
    """One place a project's requests can go, with the credential the proxy sends there."""

    name: str
    kind: str
    #: OpenAI / OpenAI-compatible: the API base (``.../v1``); Azure: the resource endpoint
    #: (``https://NAME.openai.azure.com``); demo: unused.
    base_url: str
    credential: bytes | None = field(default=None, repr=False)
    #: Azure's ``api-version`` query parameter.
    api_version: str | None = None
    #: Exact model names routed here.
    models: tuple[str, ...] = ()
    #: ``ollama/`` routes ``ollama/llama3.1`` here as ``llama3.1``.
    prefix: str | None = None
    #: Azure: model name -> deployment name (default: the model name).
    deployments: Mapping[str, str] = field(default_factory=dict)
    #: USD per million tokens by model as this provider names it; ``Price(0, 0)`` is known free.
    prices: Mapping[str, Price] = field(default_factory=dict)

    def url(self, endpoint: str, model: str | None, query: str = "") -> str:
        """The upstream URL for ``endpoint`` (the path below ``/api/v1/``, already percent-encoded
        as the client sent it) and ``query`` (raw query string, may be empty)."""
        if self.kind == AZURE:
            version = f"api-version={quote(self.api_version or '', safe='')}"
            query = f"{query}&{version}" if query else version
            if model:
                deployment = self.deployments.get(model, model)
                path = f"{self.base_url}/openai/deployments/{quote(deployment, safe='')}/{endpoint}"
            else:
                path = f"{self.base_url}/openai/{endpoint}"
        else:
            path = f"{self.base_url}/{endpoint}"
        return f"{path}?{query}" if query else path

    @functools.cached_property
    def price_ref(self) -> tuple[str | None, str | None]:
        """How the price database (:mod:`.pricedb`) knows this provider: (its provider id, or
        ``None`` and the API URL it recognises providers by)."""
        if self.kind == AZURE:
            return "azure", None
        if self.kind in (OPENAI, DEMO):  # the demo answers as OpenAI's models would be priced
            return "openai", None
        return None, self.base_url

    def auth_header(self, override: bytes | None = None) -> tuple[bytes, bytes] | None:
        """The credential header for this provider: ``Authorization: Bearer`` (``api-key`` for
        Azure). ``override`` is a per-request key (``X-Prysm-Upstream-Key``)."""
        secret = override or self.credential
        if not secret:
            return None
        if self.kind == AZURE:
            return (b"api-key", secret)
        return (b"authorization", b"Bearer " + secret)


@dataclass(frozen=True)
class Limits:
    """A project's limits; ``None`` is no limit."""

    requests_per_minute: int | None = None
    monthly_budget_usd: float | None = None


@dataclass(frozen=True)
class Project:
    name: str
    providers: tuple[Provider, ...]
    default_provider: Provider | None = None
    limits: Limits = field(default_factory=Limits)
    #: What the store keeps of its traces (redaction, capture, body cap, retention).
    policy: StoragePolicy = field(default_factory=StoragePolicy)
    # The routing table, built once: exact names, then prefixes longest first.
    _exact: dict[str, Provider] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[tuple[str, Provider], ...] = field(init=False, repr=False, compare=False)
    #: Whether any limit is set (a project without one skips the check on the request path).
    limited: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, Provider] = {}
        for provider in reversed(self.providers):  # the first provider listing a model wins
            exact.update(dict.fromkeys(provider.models, provider))
        prefixes = sorted(((p.prefix, p) for p in self.providers if p.prefix), key=lambda e: -len(e[0]))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_prefixes", tuple(prefixes))
        limits = self.limits
        object.__setattr__(
            self, "limited", limits.requests_per_minute is not None or limits.monthly_budget_usd is not None
        )

    def route(self, model: str | None) -> tuple[Provider, str | None] | None:
        """The provider for ``model`` and the model name to send it (``None``: unchanged): an
        exact name first, then the longest matching prefix (stripped), then the default."""
        if model:
            provider = self._exact.get(model)
            if provider is not None:
                return provider, None
            for prefix, provider in self._prefixes:
                if model.startswith(prefix) and len(model) > len(prefix):
                    return provider, model[len(prefix) :]
        if self.default_provider is not None:
            return self.default_provider, None
        return None


@dataclass(frozen=True)
class KeyEntry:
    """An accepted key: its public id and its project (``None`` for an admin key)."""

    key_id: str
    project: Project | None

    @property
    def admin(self) -> bool:
        return self.project is None

    @property
    def project_name(self) -> str | None:
        """The project whose traces this key reads; ``None``: every project."""
        return None if self.project is None else self.project.name


class Tenancy:
    """Projects and the keys that belong to them (see the module docstring)."""

    __slots__ = ("_by_digest", "_by_id", "credentials", "projects", "session_secret", "source", "stamp")

    def __init__(
        self,
        projects: Iterable[Project],
        keys: Iterable[tuple[bytes, Project | None]],
        source: str | None = None,
        session_secret: bytes | None = None,
    ) -> None:
        """``keys``: (SHA-256 digest of the key, its project or ``None`` for admin)."""
        self.projects: dict[str, Project] = {p.name: p for p in projects}
        self._by_digest: dict[bytes, KeyEntry] = {}
        for digest, project in keys:
            self._by_digest[digest] = KeyEntry(digest_key_id(digest), project)
        self._by_id = {e.key_id: e for e in self._by_digest.values()}
        #: Every provider credential held: masked wherever a trace would store one.
        self.credentials = frozenset(p.credential for q in self.projects.values() for p in q.providers if p.credential)
        #: The config file this came from (``None``: the command line).
        self.source = source
        #: The dashboard's signing secret from the config file (``[dashboard] session_secret``;
        #: ``None``: not configured). Never printed: not in ``repr``.
        self.session_secret = session_secret
        #: The identity of that file as it was read (:func:`.reload.identity`): the reload's baseline.
        self.stamp: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self._by_digest)

    def __repr__(self) -> str:
        return f"Tenancy(<{len(self.projects)} project(s), {len(self._by_digest)} key(s)>, source={self.source!r})"

    def check(self, presented: bytes) -> KeyEntry | None:
        """The entry of a presented key, or ``None``. The key is hashed, then looked up: the time
        taken depends on the digest, which says nothing useful about any accepted key."""
        return self._by_digest.get(sha256(presented).digest())

    def identify(self, authorization: bytes | None) -> KeyEntry | None:
        """The entry of the key in an ``Authorization: Bearer <key>`` header value, or ``None``."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            return None
        return self._by_digest.get(sha256(authorization[7:].strip()).digest())

    def by_key_id(self, key_id: str) -> KeyEntry | None:
        """The entry with this public id (a dashboard session names its key by id), if the key
        is still accepted."""
        return self._by_id.get(key_id)


def flat(
    keys: Iterable[str], upstream: str, upstream_api_key: str | None, policy: StoragePolicy | None = None
) -> Tenancy:
    """The tenancy of a proxy without a config file: every key in the project ``default``, whose
    one provider is ``upstream`` (``demo``: the offline model) with ``upstream_api_key``, and
    whose storage policy is ``policy`` (the proxy's flags)."""
    if upstream == DEMO:
        provider = Provider("demo", DEMO, DEMO_BASE_URL)
    else:
        credential = upstream_api_key.encode("latin-1") if upstream_api_key else None
        provider = Provider("upstream", OPENAI, upstream.rstrip("/"), credential)
    project = Project(DEFAULT_PROJECT, (provider,), provider, policy=policy or StoragePolicy())
    return Tenancy([project], [(key_digest(k), project) for k in keys])
