"""Export at scale: ``GET /api/v1/traces?format=csv|jsonl`` over a large store, through a real
``prysmai proxy``.

1. **Memory**: one export of every trace while a sampler reads the proxy's RSS (the process and its
   children, /proc) every 0.2 s. Reported: rows, bytes, seconds, rows/s, the RSS before, the
   largest during, and the RSS at 10 %, 50 % and 90 % of the rows: a flat export holds one chunk,
   so the RSS at 90 % is that at 10 % (give or take the allocator), whatever the number of rows.
2. **The request path**: rounds of sequential requests (``client.py --mode seq``) to the fake
   upstream directly and through the proxy, with and without an export running beside them (an
   export thread reading every trace again and again); the order alternates between rounds.
   Reported per round: the proxy's added p50 and p99 (proxy minus direct, same round).

The store is filled once in ``--workdir`` (``--reuse`` keeps it: 1 M traces take ~3 GB and some
minutes) with the rows of ``dashboard_scale.py`` (bodies of 0.2-2 KB, 4 projects, ...). At the end
the proxy is stopped and its store must hold one trace more per request sent. A reused store
holds those traces of earlier runs too: it is kept when it holds at least ``--rows``, and the
export must hold every trace it holds at the start.

``--source DIR`` runs another checkout's proxy (main's, for a paired comparison); ``--proxy-flag``
passes a flag on (``--proxy-flag=--export-priority=low``); ``--no-memory`` skips step 1.

    python bench/export_scale.py --quick                                  # 20 000 traces, 1 round (CI)
    python bench/export_scale.py --rows 1000000 --workdir /tmp/exp --reuse --rounds 4
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import PRYSM_KEY, emit, median, paired_rounds, percentile, rss_kib
from dashboard_scale import make_rows
from proxy_overhead import Target, count_traces, run_client, start_prysm, start_upstream

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

BATCH = 5000


def fill(path: Path, n: int) -> float:
    """``n`` traces in a new store at ``path`` (the rollups folded in, as the writer does); seconds."""
    start = time.perf_counter()
    now = time.time() - 60
    with SQLiteEngine(str(path)).open_for_writing() as conn:
        batch: list[tuple[Any, ...]] = []
        for row in make_rows(n, now):
            row["project"] = "default"  # (the project of the proxy's --key: every trace is exported)
            batch.append(tuple(row.get(c) for c in COLUMNS))
            if len(batch) == BATCH:
                insert_rows(conn, batch)
                batch = []
        insert_rows(conn, batch)
    return time.perf_counter() - start


def stored(path: Path) -> int:
    with sqlite3.connect(str(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM traces").fetchone()[0])


def export_once(api: str, query: str, progress: list[int] | None = None) -> tuple[int, int]:
    """One export read to its end in 64 KiB reads: (lines, bytes). ``progress[0]``: lines so far."""
    url = urlsplit(api)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    try:
        conn.request("GET", f"{url.path}/traces?{query}", headers={"Authorization": f"Bearer {PRYSM_KEY}"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"export answered {resp.status}: {resp.read()[:500]!r}")
        lines = size = 0
        while True:
            part = resp.read(65536)
            if not part:
                break
            lines += part.count(b"\n")
            size += len(part)
            if progress is not None:
                progress[0] = lines
        return lines, size
    finally:
        conn.close()


def measure_memory(prysm: Target, api: str, query: str, rows: int) -> dict[str, Any]:
    assert prysm.pid is not None
    samples: list[tuple[int, int]] = []  # (lines so far, RSS KiB)
    progress = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((progress[0], rss_kib(prysm.pid or 0)[0]))
            done.wait(0.2)

    before = rss_kib(prysm.pid)[0]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    lines, size = export_once(api, query, progress)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    header = 1 if "format=csv" in query else 0
    if lines - header != rows:
        raise RuntimeError(f"the export held {lines - header} rows of {rows}")

    def at(fraction: float) -> int | None:
        after = [rss for seen, rss in samples if seen >= fraction * rows]
        return after[0] if after else None

    return {
        "bench": "export",
        "kind": "memory",
        "query": query,
        "rows": rows,
        "mb": round(size / 2**20, 1),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "rss_before_mib": round(before / 1024, 1),
        "rss_max_mib": round(max(rss for _, rss in samples) / 1024, 1) if samples else None,
        "rss_at_10pct_mib": _mib(at(0.1)),
        "rss_at_50pct_mib": _mib(at(0.5)),
        "rss_at_90pct_mib": _mib(at(0.9)),
        "samples": len(samples),
    }


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def keep_exporting(api: str, query: str, stop: threading.Event) -> None:
    while not stop.is_set():
        export_once(api, query)


def measure_request_path(
    prysm: Target, direct: Target, api: str, query: str, rounds: int, requests: int
) -> list[dict[str, Any]]:
    seq = ["--mode", "seq", "--requests", str(requests), "--warmup", "50"]
    return paired_rounds(
        {"bench": "export", "kind": "request_path"},
        "exporting",
        rounds,
        lambda stop: keep_exporting(api, query, stop),
        lambda target: run_client(target, seq, timeout=600),
        direct,
        prysm,
        settle_s=1.0,  # (the export under way)
        stop_s=3600,  # (an export of every trace ends before the thread does)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An export of a large store: the proxy's RSS and its request path.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, help="where the store is kept (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="keep a store of --rows traces found in --workdir")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("--fields", default="", help="fields= of the export ('all': with the bodies)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per measurement")
    parser.add_argument("--quick", action="store_true", help="20 000 traces, 1 round of 300 requests")
    parser.add_argument("--source", help="run the proxy of this checkout (default: the installed prysmai)")
    parser.add_argument("--proxy-flag", action="append", default=[], help="a flag for the proxy (repeatable)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.requests = 20_000, 1, 300
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="prysm-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / f"export-{args.rows}.db"
    # (A reused store also holds the traces of the requests earlier runs sent through the proxy.)
    if not (args.reuse and db.exists() and stored(db) >= args.rows):
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        emit({"bench": "export", "kind": "fill", "rows": args.rows, "seconds": round(fill(db, args.rows), 1)})
    rows = stored(db)
    query = f"format={args.format}&since=all" + (f"&fields={args.fields}" if args.fields else "")
    upstream, upstream_url = start_upstream(workdir)
    direct = Target("direct", upstream_url + "/chat/completions", "sk-bench", None)
    prysm = start_prysm(workdir, upstream_url, db, source=args.source, extra=tuple(args.proxy_flag))
    api = prysm.url.replace("/chat/completions", "")
    try:
        if not args.no_memory:
            emit(measure_memory(prysm, api, query, rows))
        records = measure_request_path(prysm, direct, api, query, args.rounds, args.requests)
    finally:
        prysm.stop()
        upstream.terminate()
        upstream.wait(10)
    for exporting in (False, True):
        p99s = [r["added_p99_ms"] for r in records if r["exporting"] is exporting]
        loads = [r["loadavg_1m"] for r in records if r["exporting"] is exporting]
        print(
            f"added p99 {'with' if exporting else 'without'} an export: median {median(p99s):.3f} ms "
            f"[{percentile(p99s, 25):.3f}-{percentile(p99s, 75):.3f}] over {len(p99s)} round(s), "
            f"load average {min(loads):.2f}-{max(loads):.2f}",
            file=sys.stderr,
        )
    stored_now = count_traces(db)
    if stored_now != rows + prysm.sent:
        print(f"traces lost: {stored_now} stored, {rows} + {prysm.sent} expected", file=sys.stderr)
        return 1
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
