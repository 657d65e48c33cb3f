"""The config file (prysmai/_proxy/config/file.py) and `prysmai keys`: what a valid file becomes,
and that every mistake stops with the file's name, the line, what to do, and never a secret."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.config import keys, projects
from prysmai._proxy.config.file import CONFIG_ENV, ConfigError, load
from prysmai._proxy.config.pricing import Price

DOCS = Path(__file__).resolve().parents[3] / "docs"
PRYSMAI = [sys.executable, "-m", "prysmai._cli"]


def _key() -> str:
    return keys.generate_key()


def _hash(key: str) -> str:
    return "sha256:" + projects.key_digest(key).hex()


# Every secret a test's environment or files hold: none may appear in any message.
WEB_KEY = _key()  # written into the file as a literal key
ENV_KEY = _key()  # given in $PRYSM_WEB_KEY
HASHED_KEY = _key()  # only its hash is in the file
ADMIN_KEY = _key()
OPENAI_SECRET = "sk-proj-" + secrets.token_urlsafe(30)
AZURE_SECRET = secrets.token_hex(16)
FILE_SECRET = "sk-file-" + secrets.token_urlsafe(20)
WEAK_ENV_KEY = "sk-prysm-" + "ab" * 12  # weak: two different characters
ENVIRON = {
    "PRYSM_WEB_KEY": ENV_KEY,
    "OPENAI_API_KEY": OPENAI_SECRET,
    "AZURE_OPENAI_KEY": AZURE_SECRET,
    "WEAK_KEY": WEAK_ENV_KEY,
    "BROKEN_SECRET": OPENAI_SECRET + "\nX-Injected: 1",
    "EMPTY": "",
    "SHORT_SESSION_SECRET": "short-session-secret",
}
SECRETS = [
    WEB_KEY,
    ENV_KEY,
    HASHED_KEY,
    ADMIN_KEY,
    OPENAI_SECRET,
    AZURE_SECRET,
    FILE_SECRET,
    WEAK_ENV_KEY,
    "short-session-secret",
]


def write(tmp_path: Path, text: str, name: str = "prysm.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "azure-key"
    path.write_text(f"\n  {FILE_SECRET}  \n", encoding="utf-8")  # stripped when read
    return str(path)


def complete_config(secret_file: str) -> str:
    return f"""\
[admin]
keys = ["{_hash(ADMIN_KEY)}"]

[[projects]]
name = "web"
keys = [
  "{_hash(HASHED_KEY)}",
  {{ env = "PRYSM_WEB_KEY" }},
  "{WEB_KEY}",
]
default_provider = "openai"
requests_per_minute = 600
monthly_budget_usd = 200

  [[projects.providers]]
  name = "openai"
  kind = "openai"
  api_key = {{ env = "OPENAI_API_KEY" }}
  models = ["gpt-4o", "gpt-4o-mini"]

  [[projects.providers]]
  name = "azure"
  kind = "azure"
  base_url = "https://myres.openai.azure.com/"
  api_version = "2024-10-21"
  api_key = {{ file = "{secret_file}" }}
  models = ["gpt-4.1", "gpt-4.1-mini"]
  deployments = {{ "gpt-4.1" = "gpt41-prod" }}

  [[projects.providers]]
  name = "ollama"
  kind = "openai-compatible"
  base_url = "http://127.0.0.1:11434/v1"
  prefix = "ollama/"
  prices = {{ "llama3.1" = {{ input = 0, output = 0 }}, "big" = {{ input = 1, output = 2.5, cached_input = 0.5 }} }}

  [[projects.providers]]
  name = "ollama-llama"
  kind = "openai-compatible"
  base_url = "http://127.0.0.1:11435/v1"
  prefix = "ollama/llama"

[[projects]]
name = "batch"
keys = []

  [[projects.providers]]
  name = "local"
  kind = "demo"
  models = ["gpt-4o"]
