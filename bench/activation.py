"""Activation cost: interpreter start with and without ``PRYSM_AUTO=1``, and ``import prysmai``.

Each run spawns a fresh interpreter and times it to exit, with ``posix_spawn`` and ``waitpid``.
The interpreter is a small virtualenv, ``bench/.venvs/activation``, made by this script (no
download): a byte-compiled copy of ``prysmai/`` in its site-packages, as pip would install it, and a
``.pth`` line reaching the dependencies (openai, wrapt) in the running interpreter's
site-packages. An editable install would not do: its import finder costs ~10 ms at every start
and preloads ``pathlib`` and ``urllib.parse``, hiding what activation imports.
Variants, interleaved run by run:

* ``bare``         ``python -c pass`` without any PRYSM_* variable
* ``auto``         ``python -c pass`` with the environment ``prysmai run`` sets: ``PRYSM_AUTO=1``,
                   prysmai's start-up folder first on ``PYTHONPATH``, plus ``PRYSM_API_KEY``
* ``import``       ``python -c "import prysmai"`` without PRYSM_* (what importing the SDK costs)
* ``openai``       ``python -c "import openai"`` without PRYSM_* (for scale)
* ``auto_openai``  ``python -c "import openai"`` under activation: what the patches add when the
                   application imports openai (noisy: importing openai alone takes ~0.5 s)
* ``instrument_call``  timed inside a child that imported openai first: ``import prysmai`` plus
                   ``prysmai.instrument()`` (wrapt, the patches), the work deferred to openai's import

The ms added is the median of the per-run differences to ``bare`` (runs are paired, so drift
cancels). A child under activation also reports whether openai got imported at start-up (it
must not be), which prysmai modules start-up loaded, and whether importing openai then
instruments it (it must). One JSON line per variant, then one for the checks.

    python bench/activation.py --runs 60
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import PRYSM_KEY, REPO_DIR, VENVS_DIR, emit, percentile

PROXY_URL = "http://127.0.0.1:9/api/v1"

# Run in a child: what activation left at start-up, then whether importing openai instruments it.
_CHECK = """
import sys, json
at_start = {
    "openai_imported": "openai" in sys.modules,
    "prysmai_imported": "prysmai" in sys.modules,
    "prysmai_modules": sorted(m for m in sys.modules if m == "prysmai" or m.startswith("prysmai.")),
    "modules": len(sys.modules),
}
import openai
m = sys.modules.get("prysmai._instrument")
at_start["instrumented_after_import"] = bool(m is not None and m.is_instrumented())
print(json.dumps(at_start))
"""

# Run in a child with openai already imported: what instrument() itself costs (wrapt, patches).
_INSTRUMENT = """
import time, openai
t = time.perf_counter()
import prysmai
prysmai.instrument(prysm_key=%r, base_url=%r)
print((time.perf_counter() - t) * 1000.0)
"""


def installed_python(source: Path = REPO_DIR / "prysmai") -> str:
    """A virtualenv's python with a fresh copy of prysmai installed (see the module docstring)."""
    venv = VENVS_DIR / "activation"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    target = Path(purelib) / "prysmai"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # pip byte-compiles what it installs; do the same (PYTHONDONTWRITEBYTECODE may be set here).
    subprocess.run([str(python), "-m", "compileall", "-q", str(target)], check=True, timeout=120)
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (Path(purelib) / "_prysmai_bench_deps.pth").write_text("".join(p + "\n" for p in deps))
    return str(python)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRYSM_")}
    env.pop("PYTHONPATH", None)
    return env


