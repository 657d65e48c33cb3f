"""The trace writer's speed: rows per second of the writer thread's CPU, this checkout against
another, rounds interleaved.

Each run is a fresh process that imports ``prysmai`` from one checkout, builds ``--rows`` trace rows
(the dashboard benchmark's generator: bodies of 0.2-2 KB, ``created_at`` increasing as the proxy
writes them), queues them all to a :class:`TraceStore` on a new store, and closes it (which
writes everything). The figure is rows / CPU seconds of the writer thread (the process's CPU time
minus the main thread's), which other processes on the machine do not inflate as they do the
wall time (also reported).

    python bench/writer.py --baseline DIR            # DIR holds another checkout's prysmai/
    python bench/writer.py --baseline DIR --rounds 5 --kinds plain,users,projects

Row kinds: ``plain`` (no user or session ids, one project: what the proxy benchmarks send),
``users`` (1 000 users, sessions of 6-hour windows), ``projects`` (``users``, spread over three
projects). A checkout that predates projects ignores the project. ``--drop INDEX`` also runs this
checkout with that index dropped before writing (what the index costs); ``--no-search-index`` also
runs it with ``--search-index off`` (what the search index of the bodies costs).

``--redaction`` measures what redaction costs the writer instead: the rows built by ``finalize``
on the writer thread from captured exchanges shaped as OpenAI writes them (``openai_shapes.py``:
chat completions, streamed ones, embeddings; a tenth holding an e-mail address, a key, a card
number, a phone number or an IP address), with redaction off, with ``secrets`` (the default) and
with every set, rounds interleaved; the ratios are to redaction off of the same checkout in the
same round. ``--baseline DIR`` runs another checkout's writer on the same exchanges too;
``--mix chat`` keeps only the non-streamed chat completions (the lightest rows: redaction's
largest share).

    python bench/writer.py --redaction --rounds 5 [--baseline DIR] [--mix chat]

``--split`` measures where the CPU of writing a captured exchange goes with each
``--trace-writer``: the proxy's writer thread (``process``: packing the exchanges for the child,
unpacking the rows it sends back and inserting them; ``thread``: building and inserting) and the
child (building), per trace, on the same exchanges as ``--redaction`` (redaction ``secrets``), with
``--baseline DIR``'s checkout too, rounds interleaved. It also times, in this checkout, unpacking a
batch's rows alone and inserting them alone (both on the writer thread).

    python bench/writer.py --split --rounds 3 --rows 2000 [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, REPO_DIR, emit, machine_info, median

KINDS = ("plain", "users", "projects")
#: ``--redaction``'s variants: name -> the redaction sets.
REDACTION = {"off": "", "secrets": "secrets", "every set": "secrets,email,phone,card,iban,ip"}


def child(code: str, kind: str, n: int, drop: str | None, body_kb: int) -> None:
    sys.path.insert(0, code)
    import prysmai

    if not prysmai.__file__ or not prysmai.__file__.startswith(code):
        raise RuntimeError(f"imported {prysmai.__file__}, not the checkout in {code}")
    sys.path.insert(1, str(BENCH_DIR))
    from dashboard_scale import make_rows

    rng = random.Random(5)
    rows = []
    for row in make_rows(n, time.time()):
        if kind == "plain":
            row["user_id"] = row["session_id"] = None
        row["project"] = rng.choices(["web", "batch", "eval"], (6, 3, 1))[0] if kind == "projects" else "default"
        row["provider"] = "openai"
        if body_kb:  # rows larger than a page: their last columns sit on overflow pages
            row["response_body"] = (row["response_body"] or "") + "x" * (body_kb * 1024)
        rows.append(row)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "t.db")
        store = _writer(path, n, search_index=drop != SEARCH)
        store.open()
        if drop and drop != SEARCH:
            assert store._conn is not None
            store._conn.execute(f"DROP INDEX {drop}")
        _submit_and_time(store, rows, n)


def _submit_and_time(store: Any, items: Any, n: int) -> None:
    """Submit every item to an open writer, close it, check it wrote ``n``, and print the CPU the
    writer's threads (every thread but this one) and the wall clock took."""
    cpu, main_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    for item in items:
        store.submit(item)
    store.close(timeout=600)
    wall = time.perf_counter() - wall
    writer_cpu = (time.process_time() - cpu) - (time.thread_time() - main_cpu)
    if store.written != n:
        raise RuntimeError(f"wrote {store.written} of {n}")
    print(json.dumps({"writer_cpu_s": writer_cpu, "wall_s": wall}))


