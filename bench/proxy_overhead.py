"""Proxy overhead: the fake upstream called directly, through ``prysmai proxy``, and through a peer.

Starts ``server.py`` (the fake upstream) and each proxy as subprocesses on free loopback ports,
then runs ``client.py`` against each target, round after round, rotating the order of the
targets within each measurement (A B C, B C A, ...). Each run prints one JSON line with the
client-side figures plus the proxy's CPU time per request (from /proc) and, at the end, each
proxy's peak RSS. Finally the prysmai proxy is stopped gracefully (so it flushes) and its store
must hold exactly one trace per request sent to it.

``--floor httpx`` adds a bare pass-through (passthrough.py: the same uvicorn set-up, no capture)
as a target, so the table separates what capture costs from what the HTTP stack costs.

Measurements:
* ``seq``     sequential, not streamed: latency p50/p95/p99/p99.9 (added = target - direct, same round)
* ``stream``  sequential, streamed (20 content chunks 1 ms apart): TTFT (p50/p95/p99/p99.9), the gap
  per chunk, and the whole stream's time (p50/p99/p99.9)
* ``c16`` / ``c64``  that many connections, back to back: requests per second and p99

Everything runs on this machine's cores, client included (see README.md).

``--copies N`` starts N processes of the prysmai proxy and of each ``--baseline`` (named
``prysm``, ``prysm@2``, ...) and the summary pools them: per round, the mean over a target's
copies. One process keeps a speed of its own for its whole life (where its memory and threads
landed, its hash seed): on this 2-core machine two processes of the *same* code differed by
0.02-0.04 ms of TTFT over 8 paired rounds, more than the differences being measured, so a
comparison of one process each is partly a comparison of two draws.

    python bench/proxy_overhead.py --rounds 5            # direct vs prysmai proxy
    python bench/proxy_overhead.py --rounds 5 --peer litellm
    python bench/proxy_overhead.py --rounds 8 --copies 2 --baseline /tmp/base --metrics seq,stream,c64
    python bench/proxy_overhead.py --rounds 8 --postgres --metrics seq,stream,c64   # PostgreSQL vs SQLite

``--postgres [URL]`` adds ``prysm-pg``: the same proxy storing in PostgreSQL (through its outbox; a
throwaway server when no URL is given), measured in the same rounds as ``prysm`` on SQLite, so
the summary pairs the request path's added latency on the two stores. Its traces are counted in
PostgreSQL once its outbox is shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from _common import (
    BENCH_DIR,
    CLK_TCK,
    PRYSM_KEY,
    PRYSMAI_CLI,
    UPSTREAM_KEY,
    VENVS_DIR,
    cpu_seconds,
    emit,
    free_port,
    median,
    postgres_database,
    rss_kib,
    wait_for_port,
)

STREAM_MODEL = "bench-c20-d1"  # 20 content chunks, 1 ms apart (see server.py)
LITELLM_VERSION = "1.108.7"  # the newest whose [proxy] extra resolves from the registry here
LITELLM_MASTER_KEY = "sk-litellm-bench"


class Target:
    """One way to reach the fake upstream: its chat completions URL and the process serving it."""

    def __init__(self, name: str, url: str, api_key: str, proc: subprocess.Popen[bytes] | None) -> None:
        self.name = name
        self.url = url
        self.api_key = api_key
        self.proc = proc
        self.sent = 0
        self.log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop gracefully (SIGTERM, as a service manager does), then harder; return the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                return proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait(10)


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread (a Python proxy's event loop; the rest of its
    CPU is its other threads': the trace writer's)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as fh:
            raw = fh.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _log_file(workdir: Path, name: str) -> IO[bytes]:
    return open(workdir / f"{name}.log", "wb")  # closed when the run ends


def start_upstream(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The fake upstream; returns (process, base URL ending in /v1)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=_log_file(workdir, "upstream"),
    )
    wait_for_port(port, proc, timeout=30)
    return proc, f"http://127.0.0.1:{port}/v1"


def start_prysm(
    workdir: Path,
    upstream: str,
    db: Path | str,
    name: str = "prysm",
    source: str | None = None,
    extra: tuple[str, ...] = (),
) -> Target:
    """``prysmai proxy``; ``source``: a checkout's directory to run instead of the installed one;
    ``extra``: more flags (a PostgreSQL store's ``--outbox``)."""
    port = free_port()
    env = dict(os.environ, OPENAI_API_KEY=UPSTREAM_KEY)
    if source is not None:
        env["PYTHONPATH"] = source
    for var in ("PRYSM_AUTO", "PRYSM_PROXY_KEYS", "PRYSM_PROXY_KEYS_FILE", "PRYSM_UPSTREAM_URL", "PRYSM_DB"):
        env.pop(var, None)
    log = _log_file(workdir, name)
    cmd = [
        *PRYSMAI_CLI,
        "proxy",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(db),
        "--upstream",
        upstream,
        "--key",
        PRYSM_KEY,
        *extra,
    ]
    # cwd: `python -c` puts the working directory first on sys.path; a checkout's root there would
    # shadow ``source``.
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(BENCH_DIR))
    try:
        wait_for_port(port, proc, timeout=60)
    except Exception:
        print((workdir / f"{name}.log").read_text(errors="replace")[-2000:], file=sys.stderr)
        raise
    target = Target(name, f"http://127.0.0.1:{port}/api/v1/chat/completions", PRYSM_KEY, proc)
    target.log = log
    return target