"""


@pytest.fixture
def tenancy(tmp_path: Path, secret_file: str) -> projects.Tenancy:
    return load(write(tmp_path, complete_config(secret_file)), ENVIRON)


# -- a valid file ----------------------------------------------------------------------------------
def test_a_complete_config_loads(tenancy: projects.Tenancy, tmp_path: Path) -> None:
    assert tenancy.source == str(tmp_path / "prysm.toml")
    assert list(tenancy.projects) == ["web", "batch"]
    web = tenancy.projects["web"]
    openai, azure, ollama, llama = web.providers
    assert web.default_provider is openai
    assert web.limits == projects.Limits(requests_per_minute=600, monthly_budget_usd=200.0)
    assert isinstance(web.limits.monthly_budget_usd, float)
    assert openai == projects.Provider(
        "openai",
        "openai",
        "https://api.openai.com/v1",
        OPENAI_SECRET.encode(),
        models=("gpt-4o", "gpt-4o-mini"),
    )
    assert azure.kind == "azure" and azure.base_url == "https://myres.openai.azure.com"  # the / is dropped
    assert azure.api_version == "2024-10-21" and azure.deployments == {"gpt-4.1": "gpt41-prod"}
    assert azure.credential == FILE_SECRET.encode()  # the file's content, stripped
    assert ollama.credential is None and ollama.prefix == "ollama/"
    assert ollama.prices == {"llama3.1": Price(0.0, 0.0, None), "big": Price(1.0, 2.5, 0.5)}
    assert llama.prefix == "ollama/llama"
    batch = tenancy.projects["batch"]
    assert batch.default_provider is None and batch.limits == projects.Limits()
    (local,) = batch.providers
    assert local.kind == "demo" and local.base_url == projects.DEMO_BASE_URL
    assert len(tenancy) == 4
    for text in (repr(tenancy), repr(web), repr(azure)):
        assert not any(s in text for s in SECRETS)


@pytest.mark.parametrize("key", [HASHED_KEY, ENV_KEY, WEB_KEY], ids=["hashed", "env", "literal"])
def test_keys_authenticate_with_the_same_id(tenancy: projects.Tenancy, key: str) -> None:
    """A key given as a hash, from the environment or written out: the same entry either way."""
    by_check = tenancy.check(key.encode())
    by_header = tenancy.identify(b"Bearer " + key.encode())
    assert by_check is not None and by_check == by_header
    assert by_check.key_id == keys.key_id(key)
    assert by_check.project_name == "web" and not by_check.admin
    assert tenancy.by_key_id(keys.key_id(key)) == by_check


def test_admin_key_and_unknown_keys(tenancy: projects.Tenancy) -> None:
    admin = tenancy.identify(f"Bearer {ADMIN_KEY}".encode())
    assert admin is not None and admin.admin and admin.project_name is None
    assert admin.key_id == keys.key_id(ADMIN_KEY)
    assert tenancy.identify(f"Bearer {_key()}".encode()) is None
    assert tenancy.check(OPENAI_SECRET.encode()) is None
    assert tenancy.identify(WEB_KEY.encode()) is None  # not a bearer header


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_the_request_path_hash_is_sha256(data: bytes) -> None:
    """Presented keys are hashed with the interpreter's built-in SHA-256 (cheaper than OpenSSL's
    on a cold request path): the digests must be hashlib's, or config files' ``sha256:`` keys
    would stop matching."""
    assert keys.sha256(data).digest() == hashlib.sha256(data).digest()


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's built-in hash modules")
def test_the_request_path_hash_is_the_built_in_one_on_cpython() -> None:
    import importlib.util

    if not any(importlib.util.find_spec(name) for name in ("_sha2", "_sha256")):
        pytest.skip("this CPython was built without its own SHA-256")  # the OpenSSL fallback is then right
    assert keys.sha256 is not hashlib.sha256


def test_a_project_knows_whether_it_has_limits() -> None:
    provider = projects.Provider("p", projects.OPENAI, "http://127.0.0.1:9/v1")
    unlimited = projects.Project("a", (provider,), provider)
    assert not unlimited.limited
    for limits in (projects.Limits(requests_per_minute=10), projects.Limits(monthly_budget_usd=0.0)):
        assert projects.Project("b", (provider,), provider, limits).limited


def test_keys_from_the_environment_follow_the_environment(tmp_path: Path, secret_file: str) -> None:
    path = write(tmp_path, complete_config(secret_file))
    other = _key()
    tenancy = load(path, {**ENVIRON, "PRYSM_WEB_KEY": other})
    assert tenancy.check(other.encode()) is not None
    assert tenancy.check(ENV_KEY.encode()) is None


def test_without_secrets_the_structure_still_loads(tmp_path: Path, secret_file: str) -> None:
    """For `keys new` and other tools where the proxy's secrets are not set."""
    path = write(tmp_path, complete_config(secret_file).replace(secret_file, str(tmp_path / "missing")))
    with pytest.raises(ConfigError):
        load(path, {})
    tenancy = load(path, {}, secrets=False)
    assert list(tenancy.projects) == ["web", "batch"]
    assert all(p.credential is None for p in tenancy.projects["web"].providers)
    assert tenancy.check(WEB_KEY.encode()) is not None and tenancy.check(ENV_KEY.encode()) is None


def test_the_environment_defaults_to_os_environ(
    tmp_path: Path, secret_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    tenancy = load(write(tmp_path, complete_config(secret_file)))
    assert tenancy.check(ENV_KEY.encode()) is not None
    assert CONFIG_ENV == "PRYSM_CONFIG"


# -- routing and the upstream request --------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "provider", "sent"),
    [
        ("gpt-4o", "openai", None),  # exact
        ("gpt-4.1", "azure", None),  # exact, another provider
        ("ollama/qwen2.5", "ollama", "qwen2.5"),  # prefix, stripped
        ("ollama/llama3.1", "ollama-llama", "3.1"),  # the longest prefix wins
        ("ollama/", "openai", None),  # nothing after the prefix: not a prefix match
        ("o3-mini", "openai", None),  # the default
        (None, "openai", None),  # no model (GET /models): the default
    ],
)
def test_routes(tenancy: projects.Tenancy, model: str | None, provider: str, sent: str | None) -> None:
    route = tenancy.projects["web"].route(model)
    assert route is not None
    assert (route[0].name, route[1]) == (provider, sent)


def test_a_project_without_default_leaves_other_models_unrouted(tenancy: projects.Tenancy) -> None:
    batch = tenancy.projects["batch"]
    route = batch.route("gpt-4o")
    assert route is not None and route[0].name == "local"
    assert batch.route("gpt-4o-mini") is None
    assert batch.route(None) is None