def child_redaction(code: str, n: int, sets: str, mix: str) -> None:
    """Build ``n`` rows from captured exchanges with these redaction sets, on the writer thread."""
    sys.path.insert(0, code)
    import prysmai

    if not prysmai.__file__ or not prysmai.__file__.startswith(code):
        raise RuntimeError(f"imported {prysmai.__file__}, not the checkout in {code}")
    from functools import partial

    from prysmai._proxy.config.pricing import PriceTable
    from prysmai._proxy.store.capture import finalize
    from prysmai._proxy.store.sqlite import SQLiteEngine
    from prysmai._proxy.store.writer import TraceWriter

    items = _captured(n, mix, tuple(s for s in sets.split(",") if s))
    with tempfile.TemporaryDirectory() as folder:
        store = TraceWriter(
            SQLiteEngine(os.path.join(folder, "t.db")), partial(finalize, prices=PriceTable.load()), queue_size=n + 10
        )
        store.open()
        _submit_and_time(store, items, n)


def _captured(n: int, mix: str = "all", redact: tuple[str, ...] = ("secrets",)) -> list[Any]:
    """``n`` exchanges shaped as OpenAI writes them (``openai_shapes.py``), with these redaction
    sets; ``mix`` ``chat``: non-streamed chat completions only (the lightest rows)."""
    from prysmai._proxy.config.policy import StoragePolicy
    from prysmai._proxy.store.capture import Exchange

    sys.path.insert(1, str(BENCH_DIR))
    from openai_shapes import exchanges

    policy = StoragePolicy(redact=redact)
    items = []
    now = time.time()
    for i, shape in enumerate(exchanges(n, seed=9, now=now, chat_only=mix == "chat")):
        ex = Exchange(f"{i:032x}", now, 0.0, "POST", shape["endpoint"])
        ex.model = shape["model"]
        ex.stream = shape["stream"]
        ex.request_body = shape["request"]
        ex.request_content_type = "application/json"
        if ex.stream:
            ex.chunks = [(0.01 * k, frame) for k, frame in enumerate(shape["chunks"])]
            ex.response_content_type = "text/event-stream"
        else:
            ex.response_body = shape["response"]
            ex.response_content_type = "application/json"
        ex.http_status = 200
        ex.t_end = 0.5
        ex.policy = policy
        items.append(ex)
    return items


def child_split(code: str, n: int, kind: str) -> None:
    """Write ``n`` captured exchanges with the ``kind`` of trace writer; the CPU of the writer
    thread and of the child, per trace (and, for this checkout, of unpacking and inserting)."""
    sys.path.insert(0, code)
    import prysmai

    if not prysmai.__file__ or not prysmai.__file__.startswith(code):
        raise RuntimeError(f"imported {prysmai.__file__}, not the checkout in {code}")
    import marshal
    import resource
    from functools import partial

    from prysmai._proxy.config.pricing import PriceTable
    from prysmai._proxy.store.capture import finalize
    from prysmai._proxy.store.rows import build_rows
    from prysmai._proxy.store.sqlite import SQLiteEngine
    from prysmai._proxy.store.writer import TraceWriter
    from prysmai._proxy.store.writerproc import WriterProcess

    prices = PriceTable.load()
    items = _captured(n)
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        build = partial(finalize, prices=prices)
        process = WriterProcess(prices, build) if kind == "process" else None
        store = TraceWriter(SQLiteEngine(os.path.join(folder, "t.db")), build, queue_size=n + 10, process=process)
        store.open()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, main_cpu = time.process_time(), time.thread_time()
        for ex in items:
            store.submit(ex)
        store.close(timeout=600)  # the child exits and is reaped here: its CPU is counted below
        writer_cpu = (time.process_time() - cpu) - (time.thread_time() - main_cpu)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
        if store.written != n:
            raise RuntimeError(f"wrote {store.written} of {n}")
        record.update(writer_us=writer_cpu / n * 1e6, child_us=child_cpu / n * 1e6)
        # a child starved on a busy host leaves its batches to the writer thread: say how many
        record["fallbacks"] = getattr(store, "fallbacks", 0)
        record["built_in"] = store.kind  # "thread" when the child did not start
        if kind == "process" and hasattr(WriterProcess, "build"):  # this design: what the thread's share is made of
            rows, _, _ = build_rows(_captured(n), build, None)
            parts = [marshal.dumps(rows[i : i + 64]) for i in range(0, len(rows), 64)]
            t = time.thread_time()
            for part in parts:
                marshal.loads(part)
            record["unpack_us"] = (time.thread_time() - t) / n * 1e6
            engine = SQLiteEngine(os.path.join(folder, "insert.db"))
            conn = engine.open_for_writing()
            t = time.thread_time()
            for i in range(0, len(rows), 50):  # batches as the proxy's writer makes them at ~2 000 req/s
                engine.insert_rows(conn, rows[i : i + 50])
            record["insert_us"] = (time.thread_time() - t) / n * 1e6
            record["frame_bytes_per_row"] = sum(len(p) for p in parts) / n
            conn.close()
    print(json.dumps(record))


