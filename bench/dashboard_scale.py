"""The dashboard's queries at scale: stores of 10 k, 100 k and 1 M traces written by the real writer.

For each size it fills a store through :class:`prysmai._proxy.store.writer.TraceWriter` (the proxy's writer
thread, batches, the rollups, indexes and search index of the current schema) with varied traces spread
over 23 days (2 000 users, about 50 000 sessions: the store issue 25 was tried on), then times the query
layer (``prysmai._proxy.store.queries``) through a :class:`ReadRunner` as the dashboard and the read API
call it -- overview (24 h, 7 d, all), the overview page as an admin reads it (totals, series and five
breakdowns), trace lists with and without filters and by every sort, text searches, trace detail, the
session page, session and user lists -- with the extra peak memory of each, then the views issue 25
sets targets for with their verdicts, whether the rare-word search is answered under the read API's own
time limit, and ``prysmai stats`` as a subprocess (wall time, peak RSS). It also times the in-place
migration of a store that prysmai 0.1.0 wrote (schema 1) at the largest size, and the proxy's sequential
added latency with and without a dashboard-like client calling the read API every 2 s against the
largest store (rounds interleaved, added = proxy - direct within a round).

    python bench/dashboard_scale.py                      # 10k, 100k, 1M (~25 min; ~6 GB in --workdir)
    python bench/dashboard_scale.py --sizes 1000000 --workdir DIR --reuse   # a 1M store kept in DIR
    python bench/dashboard_scale.py --quick              # 2k traces, no migration/proxy parts (~20 s)

One JSON line per measurement on stdout; a Markdown table on stderr (and ``--table-out``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    COMMON_WORDS,
    PRYSM_KEY,
    PRYSMAI_CLI,
    REPO_DIR,
    emit,
    machine_info,
    median,
    paired_rounds,
)

sys.path.insert(0, str(REPO_DIR))

from prysmai._proxy.config.projects import Limits
from prysmai._proxy.store import QueryTimeout, TraceFilter, budgets, queries, scores, slices
from prysmai._proxy.store.edits import EditRunner
from prysmai._proxy.store.reader import ReadRunner
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows
from prysmai._proxy.store.sqlite.migrations import SCHEMA_VERSION, V1
from prysmai._proxy.store.writer import TraceWriter

DAY = 86400.0
SPAN_DAYS = 23
USERS = 2000
#: Each user's traces fall into sessions of this many hours: 2 000 users over 23 days give about
#: 50 000 sessions (the shape of the store the dashboard was tried on, issue 25).
SESSION_HOURS = 22
#: A word only a few bodies hold (one trace in RARE_EVERY): what a text search for something
#: specific looks for.
RARE_WORD = "quokka"
RARE_EVERY = 50_000
MODELS = [  # (model, share, $ per 1k tokens or None = unpriced)
    ("gpt-4o-mini", 0.45, 0.0006),
    ("gpt-4o", 0.2, 0.01),
    ("gpt-4.1", 0.1, 0.008),
    ("o3-mini", 0.1, 0.0044),
    ("text-embedding-3-small", 0.1, 0.00002),
    ("local-llama", 0.05, None),
]
TARGETS_MS = {"overview": 300.0, "list": 100.0, "detail": 50.0}
#: Projects and their shares of the traces: one large, two medium and small, one tiny (its rows
#: are few among many: what a project-scoped read must find without walking everyone's).
PROJECTS = [("web", 0.6), ("batch", 0.3), ("eval", 0.095), ("tiny", 0.005)]


# -- data -------------------------------------------------------------------------------------------
def make_rows(n: int, now: float, seed: int = 1) -> Any:
    """``n`` trace rows, oldest first, over the last 23 days: 6 models (one unpriced), 3 endpoints,
    2 000 users (Zipf-like; 10 % anonymous), sessions of 22-hour windows per user (about 50 000),
    4 statuses, 40 % streamed (with TTFT), metadata with 3 keys, bodies of 0.2-2 KB (one in
    ``RARE_EVERY`` holding ``RARE_WORD``), 4 projects (``PROJECTS``; drawn from a random stream of
    their own)."""
    rng = random.Random(seed)
    project_rng = random.Random(seed + 1)
    projects = [p for p, _ in PROJECTS]
    project_w = [w for _, w in PROJECTS]
    start = now - SPAN_DAYS * DAY
    step = SPAN_DAYS * DAY / n
    models = [m for m, _, _ in MODELS]
    weights = [w for _, w, _ in MODELS]
    prices = {m: p for m, _, p in MODELS}
    users = [f"user-{i:04d}" for i in range(USERS)]
    user_w = [1 / (i + 1) ** 0.8 for i in range(USERS)]
    keys = ["key_a1b2c3d4e5f6", "key_0f1e2d3c4b5a", "key_9a8b7c6d5e4f"]
    for i in range(n):
        t = start + i * step + rng.random() * step
        model = rng.choices(models, weights)[0]
        endpoint = (
            "embeddings" if model.startswith("text-embedding") else rng.choice(["chat/completions"] * 9 + ["responses"])
        )
        stream = endpoint != "embeddings" and rng.random() < 0.4
        r = rng.random()
        status = "success" if r < 0.96 else "error" if r < 0.99 else "timeout" if r < 0.995 else "cancelled"
        latency = rng.lognormvariate(6.2, 0.9) if status != "timeout" else 600_000.0
        prompt = rng.randint(20, 3000)
        completion = 0 if endpoint == "embeddings" or status != "success" else rng.randint(5, 800)
        user = None if rng.random() < 0.1 else rng.choices(users, user_w)[0]
        words = " ".join(rng.choice(COMMON_WORDS) for _ in range(rng.randint(30, 300)))
        if i % RARE_EVERY == RARE_EVERY // 2:
            words += " " + RARE_WORD
        price = prices[model]
        yield {
            "id": f"{rng.getrandbits(128):032x}",
            "created_at": t,
            "method": "POST",
            "endpoint": endpoint,
            "model": model,
            "stream": int(stream),
            "status": status,
            "http_status": 200
            if status == "success"
            else 400
            if status == "error"
            else 504
            if status == "timeout"
            else 499,
            "latency_ms": latency,
            "ttft_ms": latency * rng.uniform(0.05, 0.5) if stream and status == "success" else None,
            "prompt_tokens": prompt if status == "success" else None,
            "completion_tokens": completion if status == "success" else None,
            "total_tokens": prompt + completion if status == "success" else None,
            "cost_usd": None if price is None or status != "success" else (prompt + completion) / 1000 * price,
            "request_body": json.dumps({"model": model, "messages": [{"role": "user", "content": words}]}),
            "response_body": json.dumps({"choices": [{"message": {"role": "assistant", "content": words[::-1]}}]})
            if status == "success"
            else None,
            "error": None if status == "success" else f"upstream said {status}",
            "user_id": user,
            "session_id": None if user is None else f"sess-{user}-{int(t // (SESSION_HOURS * 3600))}",
            "metadata": json.dumps(
                {
                    "env": rng.choice(["prod"] * 8 + ["staging", "dev"]),
                    "feature": f"f{rng.randint(1, 20)}",
                    "tier": rng.randint(1, 3),
                }
            ),
            "notes": None,
            "response_model": model,
            "provider_request_id": f"req_{rng.getrandbits(64):016x}",
            "key_id": rng.choice(keys),
            "project": project_rng.choices(projects, project_w)[0],
            "provider": "local" if price is None else "openai",
        }


def fill(path: Path, n: int, now: float) -> dict[str, Any]:
    """Write ``n`` traces through the real writer thread, keeping its queue below capacity."""
    store = TraceWriter(SQLiteEngine(str(path)), lambda row: row, queue_size=20_000)
    store.open()
    start = time.perf_counter()
    for row in make_rows(n, now):
        while store.pending > 15_000:
            time.sleep(0.002)
        if not store.submit(row):
            raise RuntimeError("the writer dropped a trace while filling")
    store.close(timeout=600)
    seconds = time.perf_counter() - start
    if store.written != n:
        raise RuntimeError(f"wrote {store.written} of {n} traces")
    return {"seconds": round(seconds, 2), "rows_per_s": round(n / seconds), "db_mb": round(_size_mb(path), 1)}


#: Scores on one trace in SCORED_EVERY (10 %, as issue 26 asks): a thumbs up/down on each, a
#: quality number on most, a tone category on some.
SCORED_EVERY = 10


def fill_scores(path: Path, now: float) -> dict[str, Any]:
    """Scores on every SCORED_EVERY-th trace, written through the store's edit runner
    (:func:`scores.add`, as the API writes each one), a thousand per transaction."""
    editor = EditRunner(SQLiteEngine(str(path)))
    reader = ReadRunner(SQLiteEngine(str(path)), time_limit=None)
    ids = reader.run_sync(
        lambda c: [r[0] for r in c.execute(f"SELECT id FROM traces WHERE rowid % {SCORED_EVERY} = 0 ORDER BY rowid")]
    )
    reader.close()
    rng = random.Random(26)
    thumbs_up = scores.NewScore.parse({"name": "thumbs", "value": True})
    thumbs_down = scores.NewScore.parse({"name": "thumbs", "value": False, "comment": "wrong answer"})
    tones = [scores.NewScore.parse({"name": "tone", "value": t}) for t in ("friendly", "curt", "verbose")]

    def some(conn: Any, batch: list[str]) -> int:
        for trace_id in batch:
            owner = "key_bench0000001"
            scores.add(
                conn,
                trace_id,
                thumbs_up if rng.random() < 0.7 else thumbs_down,
                project=None,
                author_key=owner,
                source="api",
            )
            if rng.random() < 0.6:
                quality = scores.NewScore.parse({"name": "quality", "value": round(rng.random(), 3)})
                scores.add(conn, trace_id, quality, project=None, author_key=owner, source="api")
            if rng.random() < 0.2:
                scores.add(conn, trace_id, rng.choice(tones), project=None, author_key=owner, source="dashboard")
        return len(batch)

    start = time.perf_counter()
    try:
        for at in range(0, len(ids), 1000):
            editor.run_sync(some, ids[at : at + 1000])
    finally:
        editor.close()
    seconds = time.perf_counter() - start
    return {"scored_traces": len(ids), "seconds": round(seconds, 2), "db_mb": round(_size_mb(path), 1)}


#: The limits' 429s (issue 26, spend against budget): one trace in REFUSED_EVERY is added as a
#: refusal of a project's limits (a 429 the proxy answered itself), over the store's last 23 days.
REFUSED_EVERY = 50
#: The limits the budgets read is timed with, per project of PROJECTS.
BENCH_LIMITS = {
    "web": Limits(requests_per_minute=600, monthly_budget_usd=5000.0),
    "batch": Limits(requests_per_minute=120),
    "eval": Limits(monthly_budget_usd=50.0),
    "tiny": Limits(),
}


def refused_row(trace_id: int, created_at: float, code: str, project: str) -> dict[str, Any]:
    """A limit's refusal (rate or budget: 429, ``error_code``, the provider not called) as the
    proxy stores it."""
    return {
        "id": f"{trace_id:032x}",
        "created_at": created_at,
        "method": "POST",
        "endpoint": "chat/completions",
        "model": "gpt-4o-mini",
        "stream": 0,
        "status": "error",
        "http_status": 429,
        "latency_ms": 0.2,
        "error": "refused by the project's limit",
        "error_code": code,
        "project": project,
        "provider": "openai",
    }


def fill_refusals(path: Path, size: int, now: float) -> dict[str, Any]:
    """``size / REFUSED_EVERY`` refusals of the limits (rate or budget, 429, ``error_code``), as
    the proxy stores them, inserted with the rollups folded (the writer's insert); none if the store
    has some already."""
    engine = SQLiteEngine(str(path))
    conn = engine.open_for_writing()  # (migrates a store of schema 7: the refusals' column and index)
    try:
        codes = ", ".join(f"'{c}'" for c in budgets.REFUSAL_CODES)
        if conn.execute(f"SELECT 1 FROM traces WHERE error_code IN ({codes}) LIMIT 1").fetchone():
            return {"refusals": 0, "seconds": 0.0, "db_mb": round(_size_mb(path), 1)}
        rng = random.Random(429)
        rows = []
        for _ in range(size // REFUSED_EVERY):
            project = rng.choices([p for p, _ in PROJECTS], [w for _, w in PROJECTS])[0]
            code = rng.choice(budgets.REFUSAL_CODES)
            row = refused_row(rng.getrandbits(128), now - rng.random() * SPAN_DAYS * DAY, code, project)
            rows.append(tuple(row.get(c) for c in COLUMNS))
        start = time.perf_counter()
        for at in range(0, len(rows), 1000):
            insert_rows(conn, rows[at : at + 1000])
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return {"refusals": len(rows), "seconds": round(seconds, 2), "db_mb": round(_size_mb(path), 1)}


def budget_page(conn: sqlite3.Connection, now: float, since: float | None, project: str | None = None) -> Any:
    """The budgets read as the API makes it (``GET /api/v1/budgets``), at ``now``."""
    limits = {k: v for k, v in BENCH_LIMITS.items() if project in (None, k)}
    bucket = queries.pick_bucket(since, None, now)
    return budgets.budgets(conn, limits, now=now, project=project, since=since, bucket=bucket)


def _has_scores(path: Path) -> bool:
    SQLiteEngine(str(path)).migrate_existing()  # a store of schema 5 gets the scores' tables first
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT 1 FROM scores LIMIT 1").fetchone() is not None


def fill_v1(path: Path, n: int, now: float, source: Path | None = None) -> None:
    """A store exactly as prysmai 0.1.0 wrote it (its DDL, schema 1, no key_id): the rows of
    ``source`` copied by SQLite when it holds ``n`` traces (fast), else generated."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(V1 + "PRAGMA user_version = 1;")
    columns = COLUMNS[: COLUMNS.index("provider_request_id") + 1]
    names = ", ".join(columns)
    if source is not None and source.exists():
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))
        if conn.execute("SELECT count(*) FROM src.traces").fetchone()[0] == n:
            conn.execute(f"INSERT INTO traces ({names}) SELECT {names} FROM src.traces ORDER BY created_at")
            conn.execute("DETACH DATABASE src")
            conn.close()
            return
        conn.execute("DETACH DATABASE src")
    sql = f"INSERT INTO traces ({names}) VALUES ({', '.join('?' * len(columns))})"
    batch: list[tuple[Any, ...]] = []
    conn.execute("BEGIN")
    for row in make_rows(n, now):
        batch.append(tuple(row[c] for c in columns))
        if len(batch) == 5000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.close()


