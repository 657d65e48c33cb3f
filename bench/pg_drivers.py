"""psycopg 3 against asyncpg for the shipper's work: batches of trace rows into PostgreSQL.

The outbox's shipper (``store/outbox.py``) sends batches of up to 1 000 rows; each is one
transaction: ``COPY`` into a staging table, ``INSERT … ON CONFLICT DO NOTHING`` into the day
partitions, and the rollup folds (``store/postgres/engine.py``). The server's share of that work
is the same whichever driver sends it; what a driver changes is the client's: encoding the rows
for ``COPY`` and the round trips, on a thread of the proxy whose CPU the event loop shares.

For each driver, in its own database on one throwaway server (tests/proxy/postgres.py, Debian's
PostgreSQL), rounds interleaved (A B, B A, ...): ``--batches`` batches of ``--rows`` rows, and per
round the rows per second of wall time and of the client process's CPU time. psycopg goes through
``PostgresEngine.insert_rows`` itself; asyncpg runs the same statements, with
``copy_records_to_table`` for the ``COPY``, in an event loop of its own (as a shipper thread
would have to run one).

    python bench/pg_drivers.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

from _common import REPO_DIR, emit, machine_info, median

sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(REPO_DIR / "tests" / "proxy"))

from postgres import PostgresServer

from prysmai._proxy.store.postgres import engine as pg
from prysmai._proxy.store.postgres import rollups
from prysmai._proxy.store.rows import COLUMNS


def make_rows(n: int, seed: int, start: float) -> list[tuple[Any, ...]]:
    """``n`` trace rows of the shape the proxy stores (bodies of 0.3-3 KB) over one day."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {
            "id": f"{seed:08x}{i:024x}",
            "created_at": start + rng.random() * 86400,
            "method": "POST",
            "endpoint": "chat/completions",
            "model": rng.choice(["gpt-4o-mini", "gpt-4.1", "o3"]),
            "stream": rng.randint(0, 1),
            "status": rng.choice(["success"] * 9 + ["error"]),
            "http_status": 200,
            "latency_ms": rng.lognormvariate(6, 1),
            "ttft_ms": rng.lognormvariate(5, 1),
            "prompt_tokens": rng.randint(10, 900),
            "completion_tokens": rng.randint(10, 900),
            "total_tokens": rng.randint(20, 1800),
            "cost_usd": rng.random() / 1000,
            "request_body": json.dumps({"messages": [{"role": "user", "content": "x" * rng.randint(300, 3000)}]}),
            "response_body": json.dumps({"choices": [{"message": {"content": "y" * rng.randint(300, 3000)}}]}),
            "user_id": f"user-{rng.randint(1, 500)}",
            "session_id": f"s-{rng.randint(1, 5000)}",
            "metadata": json.dumps({"env": "prod"}),
            "notes": "[]",
            "key_id": "key_aaaaaaaaaaaa",
            "project": "default",
            "provider": "openai",
        }
        rows.append(tuple(row.get(c) for c in COLUMNS))
    return rows


def ship_psycopg(url: str, batches: list[list[tuple[Any, ...]]]) -> None:
    engine = pg.PostgresEngine(url)
    conn = engine.open_for_writing()
    try:
        for batch in batches:
            engine.insert_rows(conn, batch)
    finally:
        conn.close()


def ship_asyncpg(url: str, batches: list[list[tuple[Any, ...]]]) -> None:
    import asyncpg

    pg.PostgresEngine(url).open_for_writing().close()  # the schema, as the proxy's start-up makes it
    engine = pg.PostgresEngine(url)

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for batch in batches:
                prepared = [pg._prepare(row)[0] for row in batch]
                days = {int(row[pg._CREATED] // pg.DAY) for row in prepared}
                async with conn.transaction():
                    for day in sorted(days - engine._days):
                        lo, hi = day * pg.DAY, (day + 1) * pg.DAY
                        for table in ("trace_rows", "trace_bodies"):
                            await conn.execute(
                                f"CREATE TABLE IF NOT EXISTS {table}_d{day} PARTITION OF {table} "
                                f"FOR VALUES FROM ({lo}) TO ({hi})"
                            )
                        engine._days.add(day)
                    await conn.execute(pg._STAGING)
                    await conn.copy_records_to_table("staging", records=prepared, columns=list(COLUMNS))
                    await conn.execute(pg._INSERT_NEW)
                    await conn.execute(pg._INSERT_BODIES)
                    for statement in rollups.FOLD:
                        await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


DRIVERS = {"psycopg": ship_psycopg, "asyncpg": ship_asyncpg}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches per round and driver")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch (the shipper's batch)")
    args = parser.parse_args(argv)
    emit({"bench": "pg_drivers", "kind": "machine", **machine_info()})
    server = PostgresServer().start()
    results: dict[str, dict[str, list[float]]] = {d: {"wall": [], "cpu": []} for d in DRIVERS}
    try:
        urls = {name: server.database() for name in DRIVERS}
        names = list(DRIVERS)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                # A day of its own per round and driver: new partitions, no conflicts with earlier rows.
                start = 1_700_006_400.0 + (r * len(names) + names.index(name)) * 86400
                batches = [make_rows(args.rows, seed=r * 1000 + b + 1, start=start) for b in range(args.batches)]
                n = args.rows * args.batches
                wall, cpu = time.perf_counter(), time.process_time()
                DRIVERS[name](urls[name], batches)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                results[name]["wall"].append(n / wall)
                results[name]["cpu"].append(n / cpu)
                emit(
                    {
                        "bench": "pg_drivers",
                        "round": r,
                        "driver": name,
                        "rows": n,
                        "rows_per_s": round(n / wall),
                        "rows_per_cpu_s": round(n / cpu),
                    }
                )
    finally:
        server.close()
    for name, series in results.items():
        emit(
            {
                "bench": "pg_drivers",
                "summary": name,
                "median_rows_per_s": round(median(series["wall"])),
                "median_rows_per_cpu_s": round(median(series["cpu"])),
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