def split(rounds: int, n: int, baseline: str | None) -> int:
    """``--split``: CPU per trace of the writer thread and the child, each kind of writer and
    checkout, rounds interleaved."""
    emit({"bench": "writer-split", "kind": "machine", **machine_info()})
    checkouts = [("this", str(REPO_DIR))] + ([("baseline", str(Path(baseline).resolve()))] if baseline else [])
    runs = [(f"{name} {kind}", code, kind) for name, code in checkouts for kind in ("process", "thread")]
    results: dict[str, list[dict[str, Any]]] = {}
    for rnd in range(rounds):
        for name, code, kind in runs[rnd % len(runs) :] + runs[: rnd % len(runs)]:
            cmd = [sys.executable, __file__, "--child-split", kind, "--rows", str(n), "--code", code]
            # the writer's child imports prysmai afresh: point it at the same checkout
            env = {**os.environ, "PYTHONPATH": code}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1200, env=env).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.setdefault(name, []).append(r)
            emit(
                {
                    "bench": "writer-split",
                    "round": rnd,
                    "variant": name,
                    **{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()},
                }
            )
    lines = ["| writer | writer thread µs/trace | child µs/trace |", "|---|---:|---:|"]
    for name, _, _ in runs:
        got = results[name]
        thread = median([r["writer_us"] for r in got])
        child_us = median([r["child_us"] for r in got])
        lines.append(f"| {name} | {thread:.0f} | {child_us:.0f} |")
    this = results.get("this process", [])
    if this and "unpack_us" in this[0]:
        lines.append(
            f"\nthis checkout's writer thread, of it: unpacking the rows {median([r['unpack_us'] for r in this]):.1f}"
            f" µs/trace, inserting them {median([r['insert_us'] for r in this]):.0f} µs/trace"
            f" ({median([r['frame_bytes_per_row'] for r in this]):.0f} bytes a row in the frames)"
        )
    print("\n".join(lines), file=sys.stderr)
    return 0


def redaction(rounds: int, n: int, baseline: str | None, mix: str) -> int:
    """``--redaction``: rows/s of writer CPU with each variant of :data:`REDACTION` (and with
    ``baseline``'s checkout too, when given), rounds interleaved; ratios to "off" of the same
    checkout in the same round."""
    emit({"bench": "writer-redaction", "kind": "machine", "mix": mix, **machine_info()})
    results: dict[str, list[float]] = {}
    checkouts = [("", str(REPO_DIR))] + ([("baseline ", str(Path(baseline).resolve()))] if baseline else [])
    runs = [(prefix + name, code, sets) for prefix, code in checkouts for name, sets in REDACTION.items()]
    for rnd in range(rounds):
        for name, code, sets in runs[rnd % len(runs) :] + runs[: rnd % len(runs)]:
            cmd = [sys.executable, __file__, "--child-redaction", sets or "-", "--rows", str(n), "--code", code]
            cmd += ["--mix", mix]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1200).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rate = n / r["writer_cpu_s"]
            results.setdefault(name, []).append(rate)
            emit({"bench": "writer-redaction", "round": rnd, "variant": name, "rows_per_cpu_s": round(rate)})
    lines = ["| redaction | rows/s of writer CPU (per round) | x off |", "|---|---:|---:|"]
    for name, _, _ in runs:
        rates = results[name]
        off = results["baseline off" if name.startswith("baseline ") else "off"]
        ratios = [a / b for a, b in zip(rates, off)]
        cell = " / ".join(f"{r / 1000:.2f}" for r in rates) + f" k (median {median(rates) / 1000:.2f} k)"
        lines.append(f"| {name} | {cell} | **{median(ratios):.2f}x** [{min(ratios):.2f}-{max(ratios):.2f}] |")
    print("\n".join(lines), file=sys.stderr)
    return 0


#: ``--drop`` value of the variant without the search index.
SEARCH = "@search-index"