def fill_v2(path: Path, n: int, now: float, source: Path | None = None) -> None:
    """A store as prysmai wrote it at schema 2 (before projects): its DDL (dumped from a store it
    made, kept with the tests), the rows of ``source`` (else of a schema-1 store filled here),
    folded into its rollups by its own trigger."""
    if source is None or not source.exists():
        source = path.with_name(path.name + ".v1-source")
        fill_v1(source, n, now)
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript((REPO_DIR / "tests" / "proxy" / "schema_v2.sql").read_text())
    names = ", ".join(COLUMNS[: COLUMNS.index("key_id") + 1])
    conn.execute("ATTACH DATABASE ? AS src", (str(source),))
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO traces ({names}) SELECT {names} FROM src.traces ORDER BY created_at")
    conn.execute("UPDATE rollup_state SET fold_from = 0, folded_rowid = (SELECT max(rowid) FROM traces)")
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE src")
    conn.close()


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


# -- measuring ---------------------------------------------------------------------------------------
def _sqlite_highwater() -> Any:
    """SQLite's own ``sqlite3_memory_highwater`` (heap in use at its peak, all connections of
    this process), reached through the library the ``sqlite3`` module loaded; ``None`` if hidden."""
    try:
        import _sqlite3

        fn = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_highwater
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int]
    return fn


