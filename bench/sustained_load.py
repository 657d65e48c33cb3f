"""Sustained load: N keep-alive connections for S seconds through ``prysmai proxy``, then requests
answered against traces stored.

    python bench/sustained_load.py                       # 64 connections, 60 s, --when-behind drop
    python bench/sustained_load.py --seconds 5           # the quick version bench/run.py --quick runs

The proxy runs with ``--when-behind drop`` by default here: under ``block`` (the proxy's default)
a writer that falls behind slows the clients down instead of losing traces, which would hide it;
under ``drop`` it shows as dropped traces. The run samples ``/api/v1/health`` (with the key) every
half second for the queue depth, stops the proxy with SIGTERM (it writes what is pending), counts
the stored traces with ``prysmai stats --json`` and prints one JSON line. Exit 1 if any request
failed or the number of traces differs from the number of requests answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    PRYSM_KEY,
    PRYSMAI_CLI,
    UPSTREAM_KEY,
    cpu_seconds,
    emit,
    free_port,
    machine_info,
    wait_for_port,
)
from proxy_overhead import Target, start_upstream


def start_proxy(workdir: Path, upstream: str, db: Path, extra: list[str]) -> Target:
    port = free_port()
    env = dict(os.environ, OPENAI_API_KEY=UPSTREAM_KEY)
    for name in ("PRYSM_AUTO", "PRYSM_PROXY_KEYS", "PRYSM_PROXY_KEYS_FILE", "PRYSM_UPSTREAM_URL", "PRYSM_DB"):
        env.pop(name, None)
    log = open(workdir / "prysm.log", "wb")  # noqa: SIM115 - kept open for the process's life
    cmd = [*PRYSMAI_CLI, "proxy", "--port", str(port), "--db", str(db), "--upstream", upstream]
    cmd += ["--key", PRYSM_KEY, *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, timeout=60)
    target = Target("prysm", f"http://127.0.0.1:{port}/api/v1/chat/completions", PRYSM_KEY, proc)
    target.log = log
    return target


def health(base: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/health", headers={"Authorization": f"Bearer {PRYSM_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        doc: dict[str, Any] = json.load(response)
    return doc


def stored_traces(db: Path) -> int:
    out = subprocess.run(
        [*PRYSMAI_CLI, "stats", "--db", str(db), "--json"], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"prysmai stats failed: {out.stderr[-1000:]}")
    return int(json.loads(out.stdout)["requests"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--when-behind", choices=("block", "drop", "unset"), default="drop", help="unset: older proxies without it"
    )
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument(
        "--hogs",
        type=int,
        default=0,
        help="busy-loop processes at normal priority for the run: a host with no spare CPU (the writer "
        "child works on a SCHED_IDLE thread; this shows it still keeps up)",
    )
    parser.add_argument(
        "--trace-writer",
        choices=("process", "thread", "unset"),
        default="unset",
        help="the proxy's --trace-writer (unset: its default, and older proxies without it)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="prysmai-sustained-"))
    upstream_proc, upstream = start_upstream(workdir)
    db = workdir / "traces.db"
    policy = [] if args.when_behind == "unset" else ["--when-behind", args.when_behind]
    if args.trace_writer != "unset":
        policy += ["--trace-writer", args.trace_writer]
    target = start_proxy(workdir, upstream, db, [*policy, "--queue-size", str(args.queue_size)])
    base = target.url.rsplit("/chat/completions", 1)[0]
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(OSError):
                samples.append(health(base))

    sampler = threading.Thread(target=sample, daemon=True)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        cpu0 = cpu_seconds(target.proc.pid) if target.proc is not None else 0.0
        sampler.start()
        client = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "client.py"),
                "--url",
                target.url,
                "--api-key",
                PRYSM_KEY,
                "--mode",
                "load",
                "--concurrency",
                str(args.concurrency),
                "--requests",
                str(10**9),
                "--max-seconds",
                str(args.seconds),
            ],
            capture_output=True,
            text=True,
            timeout=args.seconds + 120,
        )
        stop.set()
        sampler.join(10)
        if client.returncode != 0:
            raise RuntimeError(f"client failed: {client.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
        last = health(base)
        queued_at_end = last["store"]["queued"]
        # How long the writer takes to store what was still queued when the clients stopped.
        ended = time.monotonic()
        while last["store"]["queued"] and time.monotonic() - ended < 300:
            time.sleep(0.05)
            last = health(base)
        drained_after = time.monotonic() - ended
        cpu = (cpu_seconds(target.proc.pid) - cpu0) if target.proc is not None else 0.0
        code = target.stop()
        stored = stored_traces(db)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        stop.set()
        target.stop()
        upstream_proc.terminate()
        upstream_proc.wait(10)
    answered = int(result["sent"]) - int(result["errors"])
    record = {
        "bench": "sustained",
        "when_behind": args.when_behind,
        "trace_writer": args.trace_writer,
        "concurrency": args.concurrency,
        "seconds": result["seconds"],
        "rps": result["rps"],
        "p99_ms": result["p99_ms"],
        "sent": result["sent"],
        "errors": result["errors"],
        "answered": answered,
        "stored": stored,
        "dropped": last["store"]["dropped"],
        "lost": last["store"].get("lost"),
        "write_errors": last["store"]["write_errors"],
        "max_queued": max([s["store"]["queued"] for s in samples] + [queued_at_end]),
        "queued_at_end": queued_at_end,
        "drained_after_s": round(drained_after, 2),
        "hogs": args.hogs,
        # Whether the writer keeps up or slowly falls behind: the queue every 10 s.
        "queued_every_10s": [s["store"]["queued"] for s in samples[19::20]],
        "health_degraded_samples": sum(1 for s in samples if s["status"] != "ok"),
        "proxy_cpu_s_per_s": round(cpu / max(result["seconds"], 1e-9), 3),
        "proxy_exit": code,
        "ok": stored == answered and result["errors"] == 0 and code == 0,
        "machine": machine_info(),
    }
    emit(record)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