def test_upstream_urls_and_headers(tenancy: projects.Tenancy) -> None:
    openai, azure, ollama, _ = tenancy.projects["web"].providers
    assert openai.url("chat/completions", "gpt-4o") == "https://api.openai.com/v1/chat/completions"
    assert openai.url("models", None, "limit=2") == "https://api.openai.com/v1/models?limit=2"
    assert openai.auth_header() == (b"authorization", b"Bearer " + OPENAI_SECRET.encode())
    override = b"sk-from-the-client-0123"
    assert openai.auth_header(override) == (b"authorization", b"Bearer " + override)

    assert azure.url("chat/completions", "gpt-4.1") == (
        "https://myres.openai.azure.com/openai/deployments/gpt41-prod/chat/completions?api-version=2024-10-21"
    )
    assert azure.url("chat/completions", "gpt-4.1-mini", "x=1") == (  # no deployment named: the model's name
        "https://myres.openai.azure.com/openai/deployments/gpt-4.1-mini/chat/completions?x=1&api-version=2024-10-21"
    )
    assert azure.url("models", None) == "https://myres.openai.azure.com/openai/models?api-version=2024-10-21"
    assert azure.auth_header() == (b"api-key", FILE_SECRET.encode())
    assert azure.auth_header(override) == (b"api-key", override)

    assert ollama.url("chat/completions", "qwen2.5") == "http://127.0.0.1:11434/v1/chat/completions"
    assert ollama.auth_header() is None  # no api_key: the client may send X-Prysm-Upstream-Key
    assert ollama.auth_header(override) == (b"authorization", b"Bearer " + override)


# -- mistakes ----------------------------------------------------------------------------------
# Each case is a whole file; "#!" marks the line the message must name.
PROJECT = 'name = "web"\nkeys = ["' + _hash(HASHED_KEY) + '"]\ndefault_provider = "openai"\n'
OPENAI = '[[projects.providers]]\nname = "openai"\nkind = "openai"\n'
#: The rest of a second project.
SECOND = 'default_provider = "o"\n[[projects.providers]]\nname = "o"\nkind = "openai"\n'


def case(project: str = "", provider: str = "", top: str = "", more: str = "") -> str:
    return f"{top}[[projects]]\n{PROJECT}{project}\n{OPENAI}{provider}\n{more}"


def with_keys(*lines: str) -> str:
    """The base case with its keys list written one entry per line."""
    return case().replace(f'keys = ["{_hash(HASHED_KEY)}"]', "keys = [\n" + "".join(f"  {x}\n" for x in lines) + "]")


