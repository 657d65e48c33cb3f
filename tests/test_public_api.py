"""The public surface is ``prysmai.__all__`` and nothing else; importing it is cheap."""

from __future__ import annotations

import subprocess
import sys

import prysmai


def test_all_is_the_public_namespace() -> None:
    public = {name for name in dir(prysmai) if not name.startswith("_")} - {"annotations", "TYPE_CHECKING"}
    assert public == set(prysmai.__all__) - {"__version__"}
    for name in prysmai.__all__:
        assert getattr(prysmai, name) is not None


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
