"""The slow requests of a sequential client against what the proxy's trace writer was doing then.

One ``prysmai proxy`` (this checkout, or ``--source DIR``'s) on the fake upstream; a sequential
client sends ``--requests`` requests and records when each started and how long it took. The
proxy runs with its writer's phases timed on the same clock (``time.perf_counter``, the system's
monotonic clock, shared by the processes): ``build`` (the rows of a batch: the child's answer
awaited, or built on the thread), ``insert`` (the batch inserted), ``journal-done`` (the journal
told a batch is stored), ``journal-append`` (on the request path: every request overlaps its own)
and the garbage collector's passes (``gc0``-``gc2``, on the event loop's thread or another). The slow
requests are the client's slowest ``1 - --quantile`` (above its p99 by default); for each phase
the report gives the share of slow requests that overlapped one, against the share of the others:
a phase that explains the tail is much more frequent under the slow requests than under the rest
(a slow request is longer, so it overlaps a little more of everything).

A diagnostic, not a benchmark to compare checkouts with: the proxy runs with wrappers around
private methods of its writer (``TraceWriter._build``/``_insert``, ``Journal.append``/``done``),
which cost a few microseconds each. One JSON line per phase, then a table on standard error.

    python bench/tail_timeline.py --requests 3000 [--source DIR] [--quantile 0.99]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, PRYSM_KEY, UPSTREAM_KEY, emit, free_port, run_async, wait_for_port

#: What the proxy's child of this script times: (module, class, method, phase).
TIMED = (
    ("prysmai._proxy.store.writer", "TraceWriter", "_build", "build"),
    ("prysmai._proxy.store.writer", "TraceWriter", "_insert", "insert"),
    ("prysmai._proxy.store.journal", "Journal", "append", "journal-append"),
    ("prysmai._proxy.store.journal", "Journal", "done", "journal-done"),
)


def proxy_child(out: str, argv: list[str]) -> int:
    """Run ``prysmai proxy`` with the writer's phases and the collector's passes recorded, and
    write them to ``out`` as JSON when it exits: ``[phase, start, end, thread CPU s, items]``."""
    import atexit
    import gc
    import importlib

    events: list[tuple[str, float, float, float, int]] = []
    clock, thread_cpu = time.perf_counter, time.thread_time

    def timed(cls: Any, name: str, phase: str) -> None:
        original = getattr(cls, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            start, cpu = clock(), thread_cpu()
            try:
                return original(self, *args, **kwargs)
            finally:
                items = len(args[0]) if args and isinstance(args[0], list) else 0
                events.append((phase, start, clock(), thread_cpu() - cpu, items))

        setattr(cls, name, wrapper)

    for module, cls, name, phase in TIMED:
        timed(getattr(importlib.import_module(module), cls), name, phase)
    started: dict[str, float] = {}

    def collector(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = clock()
        else:
            where = "loop" if threading.current_thread() is threading.main_thread() else "other thread"
            phase = f"gc{info['generation']} ({where})"
            events.append((phase, started.get("t", clock()), clock(), 0.0, info["collected"]))

    gc.callbacks.append(collector)

    def write() -> None:
        with open(out, "w") as fh:
            json.dump(events, fh)

    atexit.register(write)
    from prysmai._cli import main

    return int(main(["proxy", *argv]) or 0)


async def sequential(url: str, n: int, warmup: int) -> list[tuple[float, float]]:
    """(start, seconds) of each of ``n`` sequential requests after ``warmup``."""
    import client

    runner = client.Runner(client.Target(url, PRYSM_KEY, "bench", {}), 30.0)
    results = await runner.sequential(n, warmup, False, None)
    if runner.errors:
        raise RuntimeError(f"{runner.errors} request(s) failed: {runner.error_samples}")
    return [(r.t_start, r.t_done - r.t_start) for r in results]


def overlaps(start: float, seconds: float, spans: list[tuple[float, float]]) -> bool:
    end = start + seconds
    return any(a < end and b > start for a, b in spans)


def report(requests: list[tuple[float, float]], events: list[list[Any]], quantile: float) -> list[dict[str, Any]]:
    """One record per phase: its time over the run and how often it overlapped the slow
    requests and the others."""
    first, last = requests[0][0], requests[-1][0] + requests[-1][1]
    events = [e for e in events if e[2] >= first and e[1] <= last]
    ranked = sorted(seconds for _, seconds in requests)
    threshold = ranked[min(len(ranked) - 1, int(quantile * len(ranked)))]
    slow = [r for r in requests if r[1] > threshold]
    others = [r for r in requests if r[1] <= threshold]
    records = []
    for phase in sorted({e[0] for e in events}):
        mine = [e for e in events if e[0] == phase]
        spans = [(e[1], e[2]) for e in mine]
        hit_slow = sum(overlaps(s, d, spans) for s, d in slow)
        hit_others = sum(overlaps(s, d, spans) for s, d in others)
        records.append(
            {
                "bench": "tail-timeline",
                "phase": phase,
                "count": len(mine),
                "wall_ms": round(sum(e[2] - e[1] for e in mine) * 1000, 1),
                "cpu_ms": round(sum(e[3] for e in mine) * 1000, 1),
                "items": sum(e[4] for e in mine),
                "share_of_run": round(sum(e[2] - e[1] for e in mine) / (last - first), 4),
                "slow": len(slow),
                "slow_overlapping": hit_slow,
                "others_overlapping": hit_others,
                "slow_share": round(hit_slow / max(1, len(slow)), 3),
                "others_share": round(hit_others / max(1, len(others)), 3),
                "threshold_ms": round(threshold * 1000, 3),
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--quantile", type=float, default=0.99, help="slow = above this quantile of the run")
    parser.add_argument("--source", metavar="DIR", help="a folder holding another checkout's prysmai/")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--proxy-child", metavar="OUT", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.proxy_child:
        return proxy_child(args.proxy_child, rest)
    if rest:
        parser.error(f"unknown arguments: {rest}")
    workdir = Path(tempfile.mkdtemp(prefix="prysmai-timeline-"))
    up_port, port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "server.py"), "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ, OPENAI_API_KEY=UPSTREAM_KEY)
    if args.source:
        env["PYTHONPATH"] = str(Path(args.source).resolve())
    for var in ("PRYSM_AUTO", "PRYSM_PROXY_KEYS", "PRYSM_PROXY_KEYS_FILE", "PRYSM_UPSTREAM_URL", "PRYSM_DB"):
        env.pop(var, None)
    out = workdir / "events.json"
    proxy = None
    try:
        wait_for_port(up_port, upstream, timeout=30)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--proxy-child", str(out)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--db", str(workdir / "traces.db")]
        cmd += ["--upstream", f"http://127.0.0.1:{up_port}/v1", "--key", PRYSM_KEY]
        log = open(workdir / "proxy.log", "wb")  # noqa: SIM115 (closed with the run)
        proxy = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(BENCH_DIR))
        wait_for_port(port, proxy, timeout=60)
        url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
        requests = run_async(sequential(url, args.requests, args.warmup))
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
        events = json.loads(out.read_text())
    finally:
        for proc in (proxy, upstream):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    ranked = sorted(seconds for _, seconds in requests)
    summary = {
        "bench": "tail-timeline",
        "requests": len(ranked),
        "p50_ms": round(ranked[len(ranked) // 2] * 1000, 3),
        "p99_ms": round(ranked[int(0.99 * (len(ranked) - 1))] * 1000, 3),
        "max_ms": round(ranked[-1] * 1000, 3),
        "loadavg_1m": os.getloadavg()[0],
    }
    emit(summary)
    lines = [
        f"{summary['requests']} sequential requests: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms "
        f"(load average {summary['loadavg_1m']:.1f})",
        "| phase | count | wall ms | CPU ms | slow requests overlapping | other requests overlapping |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for record in report(requests, events, args.quantile):
        emit(record)
        lines.append(
            f"| {record['phase']} | {record['count']} | {record['wall_ms']} | {record['cpu_ms']} | "
            f"{record['slow_overlapping']}/{record['slow']} ({record['slow_share']:.0%}) | "
            f"{record['others_share']:.1%} |"
        )
    print("\n".join(lines), file=sys.stderr)
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