ERRORS: list[tuple[str, str, str]] = [
    # (id, file, a phrase of the message)
    ("syntax", case(project="requests_per_minute = 600 600  #!\n"), "TOML syntax error"),
    ("syntax-value", case(project="requests_per_minute = = 5  #!\n"), "TOML syntax error: Invalid value"),
    ("top-typo", case(top="[adnim]  #!\nkeys = []\n"), "unknown field 'adnim' (did you mean 'admin'?)"),
    ("project-typo", case(project="request_per_minute = 10  #!\n"), "unknown field 'request_per_minute'"),
    (
        "provider-typo",
        case(provider='base_ur = "https://x.example/v1"  #!\n'),
        "unknown field 'base_ur' (did you mean 'base_url'?)",
    ),
    ("provider-unknown", case(provider="temperature = 0.2  #!\n"), "unknown field 'temperature' (a typo?)"),
    ("admin-typo", case(top='[admin]\nkey = ["' + _hash(ADMIN_KEY) + '"]  #!\n'), "unknown field 'key'"),
    ("projects-not-array", '[projects]  #!\nname = "web"\n', "[[projects]]"),
    ("no-projects", '[admin]  #!\nkeys = ["' + _hash(ADMIN_KEY) + '"]\n', "declare at least one [[projects]]"),
    ("rpm-string", case(project='requests_per_minute = "600"  #!\n'), "requests_per_minute must be a whole number"),
    ("rpm-zero", case(project="requests_per_minute = 0  #!\n"), "greater than 0"),
    ("rpm-fraction", case(project="requests_per_minute = 1.5  #!\n"), "whole number"),
    ("rpm-bool", case(project="requests_per_minute = true  #!\n"), "whole number"),
    ("budget-negative", case(project="monthly_budget_usd = -1.0  #!\n"), "monthly_budget_usd must be a number"),
    ("budget-nan", case(project="monthly_budget_usd = nan  #!\n"), "monthly_budget_usd must be a number"),
    ("name-bad", case().replace('name = "web"', 'name = "web shop"  #!'), "use 1 to 64 letters"),
    ("name-missing", case().replace('[[projects]]\nname = "web"\n', "[[projects]]  #!\n"), "name is missing"),
    ("name-a-key", case().replace('name = "web"', f'name = "{WEB_KEY}"  #!'), "is not a valid name"),
    (
        "name-twice",
        case(more='[[projects]]\nname = "web"  #!\n' + SECOND),
        "project 'web' is declared twice",
    ),
    (
        "provider-twice",
        case(more='[[projects.providers]]\nname = "openai"  #!\nkind = "openai"\n'),
        "two providers are named 'openai'",
    ),
    ("kind-unknown", case(provider="").replace('kind = "openai"', 'kind = "anthropic"  #!'), "kind must be one of"),
    (
        "kind-missing",
        case().replace(
            '[[projects.providers]]\nname = "openai"\nkind = "openai"\n',
            '[[projects.providers]]  #!\nname = "openai"\n',
        ),
        "kind must be one of",
    ),
    (
        "base-url-missing",
        case(more='[[projects.providers]]  #!\nname = "vllm"\nkind = "openai-compatible"\nmodels = ["m"]\n'),
        "needs base_url",
    ),
    ("base-url-ftp", case(provider='base_url = "ftp://example.com/v1"  #!\n'), "http:// or https:// URL"),
    ("base-url-relative", case(provider='base_url = "api.example.com/v1"  #!\n'), "http:// or https:// URL"),
    (
        "base-url-password",
        case(provider=f'base_url = "https://user:{OPENAI_SECRET}@api.example.com/v1"  #!\n'),
        "put the credential in api_key",
    ),
    (
        "base-url-query",
        case(provider=f'base_url = "https://api.example.com/v1?key={AZURE_SECRET}"  #!\n'),
        "no query",
    ),
    ("base-url-endpoint", case(provider='base_url = "https://x.example/v1/chat/completions/"  #!\n'), "an endpoint"),
    (
        "provider-unreachable",
        case(more='[[projects.providers]]  #!\nname = "spare"\nkind = "openai"\n'),
        "no request can reach provider 'spare'",
    ),
    ("base-url-port", case(provider='base_url = "https://api.example.com:99999/v1"  #!\n'), "invalid port"),
    (
        "demo-base-url",
        case(more='[[projects.providers]]\nname = "d"\nkind = "demo"\nbase_url = "http://x/v1"  #!\nmodels = ["m"]\n'),
        "takes no base_url",
    ),
    (
        "azure-no-version",
        case(more='[[projects.providers]]  #!\nname = "az"\nkind = "azure"\nbase_url = "https://r.openai.azure.com"\n'),
        "Azure needs api_version",
    ),
    (
        "azure-no-url",
        case(more='[[projects.providers]]  #!\nname = "az"\nkind = "azure"\napi_version = "2024-10-21"\n'),
        "needs base_url",
    ),
    (
        "azure-deployment-url",
        case(
            more='[[projects.providers]]\nname = "az"\nkind = "azure"\napi_version = "2024-10-21"\n'
            'base_url = "https://r.openai.azure.com/openai/deployments/x"  #!\n'
        ),
        "resource endpoint",
    ),
    ("version-not-azure", case(provider='api_version = "2024-10-21"  #!\n'), 'for kind = "azure" only'),
    ("deployments-not-azure", case(provider='deployments = { "a" = "b" }  #!\n'), 'for kind = "azure" only'),
    ("models-not-list", case(provider='models = "gpt-4o"  #!\n'), "models must be a list of strings"),
    ("models-number", case(provider='models = [\n  "gpt-4o",\n  4,  #!\n]\n'), "non-empty strings"),
    (
        "model-twice",
        case(
            provider='models = ["gpt-4o"]\n',
            more='[[projects.providers]]\nname = "o2"\nkind = "openai"\nmodels = [\n  "x",\n  "gpt-4o",  #!\n]\n',
        ),
        "in the models of both providers 'openai' and 'o2'",
    ),
    (
        "prefix-twice",
        case(
            provider='prefix = "p/"\n',
            more='[[projects.providers]]\nname = "o2"\nkind = "openai"\nprefix = "p/"  #!\n',
        ),
        "the same prefix",
    ),
    (
        "default-unknown",
        case().replace('default_provider = "openai"', 'default_provider = "azure"  #!'),
        "not one of its providers ('openai')",
    ),
    (
        "routes-nothing",
        case().replace("[[projects]]\n", "[[projects]]  #!\n").replace('default_provider = "openai"\n', ""),
        "routes no model",
    ),
    ("no-providers", f"[[projects]]  #!\n{PROJECT.replace('default_provider', '#')}", "routes no model"),
    ("hash-short", with_keys('"sha256:abc123",  #!'), "64 hex digits"),
    ("hash-not-hex", with_keys(f'"{_hash(ADMIN_KEY)[:-1]}g",  #!'), "64 hex digits"),
    ("key-weak", with_keys('"sk-prysm-aaaaaaaaaaaaaaaaaaaa",  #!'), "too weak"),
    ("key-placeholder", with_keys('"sk-prysm-...",  #!'), "placeholder"),
    ("key-not-a-key", with_keys(f'"{OPENAI_SECRET}",  #!'), "does not start with 'sk-prysm-'"),
    ("key-number", with_keys(f'"{_hash(ADMIN_KEY)}",', "42,  #!"), 'must be a "sha256:'),
    ("key-env-unset", with_keys('{ env = "NOT_SET_ANYWHERE" },  #!'), "NOT_SET_ANYWHERE is not set"),
    ("key-env-empty", with_keys('{ env = "EMPTY" },  #!'), "EMPTY is not set"),
    (
        "key-env-weak",
        with_keys('{ env = "WEAK_KEY" },  #!'),
        "environment variable WEAK_KEY (project 'web', key #1) is too weak",
    ),
    ("key-env-typo", with_keys('{ evn = "WEAK_KEY" },  #!'), 'must be a "sha256:'),
    ("key-env-bad-name", with_keys('{ env = "$HOME" },  #!'), "not an environment variable name"),
    (
        "keys-not-list",
        case().replace(f'keys = ["{_hash(HASHED_KEY)}"]', f'keys = "{WEB_KEY}"  #!'),
        "keys must be a list",
    ),
    (
        "key-in-two-projects",
        case(
            more=f'[[projects]]\nname = "b"\nkeys = ["{_hash(ENV_KEY)}", {{ env = "PRYSM_WEB_KEY" }}]  #!\n' + SECOND
        ).replace(f'"{_hash(HASHED_KEY)}"', f'"{ENV_KEY}"'),
        f"the key {keys.key_id(ENV_KEY)} is in both project 'web' and project 'b'",
    ),
    (
        "key-admin-and-project",
        case(top=f'[admin]\nkeys = ["{HASHED_KEY}"]\n').replace(
            f'keys = ["{_hash(HASHED_KEY)}"]', f'keys = ["{_hash(HASHED_KEY)}"]  #!'
        ),
        f"the key {keys.key_id(HASHED_KEY)} is in both [admin] and project 'web'",
    ),
    ("no-keys", case().replace(f'"{_hash(HASHED_KEY)}"', "").replace("[[projects]]", "[[projects]]  #!"), "no keys"),
    ("api-key-literal", case(provider=f'api_key = "{OPENAI_SECRET}"  #!\n'), 'use api_key = { env = "NAME" }'),
    (
        "api-key-both",
        case(provider='api_key = { env = "OPENAI_API_KEY", file = "/etc/hostname" }  #!\n'),
        "must be { env",
    ),
    (
        "api-key-env-unset",
        case(provider='api_key = { env = "NOT_SET_ANYWHERE" }  #!\n'),
        "NOT_SET_ANYWHERE (its api_key) is not set",
    ),
    ("api-key-newline", case(provider='api_key = { env = "BROKEN_SECRET" }  #!\n'), "line breaks"),
    (
        "api-key-file-missing",
        case(provider='api_key = { file = "/nonexistent/prysm-key" }  #!\n'),
        "cannot read its api_key file /nonexistent/prysm-key",
    ),
    ("api-key-number", case(provider="api_key = 12345  #!\n"), "must be { env"),
    ("price-negative", case(provider='prices = { "gpt-4o" = { input = -1, output = 2 } }  #!\n'), "0 or more"),
    ("price-no-input", case(provider='prices = { "gpt-4o" = { output = 2 } }  #!\n'), "input is required"),
    (
        "price-typo",
        case(provider='prices = { "gpt-4o" = { input = 1, ouptut = 2 } }  #!\n'),
        "unknown field 'ouptut' (did you mean 'output'?)",
    ),
    (
        "price-string",
        case(provider='[projects.providers.prices.gpt-4o]\ninput = 1\noutput = "2"  #!\n'),
        "must be a number",
    ),
    ("price-bool", case(provider='prices = { "gpt-4o" = { input = true } }  #!\n'), "must be a number"),
    (
        "session-secret-literal",
        case(more='[dashboard]\nsession_secret = "written-in-the-file-0123456789abcdef"  #!\n'),
        "session_secret must not be written in the file",
    ),
    (
        "session-secret-short",
        case(more='[dashboard]\nsession_secret = { env = "SHORT_SESSION_SECRET" }  #!\n'),
        "session_secret must have at least 32 characters",
    ),
    (
        "session-secret-unset",
        case(more='[dashboard]\nsession_secret = { env = "NOT_SET_ANYWHERE" }  #!\n'),
        "NOT_SET_ANYWHERE (its session_secret) is not set",
    ),
    (
        "dashboard-typo",
        case(more='[dashboard]\nsession_secrets = { env = "X" }  #!\n'),
        "unknown field 'session_secrets'",
    ),
]


