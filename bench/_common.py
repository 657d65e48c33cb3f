"""Helpers shared by the benchmark scripts: statistics, JSON lines, ports and process accounting.

Standard library only, so the quick mode needs nothing beyond ``pip install -e '.[proxy,test]'``.
Process accounting reads ``/proc`` (Linux), which is where these benchmarks run.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENVS_DIR = BENCH_DIR / ".venvs"

#: The fake Prysm key the SDK benchmarks and the proxy benchmarks use.
PRYSM_KEY = "sk-prysm-bench-0123456789abcdef"
#: The key the fake upstream expects (it accepts any bearer token, but a proxy may need one).
UPSTREAM_KEY = "sk-upstream-bench"
#: ``prysmai`` as a command, run by this interpreter from whichever ``prysmai`` it imports (a
#: checkout's, through ``PYTHONPATH``), not the installed script's.
PRYSMAI_CLI = [sys.executable, "-c", "import sys; from prysmai._cli import main; sys.exit(main())"]

#: Filler words for the benchmarks' made-up prose, the commonest English words first.
#: ``dashboard_scale.py``'s bodies draw from ``COMMON_WORDS`` alone (so a store it fills now holds
#: the rows it held before), ``openai_shapes.py``'s prose from all of ``WORDS``.
# fmt: off
COMMON_WORDS = (
    "the", "a", "to", "of", "and", "in", "is", "it", "you", "that", "for", "on", "with", "as", "this", "be", "are",
    "not", "can", "your", "have", "at", "from",
)
WORDS = (
    *COMMON_WORDS,
    "by", "we", "will", "an", "or", "if", "which", "when", "all", "their", "there", "would", "about", "more", "so",
    "one", "how", "these", "into", "than", "then", "model", "answer", "request", "token", "tokens", "latency",
    "cache", "prompt", "user", "system", "value", "function", "result", "error", "retry", "timeout", "budget",
    "project", "release", "version", "deploy", "database", "query", "index", "table", "report",
)
# fmt: on

CLK_TCK = _CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def emit(record: dict[str, Any]) -> None:
    """Print one measurement as one JSON line and flush, so a parent process sees it at once."""
    sys.stdout.write(json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n")
    sys.stdout.flush()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; nan if empty."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 60.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s")


def _children(pid: int) -> list[int]:
    """All descendants of pid, read from /proc (empty where /proc has no children files)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """User + system CPU seconds consumed so far by pid (and its descendants: the live ones', and
    those of the children it has reaped, which the kernel adds to its own account -- a proxy
    replaces a starved writer child, and the count must not go back when it does)."""
    total = 0.0
    pids = [pid, *(_children(pid) if include_children else [])]
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces: split after its closing parenthesis.
        fields = raw[raw.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        total += (utime + stime) / _CLK_TCK
        if include_children and p == pid:  # cutime, cstime: its reaped children's
            total += (int(fields[13]) + int(fields[14])) / _CLK_TCK
    return total


def rss_kib(pid: int, include_children: bool = True) -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB of pid plus its live descendants, from /proc/PID/status."""
    current = peak = 0
    pids = [pid, *(_children(pid) if include_children else [])]
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        current += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1])
        except OSError:
            continue
    return current, peak


def machine_info() -> dict[str, Any]:
    """What the machine is: CPU model, cores, Python; recorded beside every table."""
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }


def run_async(main: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """Run a coroutine on uvloop when it is installed (``uvicorn[standard]`` brings it), else asyncio."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    import asyncio

    return asyncio.run(main)


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def paired_rounds(
    record: dict[str, Any],
    flag: str,
    rounds: int,
    load: Callable[[threading.Event], None],
    run: Callable[[Any], dict[str, Any]],
    direct: Any,
    proxy: Any,
    *,
    settle_s: float,
    stop_s: float,
) -> list[dict[str, Any]]:
    """The proxy's added latency with and without a background ``load``, in paired rounds.

    Each round times the fake upstream ``direct`` then through ``proxy`` (``run(target)``: one
    ``client.py`` result) twice: once with ``load(stop)`` running in a thread (started ``settle_s``
    before the timing, told to stop after it and given ``stop_s`` to end its current step), once
    without; the order alternates between rounds. Emits and returns one record per measurement:
    ``record``'s fields, the round, ``flag`` (True: under the load), and the added p50/p99 (proxy
    minus direct, same round) beside both p99s. A proxy that answered with errors stops the run."""
    out: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for loaded in (False, True) if rnd % 2 == 0 else (True, False):
            stop = threading.Event()
            thread = threading.Thread(target=load, args=(stop,), daemon=True) if loaded else None
            try:
                if thread is not None:
                    thread.start()
                    time.sleep(settle_s)
                base = run(direct)
                got = run(proxy)
            finally:
                stop.set()
            if thread is not None:
                thread.join(stop_s)
            if got.get("errors"):
                raise RuntimeError(f"proxy errors: {got}")
            measured = {
                **record,
                "round": rnd,
                flag: loaded,
                "added_p50_ms": round(got["p50_ms"] - base["p50_ms"], 4),
                "added_p99_ms": round(got["p99_ms"] - base["p99_ms"], 4),
                "proxy_p99_ms": got["p99_ms"],
                "direct_p99_ms": base["p99_ms"],
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
            emit(measured)
            out.append(measured)
    return out


def postgres_database(url: str) -> tuple[str, Any]:
    """The PostgreSQL database a run stores its traces in: ``url`` itself, or, for ``throwaway``,
    a new database on a throwaway server (tests/proxy/postgres.py: Debian's PostgreSQL on a
    loopback port, fsync off). Returns (URL, the server to ``close()`` or ``None``)."""
    if url != "throwaway":
        return url, None
    sys.path.insert(0, str(REPO_DIR / "tests" / "proxy"))
    from postgres import PostgresServer

    server = PostgresServer().start()
    return str(server.database()), server