_HIGHWATER = _sqlite_highwater()


def measure(runner: ReadRunner, fn: Any, *args: Any, repeat: int = 5, **kw: Any) -> dict[str, Any]:
    """Server time: the first run (cold-ish) and the median of ``repeat`` more. Memory, in one more
    run: Python's peak allocations (tracemalloc) plus SQLite's heap at its peak."""
    t0 = time.perf_counter()
    runner.run_sync(fn, *args, **kw)
    first = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        runner.run_sync(fn, *args, **kw)
        times.append((time.perf_counter() - t0) * 1000)
    if _HIGHWATER is not None:
        _HIGHWATER(1)  # reset the peak to what is in use now (page caches of open connections)
    tracemalloc.start()
    runner.run_sync(fn, *args, **kw)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sqlite_peak = _HIGHWATER(0) if _HIGHWATER is not None else float("nan")
    return {
        "first_ms": round(first, 2),
        "ms": round(median(times), 2),
        "max_ms": round(max(times), 2),
        "peak_mb": round((python_peak + sqlite_peak) / 1e6, 1),
        "python_peak_mb": round(python_peak / 1e6, 2),
        "sqlite_peak_mb": round(sqlite_peak / 1e6, 2),
    }


def overview_page(conn: sqlite3.Connection, f: TraceFilter) -> Any:
    """What the dashboard's overview page asks for, as an admin key reads it: totals, a time series
    and the breakdowns by project, model, endpoint, user and session (10 rows each)."""
    bucket = queries.pick_bucket(f.since, f.until)
    return queries.overview_page(conn, f, bucket, queries.BREAKDOWNS, 10)