@pytest.mark.parametrize(("text", "phrase"), [pytest.param(t, p, id=i) for i, t, p in ERRORS])
def test_each_mistake_names_file_and_line_and_no_secret(
    tmp_path: Path, secret_file: str, text: str, phrase: str
) -> None:
    (marked,) = [n for n, line in enumerate(text.splitlines(), 1) if "#!" in line]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, ENVIRON)
    message = str(caught.value)
    assert re.match(rf"{re.escape(path)}:{marked}(:\d+)?: ", message), message
    assert phrase in message, message
    for secret in SECRETS:
        assert secret not in message
    assert not re.search(r"sk-[A-Za-z0-9_-]{12,}", message), message
    assert "\n" not in message


def test_a_session_secret_comes_from_the_environment_or_a_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    text = case(more='[dashboard]\nsession_secret = { env = "SESSION_SECRET" }\n')
    tenancy = load(write(tmp_path, text), {**ENVIRON, "SESSION_SECRET": secret})
    assert tenancy.session_secret == secret.encode() and secret not in repr(tenancy)
    (tmp_path / "session.key").write_text(secret + "\n")
    text = case(more='[dashboard]\nsession_secret = { file = "session.key" }\n')
    assert load(write(tmp_path, text), ENVIRON).session_secret == secret.encode()
    assert load(write(tmp_path, case()), ENVIRON).session_secret is None


