"""The dashboard's views on a PostgreSQL store: a SQLite store of ``dashboard_scale.py`` copied into
a throwaway PostgreSQL (tests/proxy/postgres.py, Debian's PostgreSQL) with ``prysmai store copy``'s
own code, then the views issue 23 sets targets for, timed through the store facade as the read API
and the dashboard call them (``Store.read_sync``: a read-only connection, one snapshot):

* the overview page as an admin reads it (totals, series, five breakdowns): all time, 7 days, and
  24 hours (the range the dashboard opens with);
* a trace list page: newest, filtered by model, sorted by cost, and the third page from its
  cursor (newest first, and by cost; the cursor is read before the timing);
* a text search (``q=``) for a rare word (``quokka``, in one body in 50 000), a common one (in
  every answer) and a word in no body;
* one trace by id;
* ``prysmai stats --db URL`` as a subprocess (wall time, and its CPU time: the process's own work,
  which the machine's load does not stretch), run from compiled bytecode as an installed prysmai.

Median of ``--runs`` after a first run, with the fastest and slowest run and the load average
when the view was timed; one JSON line each, and a Markdown table at the end (medians [range],
the load average before and after, the store's size and the commit measured).

    python bench/dashboard_scale.py --sizes 1000000 --workdir DIR --keep --no-migration --no-proxy
    python bench/pg_dashboard.py --store DIR/store-1000000.db
    python bench/pg_dashboard.py --url postgresql://... --runs 3   # a database filled before
    python bench/pg_dashboard.py --url URL --search-index off --no-search   # pg_generate.py's store

``--url`` times a database already filled (by an earlier ``--store`` run with ``--keep``, or
``prysmai store copy``): it is migrated first (the time is printed), then timed; nothing is copied.
``--until-newest``: the 7-day views end at the newest trace, not now (a store whose newest trace
is hours old, such as a generation stopped early, would otherwise be read over a longer range).
"""

from __future__ import annotations

import argparse
import os
import resource
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
TARGETS = {"overview": 300.0, "list": 100.0, "trace": 50.0, "stats": 500.0, "search": 500.0}
RARE_WORD = "quokka"
COMMON_WORD = "assistant"


def overview(conn: Any, f: TraceFilter) -> Any:
    return queries.overview_page(conn, f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 10)


