"""Sustained load: N keep-alive connections for S seconds through ``prysmai proxy``, then requests
answered against traces stored.

    python bench/sustained_load.py                       # 64 connections, 60 s, --when-behind drop
    python bench/sustained_load.py --seconds 5           # the quick version bench/run.py --quick runs
    python bench/sustained_load.py --postgres --proxies 2   # two proxies on one (throwaway) PostgreSQL

With ``--postgres [URL]`` the proxies store in PostgreSQL (a throwaway server when no URL is
given), each through its own outbox file, and ``--proxies N`` of them share the load (the
connections split evenly). After the load the run waits until every outbox is shipped, then
counts the traces in PostgreSQL: ``stored_per_s`` is the traces stored over the load and that
drain (sustained traces/s into PostgreSQL), ``drain_s`` how long the outboxes took to empty after
the load, ``max_outbox_backlog`` the largest backlog sampled.

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
    postgres_database,
    wait_for_port,
)
from proxy_overhead import Target, start_upstream


def start_proxy(workdir: Path, upstream: str, db: Path | str, extra: list[str]) -> Target:
    port = free_port()
    env = dict(os.environ, OPENAI_API_KEY=UPSTREAM_KEY)
    for name in ("PRYSM_AUTO", "PRYSM_PROXY_KEYS", "PRYSM_PROXY_KEYS_FILE", "PRYSM_UPSTREAM_URL", "PRYSM_DB"):
        env.pop(name, None)
    log = open(workdir / f"prysm-{port}.log", "wb")  # noqa: SIM115 - kept open for the process's life
    cmd = [*PRYSMAI_CLI, "proxy", "--port", str(port), "--db", str(db), "--upstream", upstream]
    cmd += ["--key", PRYSM_KEY, *extra]
    # cwd: `python -c` puts the working directory first on sys.path, where a checkout's root would
    # shadow the prysmai a PYTHONPATH names (a checkout measured against another).
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(BENCH_DIR))
    wait_for_port(port, proc, timeout=60)
    target = Target("prysm", f"http://127.0.0.1:{port}/api/v1/chat/completions", PRYSM_KEY, proc)
    target.log = log
    return target


def health(base: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/health", headers={"Authorization": f"Bearer {PRYSM_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        doc: dict[str, Any] = json.load(response)
    return doc


def stored_traces(db: Path | str) -> int:
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
        help="busy-loop processes at normal priority for the run: a host with no spare CPU (does the writer keep up?)",
    )
    parser.add_argument(
        "--trace-writer",
        choices=("process", "thread", "unset"),
        default="unset",
        help="the proxy's --trace-writer (unset: its default, and older proxies without it)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="throwaway",
        metavar="URL",
        help="store in PostgreSQL through each proxy's outbox (no URL: a throwaway server)",
    )
    parser.add_argument("--proxies", type=int, default=1, help="proxies sharing the load (more than 1: --postgres)")
    args = parser.parse_args(argv)
    if args.proxies < 1 or (args.proxies > 1 and args.postgres is None):
        parser.error("--proxies: 1, or more with --postgres (proxies on one SQLite file would not share a store)")

    workdir = Path(tempfile.mkdtemp(prefix="prysmai-sustained-"))
    upstream_proc, upstream = start_upstream(workdir)
    server = None
    db: Path | str = workdir / "traces.db"
    if args.postgres is not None:
        db, server = postgres_database(args.postgres)
    policy = [] if args.when_behind == "unset" else ["--when-behind", args.when_behind]
    if args.trace_writer != "unset":
        policy += ["--trace-writer", args.trace_writer]
    targets: list[Target] = []
    samples: list[list[dict[str, Any]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(OSError):
                samples.append([health(base) for base in bases])

    sampler = threading.Thread(target=sample, daemon=True)
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(args.proxies):
            extra = [*policy, "--queue-size", str(args.queue_size)]
            if args.postgres is not None:
                extra += ["--outbox", str(workdir / f"outbox{n}.db")]
            targets.append(start_proxy(workdir, upstream, db, extra))
        bases = [t.url.rsplit("/chat/completions", 1)[0] for t in targets]
        cpu0 = [cpu_seconds(t.proc.pid) if t.proc is not None else 0.0 for t in targets]
        sampler.start()
        # Busy loops at normal priority beside the load: a host with no spare CPU.
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        started = time.monotonic()
        clients = [
            subprocess.Popen(
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
                    str(max(1, args.concurrency // args.proxies)),
                    "--requests",
                    str(10**9),
                    "--max-seconds",
                    str(args.seconds),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for target in targets
        ]
        results: list[dict[str, Any]] = []
        for client in clients:
            out, err = client.communicate(timeout=args.seconds + 120)
            if client.returncode != 0:
                raise RuntimeError(f"client failed: {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        loaded = time.monotonic() - started
        for hog in hogs:
            hog.kill()
        # Until every trace is written (and, on PostgreSQL, shipped): the drain after the load.
        deadline = time.monotonic() + 300
        while True:
            last = [health(base) for base in bases]
            if all(h["store"]["queued"] == 0 and not h["store"].get("outbox_backlog") for h in last):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stores did not catch up in 300 s: {[h['store'] for h in last]}")
            time.sleep(0.2)
        drained = time.monotonic() - started - loaded
        stop.set()
        sampler.join(10)
        cpu = [(cpu_seconds(t.proc.pid) - c) if t.proc is not None else 0.0 for t, c in zip(targets, cpu0)]
        codes = [t.stop() for t in targets]
        stored = stored_traces(db)
    finally:
        stop.set()
        for hog in hogs:
            hog.kill()
            hog.wait(10)
        for target in targets:
            target.stop()
        upstream_proc.terminate()
        upstream_proc.wait(10)
        if server is not None:
            server.close()
    sent = sum(int(r["sent"]) for r in results)
    errors = sum(int(r["errors"]) for r in results)
    answered = sent - errors
    seconds = max(float(r["seconds"]) for r in results)

    def total(doc: list[dict[str, Any]], field: str) -> int:
        return sum(int(h["store"].get(field) or 0) for h in doc)

    record = {
        "bench": "sustained",
        "store": "postgresql" if args.postgres is not None else "sqlite",
        "proxies": args.proxies,
        "when_behind": args.when_behind,
        "trace_writer": args.trace_writer,
        "concurrency": args.concurrency,
        "seconds": seconds,
        "rps": round(sum(float(r["rps"]) for r in results), 1),
        "p99_ms": max(float(r["p99_ms"]) for r in results),
        "sent": sent,
        "errors": errors,
        "answered": answered,
        "stored": stored,
        "stored_per_s": round(stored / max(seconds + drained, 1e-9), 1),
        "drain_s": round(drained, 2),
        "dropped": total(last, "dropped"),
        "lost": total(last, "lost"),
        "write_errors": total(last, "write_errors"),
        # Batches the writer thread built because the idle child starved (the --hogs case).
        "writer_fallbacks": total(last, "writer_fallbacks"),
        "max_queued": max([total(s, "queued") for s in samples] + [0]),
        "max_outbox_backlog": max([total(s, "outbox_backlog") for s in samples] + [0]),
        "hogs": args.hogs,
        # Whether the writer keeps up or slowly falls behind: the queue every 10 s.
        "queued_every_10s": [total(s, "queued") for s in samples[19::20]],
        "health_degraded_samples": sum(1 for s in samples if any(h["status"] != "ok" for h in s)),
        "proxy_cpu_s_per_s": round(sum(cpu) / max(seconds, 1e-9), 3),
        "proxy_exit": codes,
        "ok": stored == answered and errors == 0 and all(code == 0 for code in codes),
        "machine": machine_info(),
    }
    emit(record)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