def test_the_mistakes_are_distinct() -> None:
    """Every case above is a file that would load but for its one mistake (or they test nothing)."""
    ids = [i for i, _, _ in ERRORS]
    assert len(ids) == len(set(ids))
    assert all(text.count("#!") == 1 for _, text, _ in ERRORS)


def test_the_base_of_the_mistakes_loads(tmp_path: Path) -> None:
    tenancy = load(write(tmp_path, case()), ENVIRON)
    assert tenancy.check(HASHED_KEY.encode()) is not None


def test_unreadable_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=re.escape(missing) + ": cannot read the config file"):
        load(missing, ENVIRON)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[projects]]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=re.escape(str(latin)) + ":2: not UTF-8"):
        load(str(latin), ENVIRON)


def test_a_key_as_a_toml_key_is_scrubbed_from_syntax_errors(tmp_path: Path) -> None:
    """tomllib quotes table names in its messages; a key pasted as one is not repeated."""
    path = write(tmp_path, f'["{WEB_KEY}"]\n["{WEB_KEY}"]\n')
    with pytest.raises(ConfigError) as caught:
        load(path, ENVIRON)
    assert WEB_KEY not in str(caught.value) and ":2:" in str(caught.value)


def test_a_relative_credential_file_is_next_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "openai.key").write_text(OPENAI_SECRET)
    path = write(folder, case(provider='api_key = { file = "openai.key" }\n'))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    (provider,) = load(path, ENVIRON).projects["web"].providers
    assert provider.credential == OPENAI_SECRET.encode()


def test_lines_are_found_in_any_layout() -> None:
    """Comments and strings holding brackets, multi-line strings and arrays, quoted and dotted
    keys, spaced headers, CRLF: each place gets its own line."""
    from prysmai._proxy.config.file import _line_index

    text = """\
# a comment with [brackets]
[ admin ]   # [[projects]]
keys = [ # [
  'a]b', \"\"\"x
y\"\"\",  # ,
  { env = "E" } ]
[[ "projects" ]]
"name" = 'w'
limits.rpm = 3
s = '''a
b'''
[[projects.providers]]
name = "p"
[[projects]]
name = "q"
  [[projects.providers]]
  name = "r"
"""
    index = _line_index(text)
    assert _line_index(text.replace("\n", "\r\n")) == index
    expected = {
        ("admin",): 2,
        ("admin", "keys", 1): 4,
        ("admin", "keys", 2, "env"): 6,
        ("projects", 0): 7,
        ("projects", 0, "name"): 8,
        ("projects", 0, "limits"): 9,
        ("projects", 0, "limits", "rpm"): 9,
        ("projects", 0, "s"): 10,
        ("projects", 0, "providers", 0, "name"): 13,
        ("projects", 1, "name"): 15,
        ("projects", 1, "providers", 0): 16,
        ("projects", 1, "providers", 0, "name"): 17,
    }
    assert {k: index.get(k) for k in expected} == expected


# -- hostile files -------------------------------------------------------------------------------
def _toml(value: Any) -> str:
    """A value in TOML's inline syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
_scalars = st.one_of(
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(),
    _text,
    st.sampled_from(
        [
            "web",
            "openai",
            "azure",
            "openai-compatible",
            "demo",
            "gpt-4o",
            "ollama/",
            "2024-10-21",
            "https://api.example.com/v1",
            "http://127.0.0.1:1/v1",
            _hash(HASHED_KEY),
            _hash(ADMIN_KEY),
            WEB_KEY,
            ENV_KEY,
            OPENAI_SECRET,
            AZURE_SECRET,
            "sk-prysm-...",
            "sha256:00",
        ]
    ),
)
_values = st.recursive(
    st.one_of(
        _scalars,
        st.sampled_from([{"env": "PRYSM_WEB_KEY"}, {"env": "OPENAI_API_KEY"}, {"env": "WEAK_KEY"}, {"file": "/"}]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["input", "output", "env", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values nine times in ten: mistakes then come one or two at a time, deep in the file."""
    return st.sampled_from(range(10)).flatmap(lambda n: valid if n else _values)


