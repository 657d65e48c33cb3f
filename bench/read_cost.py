"""What each of ``dashboard_scale.py``'s issue-26 slicing reads costs on an existing SQLite store, in
work that does not depend on the machine's load: the SQLite virtual-machine instructions of each
read and of its costliest statements (counted by a progress handler, attributed by a trace
callback), beside its thread CPU and wall milliseconds, and a hash of its answer.

Made for paired comparisons of two checkouts on a shared machine, where milliseconds are noisy and
instruction counts are not: run it once with each checkout's code on the same store and the same
clock, and compare. Equal ``sha`` fields mean the two answered exactly alike.

    flock /tmp/notes/bench.lock python bench/read_cost.py --store S --code /path/to/base --clock 1796650000
    flock /tmp/notes/bench.lock python bench/read_cost.py --store S --clock 1796650000 --statements 3

``--code``: the checkout whose ``prysmai`` is read (default: this one); the reads are always those
of this checkout's ``dashboard_scale.slice_cases``. ``--clock`` fixes the wall clock the reads see
(an open range ends at it), so two runs read the same range; the ranges start where
``dashboard_scale.py --store`` starts them (the store's ``.done`` time). One JSON line per read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="an existing SQLite store (read-only)")
    parser.add_argument("--code", default=None, help="the checkout whose prysmai is read (default: this one)")
    parser.add_argument("--clock", type=float, default=None, help="the wall clock the reads see (default: now)")
    parser.add_argument("--match", default="slice: series", help="only the reads whose name holds this text")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after a first (median)")
    parser.add_argument("--statements", type=int, default=0, help="print this many costliest statements per read")
    args = parser.parse_args(argv)
    if args.code:
        # The package is imported from there first: its submodules then come from there too,
        # whatever dashboard_scale puts on sys.path afterwards.
        sys.path.insert(0, str(Path(args.code).resolve()))
    import prysmai

    clock = time.time() if args.clock is None else args.clock
    time.time = lambda: clock  # every read's "now" (the end of an open range)

    from _common import emit, machine_info
    from dashboard_scale import slice_cases

    from prysmai._proxy.store.reader import ReadRunner
    from prysmai._proxy.store.sqlite import SQLiteEngine

    store = Path(args.store)
    marker = store.with_suffix(".done")
    filled = float(marker.read_text()) if marker.exists() else clock
    emit(
        {
            "bench": "read_cost",
            "kind": "machine",
            **machine_info(),
            "prysmai": str(Path(prysmai.__file__).parent),
            "clock": clock,
            "loadavg": os.getloadavg(),
        }
    )
    runner = ReadRunner(SQLiteEngine(str(store)), time_limit=None)
    for _kind, name, fn, fargs, kw in slice_cases(filled):
        if args.match not in name:
            continue
        costs = [runner.run_sync(_measured, fn, fargs, kw) for _ in range(1 + max(1, args.repeat))]
        answer, per_statement, _, first_ms = costs[0]
        timed = costs[1:]
        record = {
            "bench": "read_cost",
            "name": name,
            "m_vm_ops": round(sum(per_statement.values()) / 1e6, 2),
            "cpu_ms": round(sorted(c[2] for c in timed)[len(timed) // 2], 1),
            "ms": round(sorted(c[3] for c in timed)[len(timed) // 2], 1),
            "first_ms": round(first_ms, 1),
            "sha": hashlib.sha256(json.dumps(answer, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "loadavg": os.getloadavg()[0],
        }
        if args.statements:
            costliest = sorted(per_statement.items(), key=lambda kv: -kv[1])[: args.statements]
            record["statements"] = [{"m_vm_ops": round(n / 1e6, 2), "sql": sql[:200]} for sql, n in costliest]
        emit(record)
    return 0


#: Instructions between two calls of the progress handler.
_STEP = 1000


def _measured(
    conn: Any, fn: Any, fargs: tuple[Any, ...], kw: dict[str, Any]
) -> tuple[Any, dict[str, int], float, float]:
    """One read on ``conn``: its answer, its VM instructions by statement, thread CPU ms, wall ms."""
    per_statement: dict[str, int] = {}
    current = [""]

    def tick() -> int:
        per_statement[current[0]] = per_statement.get(current[0], 0) + _STEP
        return 0

    def trace(sql: str) -> None:
        current[0] = sql

    # Replaces the read runner's own time-limit handler for this read (the runner has none here).
    conn.set_progress_handler(tick, _STEP)
    conn.set_trace_callback(trace)
    try:
        wall, cpu = time.perf_counter(), time.thread_time()
        answer = fn(conn, *fargs, **kw)
        cpu, wall = (time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_trace_callback(None)
    return answer, per_statement, cpu, wall


if __name__ == "__main__":
    sys.exit(main())