#: Issue 26's slicing views in the suite (see ``slice_cases``).
SLICE_VIEWS = (
    "slice: list, provider = local",
    "slice: list, cost >= $0.05",
    "slice: list, 7 d, latency >= 2 s",
    "slice: list, streamed, 100 to 200 tokens",
    "slice: the list's total, cost >= $0.05",
    "slice: stats, 24 h, latency >= 2 s",
    "slice: suggest models, 7 d",
    "slice: suggest users, 7 d",
    "slice: suggest users, all",
    "slice: suggest providers, 7 d (latest 5 000)",
    "slice: suggest metadata keys, 7 d (latest 5 000)",
    "slice: suggest metadata values of feature, 7 d (latest 5 000)",
    "slice: project web: suggest models, 24 h",
    "slice: series by model, 7 d, counts (latency=false)",
    "slice: series by project, 7 d, counts (latency=false)",
    "slice: series by user, 7 d, counts (latency=false)",
    "slice: series by user, all, counts (latency=false)",
    "slice: series by model, 7 d",
    "slice: series by model, all",
    "slice: series by project, 7 d",
    "slice: series by user, 7 d",
    "slice: series by user, all",
    "slice: series by metadata feature, 7 d (latest 10 000)",
    "slice: project web: series by model, 24 h",
)


def slice_cases(now: float) -> list[tuple[str, str, Any, tuple[Any, ...], dict[str, Any]]]:
    """Issue 26's slicing reads, named as in :data:`SLICE_VIEWS`."""
    d7, every = TraceFilter(since=now - 7 * DAY), TraceFilter()
    web24 = TraceFilter(since=now - DAY, project="web")

    def series(f: TraceFilter, by: str) -> tuple[Any, ...]:
        return (f, by, queries.pick_bucket(f.since, f.until, now), 5)

    counts = {"latency": False}

    cases = [
        ("list", queries.list_traces, (TraceFilter(provider="local"),), {}),
        ("list", queries.list_traces, (TraceFilter(cost_min=0.05),), {}),
        ("list", queries.list_traces, (TraceFilter(since=now - 7 * DAY, latency_min=2000.0),), {}),
        ("list", queries.list_traces, (TraceFilter(stream=True, tokens_min=100, tokens_max=200),), {}),
        ("list", queries.count_traces, (TraceFilter(cost_min=0.05),), {}),
        ("overview", queries.stats, (TraceFilter(since=now - DAY, latency_min=2000.0),), {}),
        ("list", slices.suggestions, (d7, "model"), {}),
        ("list", slices.suggestions, (d7, "user"), {}),
        ("list", slices.suggestions, (every, "user"), {}),
        ("list", slices.suggestions, (d7, "provider"), {}),
        ("list", slices.suggestions, (d7, "meta_key"), {}),
        ("list", slices.suggestions, (d7, "meta_value"), {"meta_key": "feature"}),
        ("list", slices.suggestions, (web24, "model"), {}),
        ("overview", slices.group_series, series(d7, "model"), counts),
        ("overview", slices.group_series, series(d7, "project"), counts),
        ("overview", slices.group_series, series(d7, "user"), counts),
        ("overview", slices.group_series, series(every, "user"), counts),
        ("overview", slices.group_series, series(d7, "model"), {}),
        ("overview", slices.group_series, series(every, "model"), {}),
        ("overview", slices.group_series, series(d7, "project"), {}),
        ("overview", slices.group_series, series(d7, "user"), {}),
        ("overview", slices.group_series, series(every, "user"), {}),
        ("overview", slices.group_series, series(d7, "meta:feature"), {}),
        ("overview", slices.group_series, series(web24, "model"), {}),
    ]
    return [(kind, name, fn, args, kw) for name, (kind, fn, args, kw) in zip(SLICE_VIEWS, cases)]


#: The views issues 25 and 26 set targets for, at 1 M traces (server time, ms): (name in the suite, target).
TARGETS = [
    ("overview page all", 300.0),
    ("overview page 7 d", 300.0),
    *(
        (f"list, all, sorted by {s} {o}", 100.0)
        for s in ("latency_ms", "ttft_ms", "total_tokens", "cost_usd")
        for o in ("descending", "ascending")
    ),
    ("list, all, text search for a rare word (quokka)", 500.0),
    ("sessions, all", 300.0),
    ("users, all", 300.0),
    # Issue 26: the reads of scores (10 % of the traces scored).
    ("scores: list with scores, newest 50", 300.0),
    ("scores: list, score = thumbs", 300.0),
    ("scores: list, quality >= 0.9", 300.0),
    ("scores: list, 7 d, thumbs <= 0 (thumbs down)", 300.0),
    ("scores: detail with scores", 300.0),
    ("scores: averages by model, user, project, all", 300.0),
    ("scores: averages by model, user, project, 7 d", 300.0),
    ("scores: project web: averages by model and user, 24 h", 300.0),
    ("scores: sessions with their scores, all", 300.0),
    ("scores: sessions with their scores, 7 d", 300.0),
    ("scores: users with their scores, all", 300.0),
    ("scores: users with their scores, 7 d", 300.0),
    ("scores: project web: users with their scores, 24 h", 300.0),
    ("scores: session page with its scores", 300.0),
    # Issue 26: spend against budget.
    ("budgets: every project, this month", 300.0),
    ("budgets: project web, this month", 300.0),
    ("budgets: project tiny, last 24 h", 300.0),
    # Issue 26, slicing: the new filters, suggestions and split series.
    *((name, 300.0) for name in SLICE_VIEWS),
]


def list_pages(conn: sqlite3.Connection, f: TraceFilter, pages: int) -> Any:
    cursor = None
    for _ in range(pages):
        _, cursor = queries.list_traces(conn, f, cursor=cursor, limit=50)
    return cursor