_KEY_ITEMS = st.sampled_from(
    [_hash(HASHED_KEY), _hash(ADMIN_KEY), WEB_KEY, {"env": "PRYSM_WEB_KEY"}, _hash(_key()), _hash(_key())]
)
_MODELS = st.lists(st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-4.1", "llama3.1"]), max_size=2)
_PRICE = st.fixed_dictionaries(
    {"input": st.integers(0, 5)}, optional={"output": st.floats(0, 5), "cached_input": st.integers(0, 1)}
)
_PROJECT = st.fixed_dictionaries(
    {"name": _mostly(st.sampled_from(["web", "batch", "ml.team-1"]))},
    optional={
        "keys": _mostly(st.lists(_KEY_ITEMS, max_size=3)),
        "default_provider": _mostly(st.sampled_from(["openai", "azure", "local"])),
        "requests_per_minute": _mostly(st.integers(1, 10_000)),
        "monthly_budget_usd": _mostly(st.floats(0.01, 1e6)),
    },
)
_PROVIDER = st.fixed_dictionaries(
    {
        "name": _mostly(st.sampled_from(["openai", "azure", "local"])),
        "kind": _mostly(st.sampled_from(["openai", "azure", "openai-compatible", "demo"])),
    },
    optional={
        "base_url": _mostly(st.sampled_from(["https://api.example.com/v1", "https://r.openai.azure.com"])),
        "api_key": _mostly(st.sampled_from([{"env": "OPENAI_API_KEY"}, {"env": "AZURE_OPENAI_KEY"}])),
        "api_version": _mostly(st.just("2024-10-21")),
        "models": _mostly(_MODELS),
        "prefix": _mostly(st.sampled_from(["ollama/", "o/", "ollama/l"])),
        "deployments": _mostly(st.dictionaries(st.sampled_from(["gpt-4.1", "gpt-4o"]), st.just("dep"), max_size=2)),
        "prices": _mostly(st.dictionaries(st.sampled_from(["gpt-4o", "llama3.1"]), _PRICE, max_size=2)),
    },
)
_documents = st.tuples(
    st.one_of(st.none(), st.fixed_dictionaries({}, optional={"keys": _mostly(st.lists(_KEY_ITEMS, max_size=2))})),
    st.lists(st.tuples(_PROJECT, st.lists(_PROVIDER, max_size=3)), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_documents)
def test_any_file_loads_or_fails_with_file_line_and_no_secret(tmp_path: Path, document: Any) -> None:
    admin, entries = document
    lines = []
    if admin is not None:
        lines += ["[admin]", *(f"{k} = {_toml(v)}" for k, v in admin.items())]
    for project, providers in entries:
        lines += ["[[projects]]", *(f"{k} = {_toml(v)}" for k, v in project.items())]
        for provider in providers:
            lines += ["  [[projects.providers]]", *(f"  {k} = {_toml(v)}" for k, v in provider.items())]
    text = "\n".join(lines) + "\n"
    path = write(tmp_path, text)
    try:
        tenancy = load(path, ENVIRON)
    except ConfigError as exc:
        message = str(exc)
        found = re.match(rf"{re.escape(path)}:(\d+)(:\d+)?: ", message)
        assert found and 1 <= int(found.group(1)) <= len(lines) + 1, message
        # A string the file itself gives as a project's or provider's name is a name, which
        # messages show (the generator may draw a secret's value there: AZURE_SECRET is plain hex).
        named = {secret for secret in SECRETS if f"name = {json.dumps(secret)}" in text}
        assert not any(secret in message for secret in SECRETS if secret not in named), message
        assert "\n" not in message
    else:
        assert tenancy.projects and len(tenancy) >= 1


# -- the shipped example ---------------------------------------------------------------------------
def test_the_example_loads(tmp_path: Path) -> None:
    text = (DOCS / "prysm.example.toml").read_text(encoding="utf-8")
    azure_key = tmp_path / "azure-openai-key"
    azure_key.write_text(AZURE_SECRET + "\n")
    path = write(tmp_path, text.replace("/run/secrets/azure-openai-key", str(azure_key)))
    env = {
        "PRYSM_ADMIN_KEY": ADMIN_KEY,
        "SHOP_PRYSM_KEY": ENV_KEY,
        "OPENAI_API_KEY": OPENAI_SECRET,
        "RESEARCH_OPENAI_API_KEY": "sk-research-" + secrets.token_hex(8),
    }
    tenancy = load(path, env)
    assert sorted(tenancy.projects) == ["research", "shop"]
    kinds = {p.kind for project in tenancy.projects.values() for p in project.providers}
    assert kinds == {"openai", "azure", "openai-compatible"}
    shop, research = tenancy.projects["shop"], tenancy.projects["research"]
    entry = tenancy.identify(f"Bearer {ENV_KEY}".encode())
    assert entry is not None and entry.project is shop
    admin = tenancy.identify(f"Bearer {ADMIN_KEY}".encode())
    assert admin is not None and admin.admin
    azure = shop.route("gpt-4.1")
    assert azure is not None and azure[0].auth_header() == (b"api-key", AZURE_SECRET.encode())
    assert (
        azure[0]
        .url("chat/completions", "gpt-4.1")
        .endswith("/deployments/gpt41-prod/chat/completions?api-version=2024-10-21")
    )
    local = research.route("ollama/llama3.1")
    assert local is not None and local[1] == "llama3.1" and local[0].prices["llama3.1"] == Price(0.0, 0.0)
    assert research.route("claude-3") is None and shop.route("claude-3") is not None
    # The key ids written beside the hashes are the hashes' ids.
    for digest, key_id in re.findall(r'"sha256:([0-9a-f]{64})",?\s+# (key_[0-9a-f]{12})', text):
        assert projects.digest_key_id(bytes.fromhex(digest)) == key_id


@pytest.mark.parametrize(
    ("old", "new", "unset"),
    [
        ('api_version = "2024-10-21"\n', "", None),
        ("\nrequests_per_minute = 600 ", "\nrequest_per_minute = 600 ", None),
        ("", "", "SHOP_PRYSM_KEY"),
        (
            'keys = [{ env = "PRYSM_ADMIN_KEY" }]',
            'keys = [{ env = "PRYSM_ADMIN_KEY" }, "sha256:3b8f5c2e6d1a4f7093b2c8e1d5a6f4b7'
            'c9e0d2a1b3c5e7f9a0b2c4d6e8f0a1b2"]',
            None,
        ),
    ],
    ids=["azure-version", "typo", "env-unset", "key-twice"],
)
def test_the_documented_messages_are_real(tmp_path: Path, old: str, new: str, unset: str | None) -> None:
    """docs/projects.md quotes four messages about its own example: each is what load() says."""
    text = (DOCS / "prysm.example.toml").read_text(encoding="utf-8")
    assert old in text
    path = write(tmp_path, text.replace(old, new).replace("/run/secrets/azure-openai-key", "/etc/hostname"))
    env = {
        "PRYSM_ADMIN_KEY": ADMIN_KEY,
        "SHOP_PRYSM_KEY": ENV_KEY,
        "OPENAI_API_KEY": "x",
        "RESEARCH_OPENAI_API_KEY": "y",
    }
    env.pop(unset or "", None)
    with pytest.raises(ConfigError) as caught:
        load(path, env)
    message = str(caught.value).replace(path, "prysm.toml")
    documented = (DOCS / "projects.md").read_text(encoding="utf-8").splitlines()
    assert message in documented


def test_the_docs_show_the_example_file() -> None:
    example = (DOCS / "prysm.example.toml").read_text(encoding="utf-8")
    doc = (DOCS / "projects.md").read_text(encoding="utf-8")
    assert f"```toml\n{example}```" in doc


# -- prysmai keys ----------------------------------------------------------------------------------
def cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PRYSM_", "OPENAI_"))}
    environ.update(env)
    return subprocess.run([*PRYSMAI, *args], input=stdin, capture_output=True, text=True, timeout=60, env=environ)


def test_keys_new_prints_a_key_and_its_config_line(tmp_path: Path) -> None:
    path = write(tmp_path, case())
    done = cli("keys", "new", "--project", "web", "--config", path)
    assert done.returncode == 0, done.stderr
    (key,) = re.findall(r"^    (sk-prysm-\S+)$", done.stdout, re.M)
    keys._validate(key, "test")
    (line,) = re.findall(r'^    (keys = \["sha256:[0-9a-f]{64}"\])   # (key_[0-9a-f]{12})$', done.stdout, re.M)
    assert line == (f'keys = ["{_hash(key)}"]', keys.key_id(key))
    assert "beside the keys it has" in done.stdout
    # The printed line, pasted into the file, makes the key work (and the file holds no key).
    Path(path).write_text(case().replace(f'keys = ["{_hash(HASHED_KEY)}"]', line[0]))
    entry = load(path, {}).identify(f"Bearer {key}".encode())
    assert entry is not None and entry.key_id == keys.key_id(key) and entry.project_name == "web"
    assert key not in Path(path).read_text()
    # Fresh each time.
    again = cli("keys", "new", "--project", "web")
    assert again.returncode == 0 and key not in again.stdout and "sk-prysm-" in again.stdout


def test_keys_new_checks_the_project(tmp_path: Path) -> None:
    path = write(tmp_path, case())
    done = cli("keys", "new", "--project", "webb", "--config", path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"prysmai: {path} has no project 'webb' (its projects: web); add a [[projects]] table first\n"
    by_env = cli("keys", "new", "--project", "webb", **{CONFIG_ENV: path})
    assert by_env.returncode == 2 and "has no project 'webb'" in by_env.stderr
    assert cli("keys", "new", "--project", "web", **{CONFIG_ENV: path}).returncode == 0
    bad_name = cli("keys", "new", "--project", "web shop")
    assert bad_name.returncode == 2 and bad_name.stderr.startswith("prysmai: --project: ")


def test_keys_new_with_a_broken_config(tmp_path: Path) -> None:
    """One line naming the file and line; the proxy's secrets need not be set where keys are made."""
    path = write(tmp_path, case(provider='api_key = { env = "OPENAI_API_KEY" }\n'))
    assert cli("keys", "new", "--project", "web", "--config", path).returncode == 0  # no OPENAI_API_KEY here
    broken = write(tmp_path, case(project="request_per_minute = 5\n"), "broken.toml")
    done = cli("keys", "new", "--project", "web", "--config", broken)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"prysmai: {broken}:5: ") and len(done.stderr.splitlines()) == 1


def test_keys_hash() -> None:
    a, b = _key(), _key()
    done = cli("keys", "hash", stdin=f"# the keys file\n{a}\n\n  # {a}\n  {b}  \r\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{_hash(a)}  {keys.key_id(a)}", f"{_hash(b)}  {keys.key_id(b)}"]
    assert a not in done.stdout and b not in done.stdout


@pytest.mark.parametrize(
    "text", ["", "sk-prysm-aaaaaaaaaaaaaaaaaaaaaaaa\n", OPENAI_SECRET + "\n"], ids=["empty", "weak", "not-prysm"]
)
def test_keys_hash_refuses_without_echo(text: str) -> None:
    done = cli("keys", "hash", stdin=text)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("prysmai: keys hash: ") and len(done.stderr.splitlines()) == 1
    assert (text.strip() or "@@") not in done.stderr
