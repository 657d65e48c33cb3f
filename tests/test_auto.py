"""``PRYSM_AUTO``, the start-up hook (sitecustomize) and the ``prysmai run`` launcher, in real processes.

Each test writes a small application into ``tmp_path`` and runs it with ``sys.executable`` and a
fresh environment. The application builds an ``openai.OpenAI`` client for OpenAI's default URL
whose transport delivers ``api.openai.com`` to the loopback ``openai_server`` (like
``loopback_http_client``), sends one chat completion and prints a JSON report. Where the request
lands, and with which headers, shows whether start-up activation happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PRYSM_KEY, RecordingServer, prysm_headers

import prysmai
from prysmai._wire import decode_id, decode_metadata

REPO = Path(prysmai.__file__).resolve().parent.parent
BOOTSTRAP = str(REPO / "prysmai" / "_bootstrap")
EXAMPLE = str(REPO / "sitecustomize_example")
USER_KEY = "sk-user-openai-key"
TIMEOUT = 60

# Shared by the application and the user sitecustomize files below (no test module is importable there).
LOOPBACK_SOURCE = """
def _loopback_http_client():
    import os
    import openai
    if int(openai.__version__.split(".")[0]) >= 3:
        import httpx2 as hx
    else:
        import httpx as hx
    port = int(os.environ["TEST_OPENAI_PORT"])
    inner = hx.HTTPTransport()

    class Loopback(hx.BaseTransport):
        def handle_request(self, request):
            if request.url.host == "api.openai.com":
                request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
            return inner.handle_request(request)

    return hx.Client(transport=Loopback())


def _default_client():
    import openai
    return openai.OpenAI(api_key="sk-user-openai-key", http_client=_loopback_http_client(), max_retries=0)
"""

APP_SOURCE = (
    """
import json
import os
import sys

report = {
    "openai_at_start": "openai" in sys.modules,
    "wrapt_at_start": "wrapt" in sys.modules,
    "pythonpath": os.environ.get("PYTHONPATH"),
}
"""
    + LOOPBACK_SOURCE
    + """
import prysmai

prysmai.prysm_context.set(user_id="child-user", session_id="child-session", metadata={"from": "child", "n": 1})

import openai

report["patched_on_import"] = hasattr(openai.OpenAI.__dict__.get("_prepare_options"), "__wrapped__")
report["instrumented"] = prysmai.is_instrumented()
pre_client = getattr(sys, "_prysm_test_client", None)
report["used_pre_client"] = pre_client is not None
client = pre_client or _default_client()
reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
report["reply"] = reply.choices[0].message.content
print("REPORT " + json.dumps(report), flush=True)
sys.exit(int(os.environ.get("TEST_EXIT_CODE", "0")))
"""
)

# Starts the application in a child process of its own, as a build tool or test runner would.
PARENT_SOURCE = """
import os
import subprocess
import sys

done = subprocess.run([sys.executable, os.environ["TEST_APP"]], timeout=50)
sys.exit(done.returncode)
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.startswith("REPORT ")]
        assert len(lines) == 1, f"no report from the application: stdout={self.stdout!r} stderr={self.stderr!r}"
        return dict(json.loads(lines[0][len("REPORT ") :]))

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP_SOURCE)
    return path


def fresh_env(openai_server: RecordingServer, **settings: str | None) -> dict[str, str]:
    """This process's environment without any Prysm/OpenAI routing settings, plus ``settings``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PRYSM_", "PYTHON")) and name not in ("OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS")
    }
    env["OPENAI_API_KEY"] = "sk-env-openai-key"
    env["TEST_OPENAI_PORT"] = str(openai_server.server_port)
    for name, value in settings.items():
        if value is not None:
            env[name] = value
    return env


def auto_env(openai_server: RecordingServer, proxy_server: RecordingServer, **settings: str | None) -> dict[str, str]:
    """The environment of a process started with the start-up hook, ``PRYSM_AUTO=1`` and a valid key."""
    defaults: dict[str, str | None] = {
        "PYTHONPATH": BOOTSTRAP,
        "PRYSM_AUTO": "1",
        "PRYSM_API_KEY": PRYSM_KEY,
        "PRYSM_BASE_URL": proxy_server.url,
    }
    defaults.update(settings)
    return fresh_env(openai_server, **defaults)


def run(argv: list[str], env: dict[str, str], cwd: Path) -> Run:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    return Run(done.returncode, done.stdout, done.stderr)


def launcher(*argv: str) -> list[str]:
    return [sys.executable, "-m", "prysmai._cli", "run", *argv]


def user_sitecustomize(folder: Path, body: str) -> Path:
    """A sitecustomize the user already has, in its own folder; it records how it was run."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import json, os, sys
            with open(os.environ["TEST_MARKER"], "w") as _f:
                json.dump({"pythonpath": os.environ.get("PYTHONPATH"), "sys_path": sys.path}, _f)
            """
        )
        + LOOPBACK_SOURCE
        + textwrap.dedent(body)
    )
    return folder


def assert_observed(result: Run, proxy_server: RecordingServer, openai_server: RecordingServer) -> None:
    """The application's request went through the proxy, authenticated and tagged."""
    report = result.report
    assert report["reply"] == "Hello from proxy", result.stderr
    assert report["instrumented"] is True
    assert openai_server.requests == []
    recorded = proxy_server.last
    assert recorded.path == "/api/v1/chat/completions"
    assert recorded.header("authorization") == f"Bearer {PRYSM_KEY}"
    headers = prysm_headers(recorded)
    assert decode_id(headers["x-prysm-user-id"]) == "child-user"
    assert decode_id(headers["x-prysm-session-id"]) == "child-session"
    assert decode_metadata(headers["x-prysm-metadata"]) == {"from": "child", "n": 1}
    assert PRYSM_KEY not in result.stdout + result.stderr


