"""The public surface is ``prysmai.__all__`` plus prysmai 0.1's two import paths; importing it is cheap."""

from __future__ import annotations

import subprocess
import sys

import prysmai

SUBMODULES = {"client", "context"}


def test_all_is_the_public_namespace() -> None:
    public = {name for name in dir(prysmai) if not name.startswith("_")} - {"annotations", "TYPE_CHECKING"}
    assert public == set(prysmai.__all__) - {"__version__"} | SUBMODULES
    for name in prysmai.__all__:
        assert getattr(prysmai, name) is not None


def test_seed_import_paths_are_the_same_objects() -> None:
    from prysmai.client import PrysmClient, monitor
    from prysmai.context import PrysmContext, prysm_context

    assert (monitor, PrysmClient) == (prysmai.monitor, prysmai.PrysmClient)
    assert monitor is prysmai.monitor and PrysmClient is prysmai.PrysmClient
    assert prysm_context is prysmai.prysm_context and PrysmContext is prysmai.PrysmContext
    assert prysmai.ContextSnapshot is prysmai.PrysmContext  # the value type's earlier name
    for module, names in (
        (prysmai.client, {"PrysmClient", "monitor"}),
        (prysmai.context, {"PrysmContext", "prysm_context"}),
    ):
        assert set(module.__all__) == names
        own = {n for n in dir(module) if not n.startswith("_")} - {"annotations", "TYPE_CHECKING"}
        assert own == names, f"{module.__name__} grew public names: {own - names}"


def test_seed_import_paths_import_neither_openai_nor_wrapt() -> None:
    code = (
        "import sys; from prysmai.client import monitor; from prysmai.context import prysm_context; "
        "print(sorted(m for m in ('openai', 'wrapt', 'httpx', 'httpx2') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        prysmai.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_prysmai_imports_neither_openai_nor_wrapt() -> None:
    code = "import sys, prysmai; print(sorted(m for m in ('openai', 'wrapt', 'httpx', 'httpx2') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert prysmai.__version__ == version("prysmai")


def test_prysm_context_and_its_value_expose_exactly_their_documented_members() -> None:
    manager = {n for n in dir(prysmai.prysm_context) if not n.startswith("_")}
    assert manager == {"set", "get", "clear", "wrap"}
    value = {n for n in dir(prysmai.PrysmContext()) if not n.startswith("_")}
    assert value == {"user_id", "session_id", "metadata", "to_headers"}
    client = {n for n in dir(prysmai.PrysmClient) if not n.startswith("_")}
    assert client == {"openai", "async_openai", "base_url", "prysm_key", "timeout"}


def test_status_reports_mode_proxy_breaker_and_counters() -> None:
    s = prysmai.status()
    assert (s.mode, s.proxy_url, s.breaker, s.routed, s.sent_direct, s.failed) == ("off", None, None, 0, 0, 0)
    prysmai.instrument(prysm_key="sk-prysm-test-0123456789", base_url="http://127.0.0.1:9/api/v1", fallback=False)
    s = prysmai.status()
    assert (s.mode, s.proxy_url, s.fallback, s.breaker) == ("instrument", "http://127.0.0.1:9/api/v1", False, "closed")
    data = s.as_dict()
    assert data["proxies"] == [
        {
            "url": "http://127.0.0.1:9/api/v1",
            "breaker": "closed",
            "cooldown": 30.0,
            "routed": 0,
            "sent_direct": 0,
            "failed": 0,
        }
    ]
    assert "sk-prysm" not in repr(s) + str(data)
    try:
        s.routed = 5  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("Status must be immutable")


def test_status_imports_neither_openai_nor_wrapt() -> None:
    code = (
        "import sys, prysmai; s = prysmai.status(); "
        "print(s.mode, sorted(m for m in ('openai', 'wrapt') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "off []"
