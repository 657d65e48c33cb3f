"""Synthetic traces written straight into a PostgreSQL store: the store of 10 M traces the dashboard's
targets are set for (issue 23), which ``store copy`` (a SQLite store first, then the engine's
batch insert, then the search index) is too slow to fill on a small machine.

The traces have the shape of ``dashboard_scale.py``'s (its distributions, drawn faster): 23 days,
6 models (one unpriced), 3 endpoints, 2 000 users (Zipf-like, 10 % anonymous), sessions of
22-hour windows per user, 4 statuses, 40 % streamed with TTFT, metadata, bodies of 0.2-2 KB (one in
50 000 holding ``quokka``) with their previews, 4 projects; one in 50 a limit's 429 (``error_code``)
and one in 10 scored (thumbs on each, a quality number on 60 %, a tone on 20 %).

How they are written: the store's schema by its own migrations (without the search index: see
``--search-index``), then day by day, each day's rows and bodies ``COPY``-ed into tables of their
own that are then attached as the day's partitions (``trace_rows_d<day>``, the names the engine
uses; attaching builds the partition's indexes in one pass), and the day folded into the rollups by
the store's own statements (``postgres.rollups.FOLD``, which read ``new_rows``: here a view of the
day's partition). The scores are copied in and their rollups built by the store's migration
statements (``scores.rollup_fill_sql``, the rollups' ``SCORED_FILL``). Then ``ANALYZE``.

``--check`` (for a small ``--traces``, 100 000 say) also writes the same traces into a second
database the way the proxy's writer does (``PostgresEngine.insert_rows`` in batches of 1 000, each
folded in its transaction; each score through ``scores.add``), and compares the two: every rollup
table row by row (sums of costs within 1e-9), and the dashboard's views (the overview page all time
and over 7 days, ``stats``, list pages, the score averages) answer alike. Exit status 1 on a
difference.

    python bench/pg_generate.py --traces 10000000 --url postgresql://...   # a database of yours
    python bench/pg_generate.py --traces 10000000 --keep                   # a throwaway server
    python bench/pg_generate.py --traces 100000 --check
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

from _common import REPO_DIR, WORDS, emit, machine_info, postgres_database

sys.path.insert(0, str(REPO_DIR))

from dashboard_scale import (
    MODELS,
    PROJECTS,
    RARE_EVERY,
    RARE_WORD,
    REFUSED_EVERY,
    SCORED_EVERY,
    SESSION_HOURS,
    SPAN_DAYS,
    USERS,
    refused_row,
)

from prysmai._proxy.store import TraceFilter, budgets, previews, queries, scores
from prysmai._proxy.store.postgres import rollups as pg_rollups
from prysmai._proxy.store.postgres.engine import PostgresConnection, PostgresEngine
from prysmai._proxy.store.postgres.rollups import period_sql
from prysmai._proxy.store.rollups import KEY_PERIOD
from prysmai._proxy.store.rows import COLUMNS

DAY = 86400
BODY_COLUMNS = ("id", "created_at", "request_body", "response_body")
ROW_COLUMNS = tuple(c for c in COLUMNS if c not in ("request_body", "response_body"))
SCORE_COLUMNS = (
    "score_id",
    "trace_id",
    "trace_time",
    "score_project",
    "trace_model",
    "trace_user",
    "name",
    "kind",
    "num",
    "label",
    "comment",
    "scored_at",
    "author_key",
    "source",
)
AUTHOR = "key_bench0000001"
THUMBS_UP = scores.NewScore.parse({"name": "thumbs", "value": True})
THUMBS_DOWN = scores.NewScore.parse({"name": "thumbs", "value": False, "comment": "wrong answer"})
TONES = [scores.NewScore.parse({"name": "tone", "value": t}) for t in ("friendly", "curt", "verbose")]


# -- the traces ---------------------------------------------------------------------------------------
def traces(n: int, now: float, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``n`` traces oldest first over the ``SPAN_DAYS`` days before ``now`` (``dashboard_scale.py``'s
    shape; module docstring), each with its previews, and after every ``REFUSED_EVERY``-th one a
    limit's refusal a moment later."""
    rng = random.Random(seed)
    models = [m for m, _, _ in MODELS]
    model_cum = list(itertools.accumulate(w for _, w, _ in MODELS))
    prices = {m: p for m, _, p in MODELS}
    users = [f"user-{i:04d}" for i in range(USERS)]
    user_cum = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(USERS)))
    projects = [p for p, _ in PROJECTS]
    project_cum = list(itertools.accumulate(w for _, w in PROJECTS))
    keys = ["key_a1b2c3d4e5f6", "key_0f1e2d3c4b5a", "key_9a8b7c6d5e4f"]
    envs = ["prod"] * 8 + ["staging", "dev"]
    endpoints = ["chat/completions"] * 9 + ["responses"]
    start = now - SPAN_DAYS * DAY
    step = SPAN_DAYS * DAY / n
    for i in range(n):
        t = start + i * step + rng.random() * step
        model = rng.choices(models, cum_weights=model_cum)[0]
        endpoint = "embeddings" if model.startswith("text-embedding") else rng.choice(endpoints)
        stream = endpoint != "embeddings" and rng.random() < 0.4
        r = rng.random()
        status = "success" if r < 0.96 else "error" if r < 0.99 else "timeout" if r < 0.995 else "cancelled"
        latency = rng.lognormvariate(6.2, 0.9) if status != "timeout" else 600_000.0
        prompt = rng.randint(20, 3000)
        completion = 0 if endpoint == "embeddings" or status != "success" else rng.randint(5, 800)
        user = None if rng.random() < 0.1 else rng.choices(users, cum_weights=user_cum)[0]
        words = " ".join(rng.choices(WORDS, k=rng.randint(30, 300)))
        if i % RARE_EVERY == RARE_EVERY // 2:
            words += " " + RARE_WORD
        price = prices[model]
        ok = status == "success"
        row = {
            "id": f"{rng.getrandbits(128):032x}",
            "created_at": t,
            "method": "POST",
            "endpoint": endpoint,
            "model": model,
            "stream": int(stream),
            "status": status,
            "http_status": {"success": 200, "error": 400, "timeout": 504}.get(status, 499),
            "latency_ms": latency,
            "ttft_ms": latency * rng.uniform(0.05, 0.5) if stream and ok else None,
            "prompt_tokens": prompt if ok else None,
            "completion_tokens": completion if ok else None,
            "total_tokens": prompt + completion if ok else None,
            "cost_usd": None if price is None or not ok else (prompt + completion) / 1000 * price,
            "request_body": json.dumps({"model": model, "messages": [{"role": "user", "content": words}]}),
            "response_body": json.dumps({"choices": [{"message": {"role": "assistant", "content": words[::-1]}}]})
            if ok
            else None,
            "error": None if ok else f"upstream said {status}",
            "user_id": user,
            "session_id": None if user is None else f"sess-{user}-{int(t // (SESSION_HOURS * 3600))}",
            "metadata": json.dumps(
                {"env": rng.choice(envs), "feature": f"f{rng.randint(1, 20)}", "tier": rng.randint(1, 3)}
            ),
            "notes": None,
            "response_model": model,
            "provider_request_id": f"req_{rng.getrandbits(64):016x}",
            "key_id": rng.choice(keys),
            "project": rng.choices(projects, cum_weights=project_cum)[0],
            "provider": "local" if price is None else "openai",
            "error_code": None,
        }
        yield previews.fill(row)
        if i % REFUSED_EVERY == REFUSED_EVERY - 1:
            trace_id = rng.getrandbits(128)
            at = min(t + step * 0.001, start + (i + 1) * step)
            code = rng.choice(budgets.REFUSAL_CODES)
            project = rng.choices(projects, cum_weights=project_cum)[0]
            yield {**dict.fromkeys(COLUMNS), **refused_row(trace_id, at, code, project)}