def assert_unobserved(result: Run, proxy_server: RecordingServer, openai_server: RecordingServer) -> None:
    """The application ran and its request went to OpenAI (the loopback stand-in), untouched."""
    report = result.report
    assert report["reply"] == "Hello from openai"
    assert report["instrumented"] is False
    assert proxy_server.requests == []
    assert openai_server.last.header("authorization") == f"Bearer {USER_KEY}"
    assert prysm_headers(openai_server.last) == {}


# --- PRYSM_AUTO with the start-up hook -----------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE", "Yes"])
def test_auto_instruments_at_start_up(
    value: str, app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    result = run([sys.executable, str(app)], auto_env(openai_server, proxy_server, PRYSM_AUTO=value), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_observed(result, proxy_server, openai_server)


def test_start_up_does_not_import_openai_and_patches_it_on_import(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    result = run([sys.executable, str(app)], auto_env(openai_server, proxy_server), tmp_path)
    report = result.report
    assert report["openai_at_start"] is False
    assert report["wrapt_at_start"] is False
    assert report["patched_on_import"] is True
    # Our folder stays on PYTHONPATH after start-up, so the processes the application starts are observed.
    assert report["pythonpath"] == BOOTSTRAP


def test_start_up_loads_only_prysmais_own_small_modules(
    tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    """``PRYSM_AUTO=1`` costs a process that may never use openai as little as it can: beyond what
    a bare interpreter loads, only prysmai's package, its activation and its import hook (not, say,
    ``importlib`` and ``warnings``, which a package ``__getattr__`` once pulled in). Run without
    ``site`` (``-S``), so that what an installation's ``.pth`` files load (an editable install's
    finder imports both) does not hide what the activation loads."""
    show = "import sys\nprint('MODULES ' + ' '.join(sorted(sys.modules)))\n"
    bare, auto = tmp_path / "bare.py", tmp_path / "auto.py"
    bare.write_text("import os\n" + show)  # (site imports os in every normal start)
    auto.write_text(f"import sys\nsys.path[:0] = [{BOOTSTRAP!r}, {str(REPO)!r}]\nimport sitecustomize\n" + show)

    def modules(script: Path) -> set[str]:
        done = run([sys.executable, "-S", str(script)], auto_env(openai_server, proxy_server), tmp_path)
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("MODULES ")]
        return set(line.split()[1:])

    added = modules(auto) - modules(bare)
    assert "prysmai._import_hook" in added  # (activated: the comparison means something)
    assert added <= {"prysmai", "prysmai._auto", "prysmai._import_hook", "sitecustomize", "__future__"}, added


@pytest.mark.parametrize("value", ["2", "on", "ture"])
def test_auto_unrecognised_value_says_so_and_leaves_openai_alone(
    value: str, app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    result = run([sys.executable, str(app)], auto_env(openai_server, proxy_server, PRYSM_AUTO=value), tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"PRYSM_AUTO={value!r} is not understood" in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.report["patched_on_import"] is False
    assert_unobserved(result, proxy_server, openai_server)


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off"])
def test_auto_off_leaves_openai_alone(
    value: str | None, app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    result = run([sys.executable, str(app)], auto_env(openai_server, proxy_server, PRYSM_AUTO=value), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.report["patched_on_import"] is False
    assert_unobserved(result, proxy_server, openai_server)


@pytest.mark.parametrize(
    ("settings", "secret"),
    [
        ({"PRYSM_API_KEY": None}, None),
        ({"PRYSM_API_KEY": "sk-proj-secret-openai-key-in-env"}, "secret-openai-key-in-env"),
        ({"PRYSM_API_KEY": "sk-prysm-secret with space"}, "secret with space"),
        ({"PRYSM_BASE_URL": "ftp://prysm.example.com/api/v1"}, PRYSM_KEY),
    ],
    ids=["missing-key", "not-a-prysm-key", "malformed-key", "bad-url"],
)
def test_bad_settings_give_one_stderr_line_and_the_app_runs_unobserved(
    settings: dict[str, str | None],
    secret: str | None,
    app: Path,
    tmp_path: Path,
    proxy_server: RecordingServer,
    openai_server: RecordingServer,
) -> None:
    env = auto_env(openai_server, proxy_server, **settings)
    for name, value in settings.items():
        if value is None:
            env.pop(name, None)
    result = run([sys.executable, str(app)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith("prysmai:")
    assert "PRYSM_AUTO" in line
    if settings.get("PRYSM_API_KEY", "") is None:
        assert "PRYSM_API_KEY" in line
    if secret is not None:
        assert secret not in result.stderr + result.stdout
    assert_unobserved(result, proxy_server, openai_server)


# --- chaining to the user's own sitecustomize ----------------------------------------------------


def test_user_sitecustomize_still_runs_and_activation_still_happens(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    user_dir = user_sitecustomize(tmp_path / "user_site", "")
    marker = tmp_path / "marker.json"
    pythonpath = os.pathsep.join([BOOTSTRAP, str(user_dir)])
    env = auto_env(openai_server, proxy_server, PYTHONPATH=pythonpath, TEST_MARKER=str(marker))
    result = run([sys.executable, str(app)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(marker.read_text())
    # While the user's sitecustomize ran, our folder was out of PYTHONPATH and sys.path (a child
    # process it starts cannot loop back into ours)...
    assert seen["pythonpath"] == str(user_dir)
    assert BOOTSTRAP not in [os.path.abspath(p) for p in seen["sys_path"] if p]
    # ...and both are back afterwards.
    assert result.report["pythonpath"] == pythonpath
    assert result.report["openai_at_start"] is False
    assert_observed(result, proxy_server, openai_server)


def test_user_sitecustomize_that_raises_does_not_stop_start_up(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    user_dir = user_sitecustomize(tmp_path / "user_site", "raise RuntimeError('user sitecustomize is broken')\n")
    marker = tmp_path / "marker.json"
    env = auto_env(
        openai_server,
        proxy_server,
        PYTHONPATH=os.pathsep.join([BOOTSTRAP, str(user_dir)]),
        TEST_MARKER=str(marker),
    )
    result = run([sys.executable, str(app)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    assert "user sitecustomize is broken" in result.stderr  # reported, as Python itself would
    assert_observed(result, proxy_server, openai_server)


def test_activation_after_openai_was_imported_redirects_existing_clients(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    # The user's sitecustomize runs before activation: it imports openai and builds a client, as a
    # library configured at start-up would.
    user_dir = user_sitecustomize(
        tmp_path / "user_site",
        """
        import sys
        sys._prysm_test_client = _default_client()
        """,
    )
    env = auto_env(
        openai_server,
        proxy_server,
        PYTHONPATH=os.pathsep.join([BOOTSTRAP, str(user_dir)]),
        TEST_MARKER=str(tmp_path / "marker.json"),
    )
    result = run([sys.executable, str(app)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.report["openai_at_start"] is True
    assert result.report["used_pre_client"] is True
    assert result.report["patched_on_import"] is True
    assert_observed(result, proxy_server, openai_server)


def test_sitecustomize_example_activates_the_same_way(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    result = run([sys.executable, str(app)], auto_env(openai_server, proxy_server, PYTHONPATH=EXAMPLE), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.report["openai_at_start"] is False
    assert_observed(result, proxy_server, openai_server)


def test_sitecustomize_example_chains_to_the_users_one(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    user_dir = user_sitecustomize(tmp_path / "user_site", "")
    marker = tmp_path / "marker.json"
    env = auto_env(
        openai_server,
        proxy_server,
        PYTHONPATH=os.pathsep.join([EXAMPLE, str(user_dir)]),
        TEST_MARKER=str(marker),
    )
    result = run([sys.executable, str(app)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(marker.read_text())["pythonpath"] == str(user_dir)
    assert_observed(result, proxy_server, openai_server)


# --- the launcher --------------------------------------------------------------------------------


def launcher_env(
    openai_server: RecordingServer, proxy_server: RecordingServer, **settings: str | None
) -> dict[str, str]:
    """What a user's shell has before ``prysmai run``: the key and URL, no start-up hook."""
    defaults: dict[str, str | None] = {"PRYSM_API_KEY": PRYSM_KEY, "PRYSM_BASE_URL": proxy_server.url}
    defaults.update(settings)
    return fresh_env(openai_server, **defaults)


def test_launcher_observes_the_command(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    result = run(launcher("--", sys.executable, str(app)), launcher_env(openai_server, proxy_server), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.report["openai_at_start"] is False
    assert result.report["pythonpath"].split(os.pathsep)[0] == BOOTSTRAP
    assert_observed(result, proxy_server, openai_server)


def test_launcher_console_script(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    script = Path(sys.executable).with_name("prysmai")
    if not script.exists():
        pytest.skip("the prysmai console script is not installed next to this interpreter")
    result = run(
        [str(script), "run", "--", sys.executable, str(app)], launcher_env(openai_server, proxy_server), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert_observed(result, proxy_server, openai_server)


@pytest.mark.parametrize("code", [3, 1, 0])
def test_launcher_propagates_the_exit_code(
    code: int, app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    env = launcher_env(openai_server, proxy_server, TEST_EXIT_CODE=str(code))
    result = run(launcher("--", sys.executable, str(app)), env, tmp_path)
    assert result.returncode == code
    assert result.report["reply"] == "Hello from proxy"


def test_launcher_keeps_the_users_pythonpath_and_sitecustomize(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    user_dir = user_sitecustomize(tmp_path / "user_site", "")
    marker = tmp_path / "marker.json"
    env = launcher_env(openai_server, proxy_server, PYTHONPATH=str(user_dir), TEST_MARKER=str(marker))
    result = run(launcher("--", sys.executable, str(app)), env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(marker.read_text())["pythonpath"] == str(user_dir)
    assert result.report["pythonpath"] == os.pathsep.join([BOOTSTRAP, str(user_dir)])
    assert_observed(result, proxy_server, openai_server)


def test_launcher_observes_grandchild_processes(
    app: Path, tmp_path: Path, proxy_server: RecordingServer, openai_server: RecordingServer
) -> None:
    parent = tmp_path / "parent.py"
    parent.write_text(PARENT_SOURCE)
    env = launcher_env(openai_server, proxy_server, TEST_APP=str(app), TEST_EXIT_CODE="5")
    result = run(launcher("--", sys.executable, str(parent)), env, tmp_path)
    assert result.returncode == 5, result.stderr
    assert_observed(result, proxy_server, openai_server)


@pytest.mark.parametrize(
    ("settings", "secret"),
    [
        ({"PRYSM_API_KEY": None}, None),
        ({"PRYSM_API_KEY": "sk-proj-secret-openai-key-in-env"}, "secret-openai-key-in-env"),
        ({"PRYSM_BASE_URL": "prysm.example.com/api/v1"}, PRYSM_KEY),
    ],
    ids=["missing-key", "not-a-prysm-key", "bad-url"],
)
def test_launcher_with_bad_settings_says_so_once_and_runs_the_command_unobserved(
    settings: dict[str, str | None],
    secret: str | None,
    app: Path,
    tmp_path: Path,
    proxy_server: RecordingServer,
    openai_server: RecordingServer,
) -> None:
    env = launcher_env(openai_server, proxy_server, TEST_EXIT_CODE="4", **settings)
    for name, value in settings.items():
        if value is None:
            env.pop(name, None)
    result = run(launcher("--", sys.executable, str(app)), env, tmp_path)
    assert result.returncode == 4
    assert len(result.stderr_lines) == 1, result.stderr
    assert result.stderr_lines[0].startswith("prysmai run:")
    if settings.get("PRYSM_API_KEY", "") is None:
        assert "PRYSM_API_KEY" in result.stderr
    if secret is not None:
        assert secret not in result.stderr + result.stdout
    assert BOOTSTRAP not in (result.report["pythonpath"] or "")
    assert_unobserved(result, proxy_server, openai_server)


def test_launcher_unknown_command_exits_127(tmp_path: Path, proxy_server: RecordingServer) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PRYSM_API_KEY": PRYSM_KEY, "PRYSM_BASE_URL": proxy_server.url}
    result = run(launcher("--", "prysm-no-such-command-xyz", "arg"), env, tmp_path)
    assert result.returncode == 127
    assert "prysm-no-such-command-xyz" in result.stderr
    assert "Traceback" not in result.stderr
    assert proxy_server.requests == []


@pytest.mark.parametrize("argv", [[], ["--"]], ids=["nothing", "dashes-only"])
def test_launcher_without_a_command_exits_2(argv: list[str], tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PRYSM_API_KEY": PRYSM_KEY}
    result = run(launcher(*argv), env, tmp_path)
    assert result.returncode == 2
    assert "prysmai run -- python app.py" in result.stderr
    assert "Traceback" not in result.stderr