def start_floor(workdir: Path, upstream: str, client: str) -> Target:
    """The bare pass-through (passthrough.py) with the given upstream client."""
    port = free_port()
    name = f"floor-{client}"
    log = _log_file(workdir, name)
    cmd = [sys.executable, str(BENCH_DIR / "passthrough.py"), "--port", str(port), "--upstream", upstream]
    proc = subprocess.Popen(
        [*cmd, "--client", client, "--upstream-key", UPSTREAM_KEY], stdout=log, stderr=subprocess.STDOUT
    )
    wait_for_port(port, proc, timeout=60)
    target = Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", "sk-bench", proc)
    target.log = log
    return target


def litellm_python(version: str = LITELLM_VERSION) -> Path:
    """LiteLLM's proxy in its own virtualenv, bench/.venvs/litellm, installed from the registry once."""
    venv = VENVS_DIR / "litellm"
    python = venv / "bin" / "python"
    marker = venv / f".installed-{version}"
    if not marker.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        print(f"installing litellm[proxy]=={version} into {venv} ...", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"],
            check=True,
            timeout=1800,
        )
        marker.write_text(version)
    return python


def start_litellm(workdir: Path, upstream: str, version: str) -> Target:
    python = litellm_python(version)
    models = ["bench", STREAM_MODEL]
    lines = ["model_list:"]
    for model in models:
        lines += [
            f"  - model_name: {model}",
            "    litellm_params:",
            f"      model: openai/{model}",
            f"      api_base: {upstream}",
            f"      api_key: {UPSTREAM_KEY}",
        ]
    lines += [
        "general_settings:",
        f"  master_key: {LITELLM_MASTER_KEY}",
        "litellm_settings:",
        "  set_verbose: false",
        "  telemetry: false",
    ]
    config = workdir / "litellm.yaml"
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    env.pop("PYTHONPATH", None)
    log = _log_file(workdir, "litellm")
    proc = subprocess.Popen(
        [str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, timeout=240)
    except Exception:
        print((workdir / "litellm.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    target = Target("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", LITELLM_MASTER_KEY, proc)
    target.log = log
    return target


def litellm_installed_version() -> str | None:
    python = VENVS_DIR / "litellm" / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() or None


def run_client(target: Target, args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(BENCH_DIR / "client.py"),
        "--url",
        target.url,
        "--api-key",
        target.api_key,
        "--stream-model",
        STREAM_MODEL,
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"client failed ({out.returncode}) against {target.name}: {out.stderr[-2000:]}")
    record: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    target.sent += int(record.get("sent", 0))
    return record


def count_traces(db: Path | str) -> int:
    """Traces in the store, through ``prysmai stats --json`` (the public way), else SQLite directly."""
    cmd = [
        *PRYSMAI_CLI,
        "stats",
        "--db",
        str(db),
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode == 0:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(out.stdout)["requests"])
    if isinstance(db, str):
        raise RuntimeError(f"prysmai stats failed: {out.stderr[-1000:]}")
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        row = conn.execute("SELECT count(*) FROM traces").fetchone()
        return int(row[0])


def wait_shipped(target: Target, timeout: float = 300.0) -> None:
    """Until the proxy's outbox is empty (``/api/v1/health``'s ``store.outbox_backlog``)."""
    import urllib.request

    base = target.url.rsplit("/chat/completions", 1)[0]
    request = urllib.request.Request(f"{base}/health", headers={"Authorization": f"Bearer {target.api_key}"})
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(request, timeout=10) as answer:
            store = json.load(answer)["store"]
        if not store.get("queued") and not store.get("outbox_backlog"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: the outbox was not shipped in {timeout:.0f} s: {store}")
        time.sleep(0.2)


def writer_fallbacks(target: Target) -> int | None:
    """Batches the proxy's writer thread built because its idle child did not (``/api/v1/health``'s
    ``store.writer_fallbacks``); ``None`` for a proxy that does not report it. On a host with no
    spare CPU the child starves and the proxy measures as ``--trace-writer thread`` from then on."""
    import urllib.request

    base = target.url.rsplit("/chat/completions", 1)[0]
    request = urllib.request.Request(f"{base}/health", headers={"Authorization": f"Bearer {target.api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            value = json.load(answer).get("store", {}).get("writer_fallbacks")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


MEASUREMENTS: dict[str, list[str]] = {
    "seq": ["--mode", "seq"],
    "stream": ["--mode", "stream"],
    "c16": ["--mode", "load", "--concurrency", "16"],
    "c64": ["--mode", "load", "--concurrency", "64"],
}


def print_paired_summary(records: list[dict[str, Any]], names: list[str]) -> None:
    """To stderr: per target, the medians over rounds (ranges in brackets) of the figures the
    README's tables hold, each paired with ``direct`` (added) or with the first target (ratio)
    in the same round."""
    by: dict[tuple[int, str, str], dict[str, Any]] = {(r["round"], r["metric"], r["target"]): r for r in records}
    rounds = sorted({r["round"] for r in records})
    if not names:
        return
    ref = names[0]

    def series(metric: str, field: str, name: str, paired: str | None, ratio: bool) -> list[float]:
        out = []
        for rnd in rounds:
            rec, other = by.get((rnd, metric, name)), by.get((rnd, metric, paired)) if paired else None
            if rec is None or rec.get(field) is None or (paired and (other is None or other.get(field) is None)):
                continue
            value = float(rec[field])
            if paired is not None and other is not None:
                value = value / float(other[field]) if ratio else value - float(other[field])
            out.append(value)
        return out

    def fmt(values: list[float], digits: int) -> str:
        if not values:
            return "-"
        return f"{median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"

    loads = [float(r["loadavg_1m"]) for r in records if "loadavg_1m" in r]
    print(
        f"paired summary over {len(rounds)} rounds (median [min-max]); load average (1 min) {fmt(loads, 1)}",
        file=sys.stderr,
    )
    for name in names:
        cells = [
            f"seq added p50 ms {fmt(series('seq', 'p50_ms', name, 'direct', False), 3)}",
            # The tail, paired as the median is: an occasional slow path shows here, not there.
            f"p99 {fmt(series('seq', 'p99_ms', name, 'direct', False), 3)}",
            f"p99.9 {fmt(series('seq', 'p999_ms', name, 'direct', False), 3)}",
            f"TTFT added ms {fmt(series('stream', 'ttft_p50_ms', name, 'direct', False), 3)}",
            f"p99 {fmt(series('stream', 'ttft_p99_ms', name, 'direct', False), 3)}",
            f"p99.9 {fmt(series('stream', 'ttft_p999_ms', name, 'direct', False), 3)}",
            f"stream total added p99 {fmt(series('stream', 'total_p99_ms', name, 'direct', False), 3)}",
            f"p99.9 {fmt(series('stream', 'total_p999_ms', name, 'direct', False), 3)}",
            f"c64 req/s {fmt(series('c64', 'rps', name, None, False), 0)}",
            f"CPU us/req seq {fmt(series('seq', 'cpu_us_per_req', name, None, False), 0)}",
            f"c64 {fmt(series('c64', 'cpu_us_per_req', name, None, False), 0)} "
            f"(main thread {fmt(series('c64', 'main_thread_cpu_us_per_req', name, None, False), 0)})",
        ]
        if name != ref:
            cells += [
                f"vs {ref}: seq added diff {fmt(_diff_added(by, rounds, 'seq', 'p50_ms', name, ref), 3)}",
                f"p99 diff {fmt(_diff_added(by, rounds, 'seq', 'p99_ms', name, ref), 3)}",
                f"p99.9 diff {fmt(_diff_added(by, rounds, 'seq', 'p999_ms', name, ref), 3)}",
                f"TTFT added diff {fmt(_diff_added(by, rounds, 'stream', 'ttft_p50_ms', name, ref), 3)}",
                f"p99 diff {fmt(_diff_added(by, rounds, 'stream', 'ttft_p99_ms', name, ref), 3)}",
                f"p99.9 diff {fmt(_diff_added(by, rounds, 'stream', 'ttft_p999_ms', name, ref), 3)}",
                f"c64 ratio {fmt(series('c64', 'rps', name, ref, True), 2)}",
                f"c64 CPU us/req diff {fmt(_diff_added(by, rounds, 'c64', 'cpu_us_per_req', name, ref), 0)}",
                f"main thread {fmt(_diff_added(by, rounds, 'c64', 'main_thread_cpu_us_per_req', name, ref), 0)}",
            ]
        print(f"  {name}: " + "; ".join(cells), file=sys.stderr)


def _stem(name: str) -> str:
    """A target's name without its copy number (``prysm@2`` -> ``prysm``)."""
    return name.split("@", 1)[0]


def pool_copies(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per round, metric and target, the copies of a target (``--copies``) pooled:
    each numeric figure is the mean over the copies measured in that round."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["round"], record["metric"], _stem(record["target"])), []).append(record)
    pooled = []
    for (rnd, metric, target), copies in groups.items():
        merged: dict[str, Any] = {"round": rnd, "metric": metric, "target": target}
        for field in copies[0]:
            values = [c.get(field) for c in copies]
            if field not in merged and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                merged[field] = sum(values) / len(values)
        pooled.append(merged)
    return pooled


def _diff_added(
    by: dict[tuple[int, str, str], dict[str, Any]], rounds: list[int], metric: str, field: str, name: str, ref: str
) -> list[float]:
    """Per round: (name - direct) - (ref - direct) = name - ref."""
    out = []
    for rnd in rounds:
        a, b = by.get((rnd, metric, name)), by.get((rnd, metric, ref))
        if a and b and a.get(field) is not None and b.get(field) is not None:
            out.append(float(a[field]) - float(b[field]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Added latency, throughput and cost of proxies.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seq-requests", type=int, default=1000)
    parser.add_argument("--stream-requests", type=int, default=100)
    parser.add_argument("--load-requests", type=int, default=3000)
    parser.add_argument("--load-seconds", type=float, default=20.0, help="time bound of one load run")
    parser.add_argument("--peer", action="append", choices=["litellm"], default=[])
    parser.add_argument(
        "--floor",
        action="append",
        choices=["httpx", "aiohttp"],
        default=[],
        help="also measure a bare pass-through (no capture) with this upstream client",
    )
    parser.add_argument("--litellm-version", default=LITELLM_VERSION)
    parser.add_argument("--no-prysm", action="store_true", help="skip prysmai proxy (harness check)")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        action="append",
        default=[],
        help="also measure the prysmai proxy of another checkout (a directory holding its prysmai/), "
        "in the same rounds: a paired before/after on a noisy machine (repeatable: prysm-baseline, "
        "prysm-baseline2, ...)",
    )
    parser.add_argument(
        "--metrics",
        default=",".join(MEASUREMENTS),
        help="comma-separated subset of the measurements to run (default: all: %(default)s)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="processes of the prysmai proxy and of each baseline, pooled in the summary (see above)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="throwaway",
        metavar="URL",
        help="also measure prysm-pg, the proxy storing in PostgreSQL (no URL: a throwaway server)",
    )
    parser.add_argument(
        "--variant",
        metavar="NAME=FLAGS",
        action="append",
        default=[],
        help="also measure this checkout's proxy started with more flags, as target prysm-NAME, in the "
        "same rounds (repeatable), e.g. --variant 'nosearch=--search-index off'",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, store)")
    args = parser.parse_args(argv)
    variants: list[tuple[str, tuple[str, ...]]] = []
    for spec in args.variant:
        vname, sep, flags = spec.partition("=")
        if not sep or not vname.strip():
            parser.error(f"--variant: NAME=FLAGS, e.g. 'nosearch=--search-index off' (got {spec!r})")
        variants.append((vname.strip(), tuple(shlex.split(flags))))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in MEASUREMENTS]
    if unknown or not metrics:
        parser.error(f"--metrics: choose from {', '.join(MEASUREMENTS)} (got {args.metrics!r})")
    if args.copies < 1:
        parser.error(f"--copies: at least 1 (got {args.copies})")

    workdir = Path(tempfile.mkdtemp(prefix="prysmai-bench-"))
    upstream_proc, upstream = start_upstream(workdir)
    targets: list[Target] = [Target("direct", upstream + "/chat/completions", UPSTREAM_KEY, None)]
    db = workdir / "traces.db"
    failed = False
    pg_url, pg_server = postgres_database(args.postgres) if args.postgres is not None else (None, None)
    try:
        for copy in range(1, args.copies + 1):
            suffix = "" if copy == 1 else f"@{copy}"
            if not args.no_prysm:
                targets.append(start_prysm(workdir, upstream, db if copy == 1 else workdir / f"traces{suffix}.db"))
                targets[-1].name += suffix
            for i, source in enumerate(args.baseline):
                name = ("prysm-baseline" if i == 0 else f"prysm-baseline{i + 1}") + suffix
                targets.append(start_prysm(workdir, upstream, workdir / f"{name}.db", name, source))
            for vname, flags in variants:
                name = f"prysm-{vname}{suffix}"
                targets.append(start_prysm(workdir, upstream, workdir / f"{name}.db", name, extra=flags))
            if pg_url is not None:  # copies share the database, each with its own outbox
                outbox = ("--outbox", str(workdir / f"outbox{suffix}.db"))
                targets.append(start_prysm(workdir, upstream, pg_url, "prysm-pg" + suffix, extra=outbox))
        for client in args.floor:
            targets.append(start_floor(workdir, upstream, client))
        if "litellm" in args.peer:
            targets.append(start_litellm(workdir, upstream, args.litellm_version))
        versions: dict[str, Any] = {}
        if "litellm" in args.peer:
            versions["litellm"] = litellm_installed_version()
        emit({"bench": "proxy", "event": "targets", "targets": [t.name for t in targets], "versions": versions})

        # Warm-up: connections, imports on first request, caches.
        for target in targets:
            run_client(target, ["--mode", "seq", "--requests", "50", "--warmup", "0"], 120)
            run_client(target, ["--mode", "stream", "--requests", "5", "--warmup", "0"], 120)

        records: list[dict[str, Any]] = []
        sizes = {
            "seq": ["--requests", str(args.seq_requests)],
            "stream": ["--requests", str(args.stream_requests)],
            "c16": ["--requests", str(args.load_requests), "--max-seconds", str(args.load_seconds)],
            "c64": ["--requests", str(args.load_requests), "--max-seconds", str(args.load_seconds)],
        }
        for rnd in range(args.rounds):
            for metric in metrics:
                margs = MEASUREMENTS[metric]
                shift = rnd % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    served_by = target.pid if target.pid is not None else upstream_proc.pid
                    cpu0 = cpu_seconds(served_by)
                    main0 = main_thread_cpu_seconds(served_by)
                    up0 = cpu_seconds(upstream_proc.pid)
                    record = run_client(target, margs + sizes[metric], args.load_seconds * 3 + 120)
                    cpu = cpu_seconds(served_by) - cpu0
                    main_cpu = main_thread_cpu_seconds(served_by) - main0
                    up = cpu_seconds(upstream_proc.pid) - up0
                    sent = max(int(record.get("sent", 0)), 1)
                    line = {
                        "bench": "proxy",
                        "round": rnd,
                        "metric": metric,
                        "target": target.name,
                        **record,
                        "cpu_us_per_req": round(cpu / sent * 1e6, 1) if target.pid is not None else None,
                        # the event loop's thread (main) and the others (the trace writer)
                        "main_thread_cpu_us_per_req": round(main_cpu / sent * 1e6, 1)
                        if target.pid is not None
                        else None,
                        "upstream_cpu_us_per_req": round(up / sent * 1e6, 1),
                        "loadavg_1m": os.getloadavg()[0],
                    }
                    records.append(line)
                    emit(line)
                    if record.get("errors"):
                        failed = True
        print_paired_summary(pool_copies(records), list(dict.fromkeys(_stem(t.name) for t in targets[1:])))
        for target in targets:
            if not _stem(target.name).startswith("prysm"):
                continue
            fallbacks = writer_fallbacks(target)
            emit({"bench": "proxy", "event": "writer", "target": target.name, "writer_fallbacks": fallbacks})
            if fallbacks:
                print(
                    f"  {target.name}: its writer's idle child starved, {fallbacks} batch(es) built on the proxy's "
                    "thread: from then on it was measured as --trace-writer thread",
                    file=sys.stderr,
                )
        for target in targets:
            pid = target.pid if target.pid is not None else upstream_proc.pid
            current, peak = rss_kib(pid)
            emit(
                {
                    "bench": "proxy",
                    "event": "memory",
                    "target": target.name,
                    "rss_mib": round(current / 1024, 1),
                    "peak_rss_mib": round(peak / 1024, 1),
                }
            )
        pg_targets = [t for t in targets if _stem(t.name) == "prysm-pg"]
        if pg_targets and pg_url is not None:
            for target in pg_targets:  # shipped before it is stopped: a stop ships for 5 s at most
                wait_shipped(target)
                target.stop()
            traces = count_traces(pg_url)
            sent = sum(t.sent for t in pg_targets)
            emit({"bench": "proxy", "event": "traces", "target": "prysm-pg", "sent": sent, "traces": traces})
            failed = failed or traces != sent
        for target in targets:
            if _stem(target.name) == "prysm":
                code = target.stop()
                suffix = target.name[len("prysm") :]
                traces = count_traces(db if not suffix else workdir / f"traces{suffix}.db")
                ok = traces == target.sent
                emit(
                    {
                        "bench": "proxy",
                        "event": "traces",
                        "target": target.name,
                        "sent": target.sent,
                        "traces": traces,
                        "exit_code": code,
                        "ok": ok,
                    }
                )
                failed = failed or not ok
    finally:
        for target in targets:
            target.stop()
            if target.log is not None:
                target.log.close()
        if pg_server is not None:
            pg_server.close()
        upstream_proc.send_signal(signal.SIGINT)
        try:
            upstream_proc.wait(10)
        except subprocess.TimeoutExpired:
            upstream_proc.kill()
        if args.keep or failed:
            print(f"proxy_overhead: logs and store kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    start = time.monotonic()
    code = main()
    print(f"proxy_overhead: done in {time.monotonic() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