def query_suite(path: Path, size: int, now: float, match: str | None = None) -> list[dict[str, Any]]:
    """Time every read of the suite on the store at ``path`` (read-only); ``match``: only the
    reads whose name holds this text."""
    runner = ReadRunner(SQLiteEngine(str(path)), time_limit=120.0)  # measure, don't cut (the default is 1.5 s)
    last24, last7 = TraceFilter(since=now - DAY), TraceFilter(since=now - 7 * DAY)
    every = TraceFilter()
    probe = runner.run_sync(
        lambda c: c.execute(
            "SELECT id, session_id FROM traces WHERE session_id IS NOT NULL ORDER BY created_at DESC LIMIT 1 OFFSET 500"
        ).fetchone()
    )
    trace_id, session = probe[0], probe[1]
    web, tiny = TraceFilter(project="web"), TraceFilter(project="tiny")
    web24, web7 = TraceFilter(since=now - DAY, project="web"), TraceFilter(since=now - 7 * DAY, project="web")
    web_trace = runner.run_sync(
        lambda c: c.execute(
            "SELECT id FROM traces WHERE project = 'web' ORDER BY created_at DESC LIMIT 1 OFFSET 500"
        ).fetchone()[0]
    )
    month = now - now % 3600 - 30 * DAY
    cases: list[tuple[str, str, Any, tuple[Any, ...], dict[str, Any]]] = [
        ("overview", "overview 24 h", queries.overview, (last24,), {}),
        ("overview", "overview 7 d", queries.overview, (last7,), {}),
        ("overview", "overview all", queries.overview, (every,), {}),
        ("page", "overview page 24 h (totals, series, 5 breakdowns)", overview_page, (last24,), {}),
        ("page", "overview page 7 d", overview_page, (last7,), {}),
        ("page", "overview page all", overview_page, (every,), {}),
        (
            "overview",
            "overview 7 d, model = gpt-4o",
            queries.overview,
            (TraceFilter(since=now - 7 * DAY, model="gpt-4o"),),
            {},
        ),
        (
            "overview",
            "overview 7 d, user (raw rows)",
            queries.overview,
            (TraceFilter(since=now - 7 * DAY, user_id="user-0003"),),
            {},
        ),
        ("list", "list, newest 50", queries.list_traces, (every,), {}),
        ("list", "list, page 20 (cursor)", list_pages, (every, 20), {}),
        ("list", "list, model = local-llama", queries.list_traces, (TraceFilter(model="local-llama"),), {}),
        ("list", "list, user", queries.list_traces, (TraceFilter(user_id="user-0500"),), {}),
        ("list", "list, status = timeout", queries.list_traces, (TraceFilter(status="timeout"),), {}),
        ("list", "list, metadata env = dev", queries.list_traces, (TraceFilter(meta=(("env", "dev"),)),), {}),
        ("list", "list, 24 h, sorted by latency", queries.list_traces, (last24,), {"sort": "latency_ms"}),
        (
            "list",
            "list, all, sorted by cost ascending",
            queries.list_traces,
            (every,),
            {"sort": "cost_usd", "descending": False},
        ),
        *(
            (
                "list",
                f"list, all, sorted by {sort} {'descending' if desc else 'ascending'}",
                queries.list_traces,
                (every,),
                {"sort": sort, "descending": desc},
            )
            for sort in ("latency_ms", "ttft_ms", "total_tokens", "cost_usd")
            for desc in (True, False)
        ),
        (
            "list",
            f"list, all, text search for a rare word ({RARE_WORD})",
            queries.list_traces,
            (TraceFilter(text=RARE_WORD),),
            {},
        ),
        (
            "list",
            "list, 24 h, text search",
            queries.list_traces,
            (TraceFilter(since=now - DAY, text="zzz-absent"),),
            {},
        ),
        (
            "list",
            "list, all, text search (no match: reads every body)",
            queries.list_traces,
            (TraceFilter(text="zzz-absent"),),
            {},
        ),
        ("detail", "detail by id", queries.get_trace, (trace_id,), {}),
        ("detail", "detail by 8-char prefix", queries.get_trace, (trace_id[:8],), {}),
        ("detail", "session page (its totals, 100 traces in full)", queries.session_page, (session,), {}),
        ("list", "sessions, 24 h", queries.sessions, (last24,), {}),
        ("list", "users, all", queries.users, (every,), {}),
        ("list", "sessions, all", queries.sessions, (every,), {}),
        ("list", "users, 7 d", queries.users, (last7,), {}),
        # Issue 26: the list's page with its total, previous / next, sessions and users sorted and searched.
        ("list", "the list's total (counted to 10 000), all", queries.count_traces, (every,), {}),
        ("list", "the list's total, 24 h", queries.count_traces, (last24,), {}),
        ("list", "the list's total, user", queries.count_traces, (TraceFilter(user_id="user-0500"),), {}),
        (
            "list",
            "the list's total, text search (no match)",
            queries.count_traces,
            (TraceFilter(text="zzz-absent"),),
            {},
        ),
        ("detail", "neighbours, newest first", queries.neighbours, (every, trace_id), {}),
        (
            "detail",
            "neighbours, by cost ascending",
            queries.neighbours,
            (every, trace_id),
            {"sort": "cost", "descending": False},
        ),
        ("list", "users, all, by requests", queries.users, (every,), {"sort": "requests"}),
        ("list", "sessions, all, by cost", queries.sessions, (every,), {"sort": "cost"}),
        ("list", "sessions, 7 d, search", queries.sessions, (last7,), {"search": "user-00"}),
        # One project's traces (what a project's key reads): web holds 60 % of them, tiny 0.5 %.
        ("overview", "project web: overview 24 h", queries.overview, (web24,), {}),
        ("overview", "project web: overview all", queries.overview, (web,), {}),
        (
            "overview",
            "project tiny: overview 7 d",
            queries.overview,
            (TraceFilter(since=now - 7 * DAY, project="tiny"),),
            {},
        ),
        ("page", "project web: overview page 24 h", overview_page, (web24,), {}),
        ("page", "project web: overview page 7 d", overview_page, (web7,), {}),
        ("list", "project web: list, newest 50", queries.list_traces, (web,), {}),
        ("list", "project web: list, 20 pages by cursor", list_pages, (web, 20), {}),
        ("list", "project tiny: list, newest 50", queries.list_traces, (tiny,), {}),
        ("list", "project tiny: list, 20 pages by cursor", list_pages, (tiny, 20), {}),
        (
            "list",
            "project web: list, model = local-llama",
            queries.list_traces,
            (TraceFilter(model="local-llama", project="web"),),
            {},
        ),
        (
            "list",
            "project web: list, one user",
            queries.list_traces,
            (TraceFilter(user_id="user-0500", project="web"),),
            {},
        ),
        ("list", "project web: list, 24 h, sorted by latency", queries.list_traces, (web24,), {"sort": "latency_ms"}),
        (
            "list",
            "project web: list, all, sorted by cost ascending",
            queries.list_traces,
            (web,),
            {"sort": "cost_usd", "descending": False},
        ),
        (
            "list",
            "project tiny: list, all, sorted by cost ascending",
            queries.list_traces,
            (tiny,),
            {"sort": "cost_usd", "descending": False},
        ),
        ("detail", "project web: detail by id", queries.get_trace, (web_trace,), {"project": "web"}),
        ("detail", "project web: detail by 8-char prefix", queries.get_trace, (web_trace[:8],), {"project": "web"}),
        ("detail", "project web: session page", queries.session_page, (session,), {"project": "web"}),
        ("list", "project web: sessions, 24 h", queries.sessions, (web24,), {}),
        ("list", "project web: users, all", queries.users, (web,), {}),
        ("list", "project tiny: users, all", queries.users, (tiny,), {}),
        ("overview", "month_spend (30 days, every project)", queries.month_spend, (month,), {}),
        # Issue 26: scores (on 10 % of the traces).
        ("list", "scores: list with scores, newest 50", scores.list_traces, (every,), {}),
        ("list", "scores: list, score = thumbs", scores.list_traces, (TraceFilter(score="thumbs"),), {}),
        (
            "list",
            "scores: list, quality >= 0.9",
            scores.list_traces,
            (TraceFilter(score="quality", score_min=0.9),),
            {},
        ),
        (
            "list",
            "scores: list, 7 d, thumbs <= 0 (thumbs down)",
            scores.list_traces,
            (TraceFilter(since=now - 7 * DAY, score="thumbs", score_max=0.0),),
            {},
        ),
        ("detail", "scores: detail with scores", scores.trace_with_scores, (trace_id,), {}),
        (
            "overview",
            "scores: averages by model, user, project, all",
            scores.averages,
            (every, ("model", "user", "project"), 20),
            {},
        ),
        (
            "overview",
            "scores: averages by model, user, project, 7 d",
            scores.averages,
            (last7, ("model", "user", "project"), 20),
            {},
        ),
        (
            "overview",
            "scores: project web: averages by model and user, 24 h",
            scores.averages,
            (web24, ("model", "user"), 20),
            {},
        ),
        # The sessions and users lists and a session's page as the read API gives them: with scores.
        ("list", "scores: sessions with their scores, all", scores.sessions, (every,), {}),
        ("list", "scores: sessions with their scores, 7 d", scores.sessions, (last7,), {}),
        ("list", "scores: users with their scores, all", scores.users, (every,), {}),
        ("list", "scores: users with their scores, 7 d", scores.users, (last7,), {}),
        ("list", "scores: project web: users with their scores, 24 h", scores.users, (web24,), {}),
        ("detail", "scores: session page with its scores", scores.session_page, (session,), {}),
        # Schema 10: whole days from the scored traces' rollups, today's traces from the rows.
        ("overview", "scores: stats, score = thumbs", queries.stats, (TraceFilter(score="thumbs"),), {}),
        (
            "overview",
            "scores: stats, 7 d, score = thumbs",
            queries.stats,
            (TraceFilter(since=now - 7 * DAY, score="thumbs"),),
            {},
        ),
        # Issue 26: spend against budget (the limits' 429s: one trace in REFUSED_EVERY).
        ("overview", "budgets: every project, this month", budget_page, (now, budgets.month_start(now)), {}),
        ("overview", "budgets: project web, this month", budget_page, (now, budgets.month_start(now), "web"), {}),
        ("overview", "budgets: project tiny, last 24 h", budget_page, (now, now - DAY, "tiny"), {}),
        ("overview", "budgets: every project, every refusal (since all)", budget_page, (now, None), {}),
        *slice_cases(now),
    ]
    if match:
        cases = [c for c in cases if match in c[1]]
    out = []
    try:
        for kind, name, fn, args, kw in cases:
            record = {
                "bench": "dashboard",
                "kind": kind,
                "size": size,
                "name": name,
                # Reading every body takes seconds at 1 M: time it once more, not five times.
                **measure(runner, fn, *args, repeat=1 if "every body" in name else 5, **kw),
            }
            emit(record)
            out.append(record)
    finally:
        runner.close()
    if match:
        return out
    # What the proxy would answer: the rare-word search under the read API's own time limit.
    limited = ReadRunner(SQLiteEngine(str(path)))
    try:
        limited.run_sync(queries.list_traces, TraceFilter(text=RARE_WORD))
        served = True
    except QueryTimeout:
        served = False
    finally:
        limited.close()
    record = {"bench": "dashboard", "kind": "served", "size": size, "name": "rare-word search", "served": served}
    emit(record)
    out.append(record)
    return out