def score_set(rng: random.Random) -> list[scores.NewScore]:
    """The scores of one scored trace (``dashboard_scale.fill_scores``' mix)."""
    out = [THUMBS_UP if rng.random() < 0.7 else THUMBS_DOWN]
    if rng.random() < 0.6:
        out.append(scores.NewScore.parse({"name": "quality", "value": round(rng.random(), 3)}))
    if rng.random() < 0.2:
        out.append(rng.choice(TONES))
    return out


def scored(rows: Iterator[dict[str, Any]], seed: int) -> Iterator[tuple[dict[str, Any], list[scores.NewScore]]]:
    """Each row with its scores: every ``SCORED_EVERY``-th trace (not a refusal) gets some."""
    rng = random.Random(seed + 26)
    count = 0
    for row in rows:
        given: list[scores.NewScore] = []
        if row["error_code"] is None:
            count += 1
            if count % SCORED_EVERY == 0:
                given = score_set(rng)
        yield row, given


# -- the fast path: COPY into day partitions, then the store's folds ---------------------------------
class DayLoader:
    """Writes a day's traces into tables of their own, attaches them as that day's partitions and
    folds the day into the rollups (module docstring). Rows and bodies stream on two connections."""

    def __init__(self, engine: PostgresEngine) -> None:
        self.rows_conn = engine.connect()
        self.bodies_conn = engine.connect()
        self.day: int | None = None
        self.stack = contextlib.ExitStack()
        self.rows_copy: Any = None
        self.bodies_copy: Any = None
        self.scores: list[tuple[Any, ...]] = []
        self.days = 0

    def add(self, row: dict[str, Any], given: list[scores.NewScore]) -> None:
        day = math.floor(row["created_at"] / DAY)
        if day != self.day:
            self.finish()
            self._begin(day)
        self.rows_copy.write_row([row[c] for c in ROW_COLUMNS])
        self.bodies_copy.write_row([row[c] for c in BODY_COLUMNS])
        for score in given:
            self.scores.append(
                (
                    scores.new_score_id(),
                    row["id"],
                    row["created_at"],
                    row["project"],
                    row["model"],
                    row["user_id"],
                    score.name,
                    score.kind,
                    score.num,
                    score.label,
                    score.comment,
                    row["created_at"] + 60,
                    AUTHOR,
                    "api",
                )
            )

    def _begin(self, day: int) -> None:
        self.day = day
        for table, conn in (("trace_rows", self.rows_conn), ("trace_bodies", self.bodies_conn)):
            conn.execute(f"CREATE TABLE {table}_d{day} (LIKE {table} INCLUDING DEFAULTS)")
        rows_sql = f"COPY trace_rows_d{day} ({', '.join(ROW_COLUMNS)}) FROM STDIN"
        bodies_sql = f"COPY trace_bodies_d{day} ({', '.join(BODY_COLUMNS)}) FROM STDIN"
        self.rows_copy = self.stack.enter_context(self.rows_conn.cursor().copy(rows_sql))
        self.bodies_copy = self.stack.enter_context(self.bodies_conn.cursor().copy(bodies_sql))

    def finish(self) -> None:
        """End the current day: its partitions attached, its rows folded, its scores copied."""
        if self.day is None:
            return
        self.stack.close()
        day, lo, hi = self.day, self.day * DAY, (self.day + 1) * DAY
        conn = self.rows_conn
        with conn.transaction():
            for table in ("trace_rows", "trace_bodies"):
                conn.execute(f"ALTER TABLE {table} ATTACH PARTITION {table}_d{day} FOR VALUES FROM ({lo}) TO ({hi})")
            # The store's own fold of a batch's new rows, over the day's rows.
            conn.execute(f"CREATE TEMPORARY VIEW new_rows AS SELECT * FROM trace_rows_d{day}")
            for statement in pg_rollups.FOLD:
                conn.execute(statement)
            conn.execute("DROP VIEW new_rows")
            with conn.cursor().copy(f"COPY scores ({', '.join(SCORE_COLUMNS)}) FROM STDIN") as copy:
                for score in self.scores:
                    copy.write_row(score)
        self.scores = []
        self.day = None
        self.days += 1

    def close(self) -> None:
        self.stack.close()
        self.rows_conn.close()
        self.bodies_conn.close()


