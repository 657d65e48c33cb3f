"""The overview page on a PostgreSQL store, statement by statement: each statement the query layer
runs for the page (``queries.overview_page``, as the dashboard reads it: totals, series, the five
breakdowns), timed from Python (the statement, its transfer and the rows' loading), and on request
its plan (``EXPLAIN (ANALYZE, BUFFERS)``, server time).

Each run reads the page in one read transaction through a connection that times every statement
(its rows fetched at once); a statement's figure is the fastest of ``--runs`` (the load of a shared
machine only adds). Statements are matched across runs by their position in the page (the page runs
the same statements in the same order while the store's newest hour does not move).

    python bench/pg_statements.py --url postgresql://... --days 7 --runs 5
    python bench/pg_statements.py --url URL --days 7 --explain 5     # the plans of the 5 slowest
    python bench/pg_statements.py --url URL --days 0                 # all time
    python bench/pg_statements.py --url URL --until-newest           # a store whose newest trace is old
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from _common import REPO_DIR, emit, machine_info, median

sys.path.insert(0, str(REPO_DIR))

from prysmai._proxy.store import TraceFilter, queries
from prysmai._proxy.store.engine import register_dialect
from prysmai._proxy.store.postgres.engine import PostgresConnection, PostgresDialect, PostgresEngine, _qmark

DAY = 86400.0


class _Rows:
    """A cursor's rows, fetched already (sqlite3's shape, as the query layer reads it)."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Any:
        return iter(self._rows)


class TimingConnection(PostgresConnection):
    """A read connection that records each statement, its parameters, its rows, its time and the
    server's CPU time for it (``nan`` when the server runs elsewhere)."""

    __slots__ = ("log",)

    def __init__(self, raw: Any) -> None:
        super().__init__(raw)
        self.log: list[tuple[str, list[Any], int, float, float]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        params = list(parameters)
        server = backend_cpu_ms(self)
        t = time.perf_counter()
        rows = self.raw.execute(_qmark(sql), params).fetchall()
        ms = (time.perf_counter() - t) * 1000
        after = backend_cpu_ms(self)
        cpu = after - server if after is not None and server is not None else math.nan
        self.log.append((sql, params, len(rows), ms, cpu))
        return _Rows(rows)


register_dialect(TimingConnection, PostgresDialect())


def page(conn: Any, f: TraceFilter) -> Any:
    return queries.overview_page(conn, f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 10)


def backend_cpu_ms(conn: Any) -> float | None:
    """The CPU time the server's process for ``conn`` has used (ms), when it runs on this machine:
    with the client's own, a page's cost that a loaded machine does not stretch (wall time it does)."""
    try:
        with open(f"/proc/{conn.raw.info.backend_pid}/schedstat") as fh:
            return int(fh.read().split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def one_line(sql: str, width: int = 150) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a PostgreSQL store (pg_generate.py's, say)")
    parser.add_argument(
        "--days", type=float, default=7.0, help="the page's range, back from the newest trace (0: all time)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--until-newest", action="store_true", help="the range ends at the newest trace, not now")
    parser.add_argument(
        "--hours-before",
        type=float,
        default=0.0,
        help="with --until-newest: end this many hours before the newest trace (a range whose edges fall mid-day)",
    )
    parser.add_argument("--explain", type=int, default=0, help="print the plans of this many slowest statements")
    args = parser.parse_args(argv)
    emit({"bench": "pg_statements", "kind": "machine", **machine_info(), "load": os.getloadavg()})
    engine = PostgresEngine(args.url)
    conn = TimingConnection(engine.connect(read_only=True))
    with engine.time_limited(conn, None):
        newest = float(conn.execute("SELECT max(created_at) FROM traces").fetchone()[0])
    until = newest - args.hours_before * 3600 if args.until_newest else None
    newest = newest if until is None else until
    f = TraceFilter(since=newest - args.days * DAY, until=until) if args.days else TraceFilter()
    runs: list[list[tuple[str, list[Any], int, float, float]]] = []
    pages: list[float] = []
    client_cpu: list[float] = []
    server_cpu: list[float] = []
    for i in range(args.runs + 1):
        conn.log = []
        server = backend_cpu_ms(conn)
        started_cpu = time.process_time()
        t = time.perf_counter()
        with engine.time_limited(conn, None):
            page(conn, f)
        if i:  # the first run warms the caches
            pages.append((time.perf_counter() - t) * 1000)
            client_cpu.append((time.process_time() - started_cpu) * 1000)
            after = backend_cpu_ms(conn)
            if server is not None and after is not None:
                server_cpu.append(after - server)
            runs.append(conn.log)
    shapes = {tuple(s for s, *_ in log) for log in runs}
    if len(shapes) != 1:
        print("the runs read different statements (the newest hour moved?): figures by position", file=sys.stderr)
    first = runs[0]
    best = [min(log[i][3] for log in runs if i < len(log)) for i in range(len(first))]
    cpu = [min(log[i][4] for log in runs if i < len(log)) for i in range(len(first))]
    for i, (sql, _params, n, _ms, _cpu) in enumerate(first):
        emit(
            {
                "bench": "pg_statements",
                "i": i,
                "ms": round(best[i], 2),
                "server_cpu_ms": round(cpu[i], 2),
                "rows": n,
                "sql": one_line(sql, 400),
            }
        )
    emit(
        {
            "bench": "pg_statements",
            "days": args.days,
            "statements": len(first),
            "statements_ms": round(sum(best), 1),
            "statements_server_cpu_ms": round(sum(cpu), 1),
            "page_ms_min": round(min(pages), 1),
            "page_ms_median": round(median(pages), 1),
            "page_ms_max": round(max(pages), 1),
            "client_cpu_ms_median": round(median(client_cpu), 1),
            "server_cpu_ms_median": round(median(server_cpu), 1) if server_cpu else None,
            "load": os.getloadavg(),
        }
    )
    order = sorted(range(len(first)), key=lambda i: -best[i])
    print(
        f"\n| # | ms (fastest of {args.runs}) | server CPU ms (least) | rows | statement |\n|---:|---:|---:|---:|---|",
        file=sys.stderr,
    )
    for i in order:
        sql = one_line(first[i][0], 110)
        print(f"| {i} | {best[i]:.1f} | {cpu[i]:.1f} | {first[i][2]} | `{sql}` |", file=sys.stderr)
    server = median(server_cpu) if server_cpu else math.nan
    print(
        f"\n{len(first)} statements, {sum(best):.1f} ms (server CPU {sum(cpu):.1f} ms); "
        f"page {min(pages):.0f}-{max(pages):.0f} ms; CPU a page (medians): client {median(client_cpu):.0f} ms, "
        f"server {server:.0f} ms",
        file=sys.stderr,
    )
    for i in order[: args.explain]:
        sql, params = first[i][0], first[i][1]
        with engine.time_limited(conn, None):
            plan = conn.raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + _qmark(sql), params).fetchall()
        print(f"\n-- statement {i} ({best[i]:.1f} ms)\n{sql}\n-- {params}", file=sys.stderr)
        print("\n".join(row[0] for row in plan), file=sys.stderr)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