def cli_stats(path: Path, size: int) -> dict[str, Any]:
    """``prysmai stats`` over the whole store, as a user runs it: wall time and peak RSS."""
    cmd = [
        *PRYSMAI_CLI,
        "stats",
        "--db",
        str(path),
    ]
    walls, rss = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        # This checkout's prysmai, not whichever the interpreter finds from the bench folder
        # (main() changes into it): a run of another checkout must time that checkout's command.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_DIR), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        rss.append(usage.ru_maxrss / 1024)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"prysmai stats failed: {proc.stderr.read() if proc.stderr else ''}")
    record = {
        "bench": "dashboard",
        "kind": "cli_stats",
        "size": size,
        "wall_s": round(median(walls), 3),
        "maxrss_mb": round(max(rss), 1),
    }
    emit(record)
    return record


# -- the pages in a browser -------------------------------------------------------------------------------
#: The pages issue 25 times in a browser: (name, path, the element that shows the page's data).
BROWSER_PAGES = [
    ("overview, all time", "/?since=all", "[data-breakdown=session_id]"),
    ("overview, 7 days", "/?since=7d", "[data-breakdown=session_id]"),
    ("traces by cost, all time", "/traces?since=all&sort=cost", "#traces-table"),
    ("traces by latency ascending, all time", "/traces?since=all&sort=latency&order=asc", "#traces-table"),
    (f"traces, words '{RARE_WORD}', all time", f"/traces?since=all&q={RARE_WORD}", "#traces-table"),
    ("sessions, all time", "/sessions?since=all", "#sessions-table"),
    ("users, all time", "/users?since=all", "#users-table"),
]