def generate(url: str, n: int, now: float, seed: int = 1) -> dict[str, Any]:
    """Fill the empty store at ``url`` with ``n`` traces (and their refusals and scores), the
    rollups built; returns what was written and how long it took."""
    engine = PostgresEngine(url, search_index=False)
    with contextlib.closing(engine.open_for_writing()) as conn:
        if conn.execute("SELECT 1 FROM trace_rows LIMIT 1").fetchone() is not None:
            raise SystemExit(f"{engine.location} holds traces already: generate into an empty database")
    started = time.perf_counter()
    loader = DayLoader(engine)
    written = 0
    try:
        for row, given in scored(traces(n, now, seed), seed):
            loader.add(row, given)
            written += 1
            if written % 500_000 == 0:
                emit({"bench": "pg_generate", "written": written, "s": round(time.perf_counter() - started, 1)})
        loader.finish()
    finally:
        loader.close()
    loaded = time.perf_counter() - started
    with contextlib.closing(engine.connect()) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO score_names (project, name, kind) SELECT DISTINCT score_project, name, kind FROM scores"
            )
            for statement in scores.rollup_fill_sql(period_sql("trace_time", KEY_PERIOD)):
                conn.execute(statement)
            for statement in pg_rollups.SCORED_FILL:  # the scored traces' totals (version 9)
                conn.execute(statement)
        conn.execute("ANALYZE")
        count = conn.execute("SELECT count(*) FROM trace_rows").fetchone()[0]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {
        "traces": int(count),
        "days": loader.days,
        "load_s": round(loaded, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "db_mb": round(size / 1e6),
    }


# -- the check: the same traces through the writer's path, compared --------------------------------
def fill_as_the_proxy_does(url: str, n: int, now: float, seed: int = 1, batch: int = 1000) -> float:
    """The same traces and scores, written as the proxy's writer and the score API write them."""
    engine = PostgresEngine(url, search_index=False)
    started = time.perf_counter()
    given_all: list[tuple[str, list[scores.NewScore]]] = []
    with contextlib.closing(engine.open_for_writing()) as conn:
        pending: list[tuple[Any, ...]] = []
        for row, given in scored(traces(n, now, seed), seed):
            pending.append(tuple(row[c] for c in COLUMNS))
            if given:
                given_all.append((row["id"], given))
            if len(pending) == batch:
                engine.insert_rows(conn, pending)
                pending = []
        engine.insert_rows(conn, pending)
    edits = PostgresConnection(engine.connect())
    try:
        for at in range(0, len(given_all), 1000):
            with engine.editing(edits):
                for trace_id, given in given_all[at : at + 1000]:
                    for score in given:
                        scores.add(edits, trace_id, score, project=None, author_key=AUTHOR, source="api")
    finally:
        edits.close()
    return time.perf_counter() - started


def rollup_tables(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'rollup%' ORDER BY 1"
    )
    return [r[0] for r in rows]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return bool(a == b)


def compare(generated: str, written: str, now: float) -> list[str]:
    """Where the two stores differ: rollup tables (row by row) and the dashboard's views."""
    problems: list[str] = []
    a = PostgresEngine(generated).connect(read_only=True)
    b = PostgresEngine(written).connect(read_only=True)
    try:
        tables = rollup_tables(a)
        if tables != rollup_tables(b):
            problems.append(f"rollup tables differ: {tables} / {rollup_tables(b)}")
        for table in tables:
            columns = [r[0] for r in a.execute(f"SELECT * FROM {table} LIMIT 0").description or ()]
            numbers = {"cost_usd", "total", "min_ms", "max_ms", "first_seen", "last_seen"}
            keys = ", ".join(c for c in columns if c not in numbers and c not in _COUNTS)
            sql = f"SELECT * FROM {table} ORDER BY {keys}"
            rows_a, rows_b = a.execute(sql).fetchall(), b.execute(sql).fetchall()
            if len(rows_a) != len(rows_b) or not all(_close(x, y) for x, y in zip(rows_a, rows_b)):
                problems.append(f"{table}: {len(rows_a)} rows generated, {len(rows_b)} written, not alike")
        for sql in (
            "SELECT count(*), sum(latency_ms), count(error_code), count(prompt_preview) FROM trace_rows",
            "SELECT count(*), sum(length(request_body)), count(response_body) FROM trace_bodies",
            "SELECT count(*), sum(num), count(label), count(DISTINCT trace_id) FROM scores",
            "SELECT project, name, kind FROM score_names ORDER BY 1, 2",
        ):
            if not _close(a.execute(sql).fetchall(), b.execute(sql).fetchall()):
                problems.append(f"differ: {sql}")
    finally:
        a.close()
        b.close()
    since = now - 7 * DAY
    views: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = [
        ("overview page, all time", _overview, (TraceFilter(),), {}),
        ("overview page, 7 days", _overview, (TraceFilter(since=since),), {}),
        ("overview page, one project, 7 days", _overview, (TraceFilter(since=since, project="eval"),), {}),
        ("stats", queries.stats, (TraceFilter(),), {}),
        ("list by cost", queries.list_traces, (TraceFilter(),), {"sort": "cost"}),
        ("list of a model", queries.list_traces, (TraceFilter(model="o3-mini"),), {}),
        ("users", queries.users, (TraceFilter(),), {}),
        ("score averages", scores.averages, (TraceFilter(), ("model", "user", "project"), 10), {}),
    ]
    from prysmai._proxy.store import Store

    stores = [Store.existing(u, read_time_limit=None) for u in (generated, written)]
    try:
        for name, fn, args, kwargs in views:
            got = [s.read_sync(fn, *args, **kwargs) for s in stores if s is not None]
            if not _close(got[0], got[1]):
                problems.append(f"view differs: {name}")
    finally:
        for s in stores:
            if s is not None:
                s.close()
    return problems


_COUNTS = {"requests", "prompt_tokens", "completion_tokens", "total_tokens", "unpriced", "no_usage", "n", "errors"}
_COUNTS |= {"cancelled", "scores"}


def _overview(conn: Any, f: TraceFilter) -> Any:
    page = queries.overview_page(conn, f, queries.pick_bucket(f.since, f.until), queries.BREAKDOWNS, 10)
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--url", default="throwaway", help="an empty database (default: a throwaway server)")
    parser.add_argument("--keep", action="store_true", help="leave the throwaway server running (prints its URL)")
    parser.add_argument("--check", action="store_true", help="compare with the same traces written by the proxy's path")
    parser.add_argument(
        "--search-index", choices=("on", "off"), default="off", help="build it after (slow: hours at 10 M)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    emit({"bench": "pg_generate", "kind": "machine", **machine_info()})
    url, server = postgres_database(args.url)
    now = time.time()
    status = 0
    try:
        done = generate(url, args.traces, now, args.seed)
        emit({"bench": "pg_generate", **done})
        if args.search_index == "on":
            started = time.perf_counter()
            PostgresEngine(url, search_index=True).open_for_writing().close()
            emit({"bench": "pg_generate", "search_index_s": round(time.perf_counter() - started, 1)})
        if args.check:
            other = server.database() if server is not None else None
            if other is None:
                raise SystemExit("--check needs the throwaway server (no --url)")
            seconds = fill_as_the_proxy_does(other, args.traces, now, args.seed)
            emit({"bench": "pg_generate", "written_as_the_proxy_does_s": round(seconds, 1)})
            problems = compare(url, other, now)
            emit({"bench": "pg_generate", "check": "alike" if not problems else "DIFFERENT", "problems": problems})
            status = 1 if problems else 0
        if args.keep and server is not None:
            emit({"bench": "pg_generate", "kept": server.url(url.rsplit("/", 1)[1], password=False)})
    finally:
        if server is not None and not args.keep:
            server.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