def _auto_env(python: str) -> dict[str, str]:
    """The environment ``prysmai run`` gives a command, for the prysmai that ``python`` imports."""
    env = _base_env()
    folder = subprocess.run(
        [python, "-c", "import os, prysmai; print(os.path.join(os.path.dirname(prysmai.__file__), '_bootstrap'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    env["PRYSM_AUTO"] = "1"
    env["PYTHONPATH"] = folder
    env["PRYSM_API_KEY"] = PRYSM_KEY
    env["PRYSM_BASE_URL"] = PROXY_URL
    return env


def variants(py: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    bare, auto = _base_env(), _auto_env(py)
    return {
        "bare": ([py, "-c", "pass"], bare),
        "auto": ([py, "-c", "pass"], auto),
        "import": ([py, "-c", "import prysmai"], bare),
        "openai": ([py, "-c", "import openai"], bare),
        "auto_openai": ([py, "-c", "import openai"], auto),
    }


def _spawn_time(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to exit of one child, with its stdout and stderr discarded."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ]
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv!r} failed with status {status}")
    return elapsed


def check(python: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([python, "-c", _CHECK], env=env, capture_output=True, text=True, check=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["stderr"] = out.stderr.strip()[:300]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Interpreter start-up cost of PRYSM_AUTO=1 and import prysmai.")
    parser.add_argument("--runs", type=int, default=60, help="runs of each variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--instrument-runs", type=int, default=15, help="runs timing instrument() in-process")
    parser.add_argument("--python", help="interpreter to time (default: a fresh bench/.venvs/activation)")
    args = parser.parse_args(argv)

    python = args.python or installed_python()
    table = variants(python)
    names = list(table)
    for _ in range(args.warmup):  # fill the page cache, write .pyc files
        for name in names:
            _spawn_time(*table[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    # Light and heavy (openai-importing) runs go in separate groups: a run right after a 0.5 s
    # import of openai is slower (caches), which would bias whichever variant follows it. Within
    # a group the order is shuffled each run (seeded: the same order for the same arguments).
    rng = random.Random(4)
    groups = [["bare", "auto", "import"], ["openai", "auto_openai"]]
    for group in groups:
        for _ in range(args.runs):
            order = group[:]
            rng.shuffle(order)
            for name in order:
                times[name].append(_spawn_time(*table[name]) * 1000.0)

    baselines = {"auto": "bare", "import": "bare", "openai": "bare", "auto_openai": "openai"}
    for name in names:
        series = times[name]
        record: dict[str, Any] = {
            "bench": "activation",
            "variant": name,
            "layout": "editable" if args.python else "installed",
            "runs": len(series),
            "median_ms": round(percentile(series, 50), 3),
            "p25_ms": round(percentile(series, 25), 3),
            "p75_ms": round(percentile(series, 75), 3),
        }
        base = baselines.get(name)
        if base is not None:
            diffs = [a - b for a, b in zip(series, times[base])]  # paired: same run index
            record["baseline"] = base
            record["added_ms"] = round(percentile(diffs, 50), 3)
            record["added_p25_ms"] = round(percentile(diffs, 25), 3)
            record["added_p75_ms"] = round(percentile(diffs, 75), 3)
        emit(record)

    auto = check(python, table["auto"][1])
    bare = check(python, table["bare"][1])
    emit(
        {
            "bench": "activation",
            "variant": "check",
            "openai_imported": auto["openai_imported"],
            "prysmai_modules": auto["prysmai_modules"],
            "modules_added": auto["modules"] - bare["modules"],
            "instrumented_after_import": auto["instrumented_after_import"],
            "stderr": auto["stderr"],
        }
    )
    code = _INSTRUMENT % (PRYSM_KEY, PROXY_URL)
    costs = []
    for _ in range(args.instrument_runs):
        out = subprocess.run(
            [python, "-c", code], env=_base_env(), capture_output=True, text=True, check=True, timeout=120
        )
        costs.append(float(out.stdout.strip().splitlines()[-1]))
    emit(
        {
            "bench": "activation",
            "variant": "instrument_call",
            "runs": len(costs),
            "median_ms": round(percentile(costs, 50), 3),
            "p25_ms": round(percentile(costs, 25), 3),
            "p75_ms": round(percentile(costs, 75), 3),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