def _writer(path: str, n: int, search_index: bool = True) -> Any:
    """The checkout's trace writer on a new store at ``path`` (rows given ready-made)."""
    try:
        from prysmai._proxy.store.sqlite import SQLiteEngine
        from prysmai._proxy.store.writer import TraceWriter

        if not search_index:  # only checkouts with the search index (schema 4) are asked
            return TraceWriter(SQLiteEngine(path, search_index=False), lambda item: item, queue_size=n + 10)
        return TraceWriter(SQLiteEngine(path), lambda item: item, queue_size=n + 10)
    except ImportError:  # a checkout from before the store's rooms (prysmai/_proxy/store.py)
        from prysmai._proxy import store as store_module  # type: ignore[attr-defined,unused-ignore]

        return store_module.TraceStore(path, lambda item: item, queue_size=n + 10)


def run(code: str, kind: str, n: int, drop: str | None, body_kb: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", code, "--kinds", kind, "--rows", str(n), "--body-kb", str(body_kb)]
    if drop:
        cmd += ["--drop", drop]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1200).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="DIR", help="a folder holding another checkout's prysmai/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--kinds", default="plain,users,projects")
    parser.add_argument("--drop", metavar="INDEX", help="also run this checkout without INDEX")
    parser.add_argument("--no-search-index", action="store_true", help="also run this checkout with --search-index off")
    parser.add_argument("--body-kb", type=int, default=0, help="add this many KiB to every response body")
    parser.add_argument("--redaction", action="store_true", help="what redaction costs the writer (see above)")
    parser.add_argument("--child", metavar="CODE", help=argparse.SUPPRESS)
    parser.add_argument("--child-redaction", metavar="SETS", help=argparse.SUPPRESS)
    parser.add_argument("--split", action="store_true", help="where writing costs CPU: the writer thread, the child")
    parser.add_argument("--child-split", choices=("process", "thread"), help=argparse.SUPPRESS)
    parser.add_argument("--code", default=str(REPO_DIR), help=argparse.SUPPRESS)
    parser.add_argument(
        "--mix",
        choices=("all", "chat"),
        default="all",
        help="--redaction's exchanges: OpenAI's mix (chat, streams, embeddings) or chat completions only",
    )
    args = parser.parse_args(argv)
    if args.child_redaction:
        child_redaction(args.code, args.rows, "" if args.child_redaction == "-" else args.child_redaction, args.mix)
        return 0
    if args.redaction:
        return redaction(args.rounds, args.rows, args.baseline, args.mix)
    if args.child_split:
        child_split(args.code, args.rows, args.child_split)
        return 0
    if args.split:
        return split(args.rounds, args.rows, args.baseline)
    if args.child:
        child(args.child, args.kinds, args.rows, args.drop, args.body_kb)
        return 0
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            parser.error(f"--kinds: {k!r} is not one of {', '.join(KINDS)}")
    variants: list[tuple[str, str, str | None]] = [("this", str(REPO_DIR), None)]
    if args.drop:
        variants.append((f"this without {args.drop}", str(REPO_DIR), args.drop))
    if args.no_search_index:
        variants.append(("this, --search-index off", str(REPO_DIR), SEARCH))
    if args.baseline:
        variants.append(("baseline", str(Path(args.baseline).resolve()), None))
    emit({"bench": "writer", "kind": "machine", **machine_info()})
    results: dict[tuple[str, str], list[float]] = {}
    for rnd in range(args.rounds):
        for kind in kinds:
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]  # rotate
            for name, code, drop in order:
                r = run(code, kind, args.rows, drop, args.body_kb)
                rate = args.rows / r["writer_cpu_s"]
                results.setdefault((kind, name), []).append(rate)
                emit(
                    {
                        "bench": "writer",
                        "round": rnd,
                        "rows": kind,
                        "variant": name,
                        "rows_per_cpu_s": round(rate),
                        "rows_per_wall_s": round(args.rows / r["wall_s"]),
                    }
                )
    # Each variant against the last (the baseline, when given) in the same round: the ratio's median.
    reference = variants[-1][0]
    lines = ["| rows | " + " | ".join(v[0] for v in variants) + " |", "|---|" + "---:|" * len(variants)]
    for kind in kinds:
        cells = []
        for name, _, _ in variants:
            rates = results[(kind, name)]
            cell = " / ".join(f"{r / 1000:.1f}" for r in rates) + f" k (median {median(rates) / 1000:.1f} k)"
            if name != reference:
                ratios = [a / b for a, b in zip(rates, results[(kind, reference)])]
                cell += f", **{median(ratios):.2f}x** [{min(ratios):.2f}-{max(ratios):.2f}]"
            cells.append(cell)
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if len(variants) > 1:
        lines.append(
            f"\nrows/s of writer-thread CPU, per round; **x**: median over rounds of the ratio to {reference} "
            "in the same round [range]"
        )
    print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
