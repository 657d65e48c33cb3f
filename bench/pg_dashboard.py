"""The dashboard's views on a PostgreSQL store: a SQLite store of ``dashboard_scale.py`` copied into
a throwaway PostgreSQL (tests/proxy/postgres.py, Debian's PostgreSQL) with ``prysmai store copy``'s
own code, then the views issue 23 sets targets for, timed through the store facade as the read API
and the dashboard call them (``Store.read_sync``: a read-only connection, one snapshot):

* the overview page as an admin reads it (totals, series, five breakdowns): all time and 7 days;
* a trace list page: newest, filtered by model, sorted by cost, and the third page by cursor;
* one trace by id;
* ``prysmai stats --db URL`` as a subprocess (wall time).

Median of ``--runs`` after a first run; one JSON line each, and a Markdown table at the end.

    python bench/dashboard_scale.py --sizes 1000000 --workdir DIR --keep --no-migration --no-proxy
    python bench/pg_dashboard.py --store DIR/store-1000000.db
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from _common import PRYSMAI_CLI, REPO_DIR, emit, machine_info, median

sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(REPO_DIR / "tests" / "proxy"))

from postgres import PostgresServer

from prysmai._proxy.store import Store, TraceFilter, queries
from prysmai._proxy.store.copy import copy_store
from prysmai._proxy.store.postgres.engine import PostgresEngine

DAY = 86400.0
#: Issue 23's targets, ms.
TARGETS = {"overview": 300.0, "list": 100.0, "trace": 50.0, "stats": 500.0}


def overview(conn: Any, f: TraceFilter) -> Any:
    return queries.overview_page(conn, f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 10)


def third_page(conn: Any, f: TraceFilter) -> Any:
    cursor = None
    for _ in range(3):
        _, cursor = queries.list_traces(conn, f, cursor=cursor, limit=50)
    return cursor


def timed(store: Store, runs: int, fn: Any, *args: Any, **kwargs: Any) -> list[float]:
    store.read_sync(fn, *args, **kwargs)  # a first run: caches
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        store.read_sync(fn, *args, **kwargs)
        times.append((time.perf_counter() - t) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a SQLite store filled by dashboard_scale.py")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    emit({"bench": "pg_dashboard", "kind": "machine", **machine_info()})
    server = PostgresServer().start()
    try:
        url = server.database()
        t = time.perf_counter()
        total, found = copy_store(args.store, PostgresEngine(url))
        emit({"bench": "pg_dashboard", "copy": total, "found": found, "s": round(time.perf_counter() - t, 1)})
        store = Store.existing(url, read_time_limit=None)
        assert store is not None
        with store:
            newest = store.read_sync(queries.list_traces, TraceFilter(), limit=1)[0][0]
            now = float(newest["created_at"])
            model = newest["model"]
            views = {
                "overview page, all time": ("overview", overview, (TraceFilter(),)),
                "overview page, 7 days": ("overview", overview, (TraceFilter(since=now - 7 * DAY),)),
                "list, newest": ("list", queries.list_traces, (TraceFilter(),)),
                "list, one model": ("list", queries.list_traces, (TraceFilter(model=model),)),
                "list, by cost": ("list", queries.list_traces, (TraceFilter(),)),
                "list, third page": ("list", third_page, (TraceFilter(),)),
                "trace by id": ("trace", queries.get_trace, (newest["id"],)),
            }
            rows = []
            for name, (kind, fn, fargs) in views.items():
                kwargs = {"sort": "cost"} if name == "list, by cost" else {}
                times = timed(store, args.runs, fn, *fargs, **kwargs)
                rows.append((name, kind, median(times)))
                emit(
                    {
                        "bench": "pg_dashboard",
                        "view": name,
                        "ms": round(median(times), 1),
                        "max_ms": round(max(times), 1),
                    }
                )
        times = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            subprocess.run([*PRYSMAI_CLI, "stats", "--db", url], check=True, capture_output=True, timeout=120)
            times.append((time.perf_counter() - t) * 1000)
        rows.append(("prysmai stats (wall)", "stats", median(times[1:])))
        emit({"bench": "pg_dashboard", "view": "prysmai stats", "ms": round(median(times[1:]), 1)})
    finally:
        server.close()
    print(f"\n| {total:,} traces in PostgreSQL | ms | target |\n|---|---:|---:|", file=sys.stderr)
    for name, kind, ms in rows:
        verdict = "met" if ms <= TARGETS[kind] else "**missed**"
        print(f"| {name} | {ms:,.1f} | {TARGETS[kind]:g}, {verdict} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