def cursor_of_page(conn: Any, f: TraceFilter, pages: int, sort: str = "created_at") -> Any:
    """The cursor that gives page ``pages + 1`` (read before the timing: a cursor page alone is timed)."""
    cursor = None
    for _ in range(pages):
        _, cursor = queries.list_traces(conn, f, sort=sort, cursor=cursor, limit=50)
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="a SQLite store filled by dashboard_scale.py, copied into a new server")
    source.add_argument("--url", help="a PostgreSQL store filled before: migrated, then timed")
    parser.add_argument("--keep", action="store_true", help="leave the server of --store running (prints its URL)")
    parser.add_argument("--search-index", choices=("on", "off"), default="on")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--until-newest", action="store_true", help="the 7-day views end at the newest trace, not now")
    parser.add_argument(
        "--hours-before",
        type=float,
        default=0.0,
        help="with --until-newest: end this many hours before the newest trace (a range whose edges fall mid-day)",
    )
    parser.add_argument(
        "--no-search",
        action="store_true",
        help="skip the text searches (a store without the search index: pg_generate.py's, with --search-index off)",
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    emit({"bench": "pg_dashboard", "kind": "machine", **machine_info(), "commit": commit(), "load": load_before})
    server = None if args.url else PostgresServer().start()
    try:
        url = args.url or server.database()  # type: ignore[union-attr]
        engine = PostgresEngine(url, search_index=args.search_index == "on")
        t = time.perf_counter()
        if args.store:
            copied = copy_store(args.store, engine)
            emit(
                {
                    "bench": "pg_dashboard",
                    "copy": copied.traces,
                    "found": copied.traces_present,
                    "scores": copied.scores,
                    "scores_found": copied.scores_present,
                    "s": round(time.perf_counter() - t, 1),
                }
            )
        else:
            engine.open_for_writing().close()  # migrations, and the search index as asked
            emit({"bench": "pg_dashboard", "migrated_s": round(time.perf_counter() - t, 1)})
        if args.keep and server is not None:
            emit({"bench": "pg_dashboard", "kept": server.url(url.rsplit("/", 1)[1], password=False)})
        store = Store.existing(url, read_time_limit=None)
        assert store is not None
        with store:
            total = store.read_sync(lambda conn: conn.execute("SELECT sum(requests) FROM rollup_hour").fetchone()[0])
            newest = store.read_sync(queries.list_traces, TraceFilter(), limit=1)[0][0]
            now = float(newest["created_at"])
            until = now - args.hours_before * 3600 if args.until_newest else None
            now = now if until is None else until
            model = newest["model"]
            size = store.read_sync(
                lambda conn: conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            )
            emit(
                {
                    "bench": "pg_dashboard",
                    "traces": total,
                    "db_mb": round(size / 2**20),
                    "newest_age_s": round(time.time() - now),
                }
            )
            views = {
                "overview page, all time": ("overview", overview, (TraceFilter(),)),
                "overview page, 7 days": ("overview", overview, (TraceFilter(since=now - 7 * DAY, until=until),)),
                "overview page, 24 hours": ("overview", overview, (TraceFilter(since=now - DAY, until=until),)),
                "list, newest": ("list", queries.list_traces, (TraceFilter(),)),
                "list, one model": ("list", queries.list_traces, (TraceFilter(model=model),)),
                "list, by cost": ("list", queries.list_traces, (TraceFilter(),)),
                "list, third page (by cursor)": ("list", queries.list_traces, (TraceFilter(),)),
                "list, by cost, third page (by cursor)": ("list", queries.list_traces, (TraceFilter(),)),
                f"search, a rare word ({RARE_WORD})": ("search", queries.list_traces, (TraceFilter(text=RARE_WORD),)),
                f"search, a common word ({COMMON_WORD})": (
                    "search",
                    queries.list_traces,
                    (TraceFilter(text=COMMON_WORD),),
                ),
                "search, a word in no body": ("search", queries.list_traces, (TraceFilter(text="zyzzyva"),)),
                "trace by id": ("trace", queries.get_trace, (newest["id"],)),
            }
            rows = []
            for name, (kind, fn, fargs) in views.items():
                if kind == "search" and args.no_search:
                    continue
                kwargs: dict[str, Any] = {"sort": "cost"} if "by cost" in name else {}
                if "third page" in name:
                    sort = kwargs.get("sort", "created_at")
                    kwargs["cursor"] = store.read_sync(cursor_of_page, TraceFilter(), 2, sort)
                times = timed(store, args.runs, fn, *fargs, **kwargs)
                rows.append((name, kind, times))
                emit(
                    {
                        "bench": "pg_dashboard",
                        "view": name,
                        "ms": round(median(times), 1),
                        "min_ms": round(min(times), 1),
                        "max_ms": round(max(times), 1),
                        "runs": len(times),
                        "load": os.getloadavg()[0],
                    }
                )
        # As an installed prysmai runs: from compiled bytecode (the first run writes it, where the
        # environment says not to: PYTHONDONTWRITEBYTECODE would compile every module every run).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        times, cpu = [], []
        for _ in range(args.runs + 1):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            command = [*PRYSMAI_CLI, "stats", "--db", url]
            subprocess.run(command, check=True, capture_output=True, timeout=120, env=env)
            times.append((time.perf_counter() - t) * 1000)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
        rows.append(("prysmai stats (wall)", "stats", times[1:]))
        emit(
            {
                "bench": "pg_dashboard",
                "view": "prysmai stats",
                "ms": round(median(times[1:]), 1),
                "min_ms": round(min(times[1:]), 1),
                "max_ms": round(max(times[1:]), 1),
                "cpu_ms": round(median(cpu[1:]), 1),
                "runs": len(times) - 1,
                "load": os.getloadavg()[0],
            }
        )
    finally:
        if server is not None and not args.keep:
            server.close()
    load_after = os.getloadavg()
    print(
        f"\n{total:,} traces; commit {commit()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"median of {args.runs} after a first run [fastest-slowest]",
        file=sys.stderr,
    )
    print(f"\n| {total:,} traces in PostgreSQL | ms | target |\n|---|---:|---:|", file=sys.stderr)
    for name, kind, times in rows:
        ms = median(times)
        verdict = "met" if ms <= TARGETS[kind] else "**missed**"
        spread = f"{min(times):,.1f}-{max(times):,.1f}"
        print(f"| {name} | {ms:,.1f} [{spread}] | {TARGETS[kind]:g}, {verdict} |", file=sys.stderr)
    return 0


def commit() -> str:
    """The commit of the checkout measured (``+`` when it has changes), or ``?``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