def browser_times(path: Path, size: int, repeat: int = 3) -> list[dict[str, Any]]:
    """Each page of :data:`BROWSER_PAGES` in Debian's chromium over ``prysmai ui`` on the store, as
    an admin key sees it (every project): the time from navigation to the page's data drawn
    (server, transfer and rendering), median of ``repeat`` loads after a first."""
    from playwright.sync_api import sync_playwright

    key = "sk-prysm-bench-admin-0123456789abcdef"
    config = path.with_name(path.name + ".admin.toml")
    config.write_text(
        '[admin]\nkeys = [{ env = "PRYSM_BENCH_ADMIN_KEY" }]\n\n'
        + "".join(
            f'[[projects]]\nname = "{name}"\nkeys = []\ndefault_provider = "offline"\n'
            '  [[projects.providers]]\n  name = "offline"\n  kind = "demo"\n\n'
            for name, _ in PROJECTS
        )
    )
    env = {
        **os.environ,
        "PRYSM_BENCH_ADMIN_KEY": key,
        "PYTHONPATH": os.pathsep.join([str(REPO_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    ui = subprocess.Popen(
        [*PRYSMAI_CLI, "ui", "--db", str(path), "--config", str(config), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out: list[dict[str, Any]] = []
    try:
        assert ui.stderr is not None
        line = ui.stderr.readline()
        base = line.split("dashboard at ", 1)[1].split("/ ", 1)[0]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(base + "/login")
            page.fill("#key", key)
            page.click("form#login-form button[type=submit]")
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60000)
            for name, url, ready in BROWSER_PAGES:
                times = []
                for _ in range(repeat + 1):
                    t0 = time.perf_counter()
                    page.goto(base + url)
                    page.wait_for_selector(ready, timeout=60000)
                    times.append((time.perf_counter() - t0) * 1000)
                record = {
                    "bench": "dashboard",
                    "kind": "browser",
                    "size": size,
                    "name": name,
                    "first_ms": round(times[0], 1),
                    "ms": round(median(times[1:]), 1),
                }
                emit(record)
                out.append(record)
            browser.close()
    finally:
        ui.terminate()
        ui.wait(30)
    return out


# -- the proxy while a dashboard refreshes ------------------------------------------------------------
def proxy_under_dashboard(path: Path, workdir: Path, rounds: int, requests: int) -> list[dict[str, Any]]:
    from proxy_overhead import Target, run_client, start_prysm, start_upstream

    upstream, upstream_url = start_upstream(workdir)
    direct = Target("direct", upstream_url + "/chat/completions", "sk-bench", None)
    prysm = start_prysm(workdir, upstream_url, path)
    api = prysm.url.replace("/chat/completions", "")
    calls: list[float] = []

    def dashboard(stop: threading.Event) -> None:
        # What an open dashboard asks every 2 s: the all-time and 24 h stats and the newest traces.
        urls = [f"{api}/stats", f"{api}/stats?since=24h", f"{api}/traces?limit=50"]
        while not stop.is_set():
            for url in urls:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {PRYSM_KEY}"})
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                calls.append((time.perf_counter() - t0) * 1000)
            stop.wait(2.0)

    try:
        seq = ["--mode", "seq", "--requests", str(requests), "--warmup", "50"]
        out = paired_rounds(
            {"bench": "dashboard", "kind": "proxy"},
            "dashboard",
            rounds,
            dashboard,
            lambda target: run_client(target, seq, timeout=300),
            direct,
            prysm,
            settle_s=0.5,
            stop_s=60,
        )
        if calls:
            emit(
                {
                    "bench": "dashboard",
                    "kind": "api_calls",
                    "n": len(calls),
                    "median_ms": round(median(calls), 1),
                    "max_ms": round(max(calls), 1),
                }
            )
    finally:
        prysm.stop()
        upstream.terminate()
        upstream.wait(10)
    return out


# -- report -------------------------------------------------------------------------------------------
def table(records: list[dict[str, Any]], sizes: list[int]) -> str:
    lines = []
    queries_ = [r for r in records if r["kind"] in ("overview", "page", "list", "detail")]
    names = list(dict.fromkeys(r["name"] for r in queries_))
    head = "| query | " + " | ".join(f"{s:,} traces: ms (first) / peak MB" for s in sizes) + " |"
    lines += [head, "|---|" + "---:|" * len(sizes)]
    for name in names:
        cells = []
        for s in sizes:
            r = next((r for r in queries_ if r["name"] == name and r["size"] == s), None)
            cells.append("" if r is None else f"{r['ms']:.1f} ({r['first_ms']:.0f}) / {r['peak_mb']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for kind, label in (
        ("fill", "fill through the writer: s (traces/s), store MB"),
        ("fill-scores", "scores on 10 % of the traces, through the edit runner: s, store MB"),
        ("fill-refusals", "the limits' 429s, one trace in 50 (schema 8): s, store MB"),
        ("cli_stats", "`prysmai stats`: wall s / peak RSS MB"),
    ):
        cells = []
        for s in sizes:
            r = next((r for r in records if r["kind"] == kind and r["size"] == s), None)
            if r is None:
                cells.append("")
            elif kind == "fill":
                cells.append(f"{r['seconds']:.0f} ({r['rows_per_s']:,}), {r['db_mb']:,.0f}")
            elif kind == "fill-scores":
                cells.append(f"{r['seconds']:.0f} ({r['scored_traces']:,} traces), {r['db_mb']:,.0f}")
            elif kind == "fill-refusals":
                cells.append(f"{r['seconds']:.0f} ({r['refusals']:,} traces), {r['db_mb']:,.0f}")
            else:
                cells.append(f"{r['wall_s']:.2f} / {r['maxrss_mb']:.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    shown = [r for r in records if r["kind"] == "browser"]
    if shown:
        lines += [
            "",
            "| page in chromium, until its data is drawn | "
            + " | ".join(f"{s:,} traces: ms (first)" for s in sizes)
            + " |",
        ]
        lines.append("|---|" + "---:|" * len(sizes))
        for name in dict.fromkeys(r["name"] for r in shown):
            cells = []
            for s in sizes:
                r = next((r for r in shown if r["name"] == name and r["size"] == s), None)
                cells.append("" if r is None else f"{r['ms']:.0f} ({r['first_ms']:.0f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| issue 25's and 26's views | target ms | " + " | ".join(f"{s:,} traces" for s in sizes) + " |"]
    lines.append("|---|---:|" + "---:|" * len(sizes))
    for name, target in TARGETS:
        cells = []
        for s in sizes:
            r = next((r for r in queries_ if r["name"] == name and r["size"] == s), None)
            cells.append("" if r is None else f"{r['ms']:.1f} {'met' if r['ms'] <= target else '**missed**'}")
        lines.append(f"| {name} | {target:.0f} | " + " | ".join(cells) + " |")
    for r in records:
        if r["kind"] == "served":
            verdict = "answered" if r["served"] else "**stopped: 503**"
            lines.append(f"\nThe rare-word search under the read API's 1.5 s limit, {r['size']:,} traces: {verdict}")
    for r in records:
        if r["kind"] == "migrate":
            lines.append(
                f"\nMigration of a {r['size']:,}-trace schema-{r['from']} store to schema {SCHEMA_VERSION}: "
                f"{r['seconds']:.1f} s"
            )
    proxy = [r for r in records if r["kind"] == "proxy"]
    if proxy:
        lines.append("\n| proxy, sequential | added p50 ms | added p99 ms |\n|---|---:|---:|")
        for flag, label in ((False, "no dashboard"), (True, "dashboard calling the read API every 2 s")):
            rs = [r for r in proxy if r["dashboard"] is flag]
            p50, p99 = median([r["added_p50_ms"] for r in rs]), median([r["added_p99_ms"] for r in rs])
            lines.append(f"| {label} | {p50:.3f} | {p99:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated store sizes")
    parser.add_argument("--quick", action="store_true", help="one store of 2000 traces; no migration or proxy part")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse stores already filled in --workdir")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-migration", action="store_true")
    parser.add_argument("--no-proxy", action="store_true")
    parser.add_argument(
        "--browser", action="store_true", help="also time the pages in Debian's chromium (Playwright) over prysmai ui"
    )
    parser.add_argument(
        "--store",
        default=None,
        help="only time the query suite on this existing store (read-only; its .done file, if any, gives the "
        "time it was filled at), e.g. --store /work/bench1m/store-1000000.db --match slice:",
    )
    parser.add_argument("--match", default=None, help="only the reads whose name holds this text")
    parser.add_argument("--proxy-rounds", type=int, default=4)
    parser.add_argument("--seq-requests", type=int, default=1000)
    parser.add_argument("--table-out", default=None)
    args = parser.parse_args(argv)
    if args.store:
        store = Path(args.store)
        marker = store.with_suffix(".done")
        filled = float(marker.read_text()) if marker.exists() else time.time()
        size = queries.count_traces(sqlite3.connect(f"file:{store}?mode=ro", uri=True), TraceFilter(), 10**9)[0]
        records = query_suite(store, size, filled, args.match)
        text = table(records, [size])
        print(text, file=sys.stderr)
        if args.table_out:
            Path(args.table_out).write_text(text + "\n")
        return 0
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="prysmai-dash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    records: list[dict[str, Any]] = []
    emit({"bench": "dashboard", "kind": "machine", **machine_info(), "sqlite": sqlite3.sqlite_version})
    try:
        for size in sizes:
            path = workdir / f"store-{size}.db"
            marker = workdir / f"store-{size}.done"
            if args.reuse and marker.exists():
                now = float(marker.read_text())
                if not _has_scores(path):  # a store filled before scores existed (schema 5): score it now
                    record = {"bench": "dashboard", "kind": "fill-scores", "size": size, **fill_scores(path, now)}
                    emit(record)
                    records.append(record)
                # A store filled before the limits' refusals were told apart (schema 7): add them.
                record = {"bench": "dashboard", "kind": "fill-refusals", "size": size, **fill_refusals(path, size, now)}
                emit(record)
                records.append(record)
            else:
                for old in workdir.glob(path.name + "*"):
                    old.unlink()
                record = {"bench": "dashboard", "kind": "fill", "size": size, **fill(path, size, now)}
                emit(record)
                records.append(record)
                record = {"bench": "dashboard", "kind": "fill-scores", "size": size, **fill_scores(path, now)}
                emit(record)
                records.append(record)
                record = {"bench": "dashboard", "kind": "fill-refusals", "size": size, **fill_refusals(path, size, now)}
                marker.write_text(repr(now))
                emit(record)
                records.append(record)
            records += query_suite(path, size, now, args.match)
            records.append(cli_stats(path, size))
            if args.browser:
                records += browser_times(path, size)
        if not args.quick and not args.no_migration:
            size = max(sizes)
            for schema, make in ((1, fill_v1), (2, fill_v2)):
                old_store = workdir / f"v{schema}-{size}.db"
                for old in workdir.glob(old_store.name + "*"):
                    old.unlink()
                make(old_store, size, now, source=workdir / f"store-{size}.db")
                t0 = time.perf_counter()
                SQLiteEngine(str(old_store)).open_for_writing().close()
                record = {
                    "bench": "dashboard",
                    "kind": "migrate",
                    "from": schema,
                    "size": size,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                emit(record)
                records.append(record)
                for old in workdir.glob(old_store.name + "*"):
                    old.unlink()
        if not args.quick and not args.no_proxy:
            records += proxy_under_dashboard(
                workdir / f"store-{max(sizes)}.db", workdir, args.proxy_rounds, args.seq_requests
            )
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = table(records, sizes)
    print(text, file=sys.stderr)
    if args.table_out:
        Path(args.table_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    os.chdir(BENCH_DIR)
    sys.exit(main())
