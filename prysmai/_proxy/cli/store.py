"""``prysmai store copy``: move an existing SQLite store (traces and scores) into a PostgreSQL store.

Imported on every ``prysmai`` invocation: standard library only at module level.
"""

from __future__ import annotations

import argparse
import sys

from .common import err

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def add_parser(subparsers: Any) -> None:
    """Add ``store copy`` to ``prysmai``."""
    store = subparsers.add_parser(
        "store",
        help="copy a SQLite trace store into a PostgreSQL store",
        description="Trace store maintenance. `store copy` moves an existing SQLite store into PostgreSQL.",
    )
    sub = store.add_subparsers(dest="store_command", metavar="copy")
    sub.required = True
    copy = sub.add_parser(
        "copy",
        help="copy every trace and score of a SQLite store into a PostgreSQL store (resumable, idempotent)",
        description=(
            "Copy every trace, then every score, of a SQLite store into a PostgreSQL store, in chunks, each "
            "checked on arrival. Run it again after an interruption: it goes on where it stopped (--restart: "
            "from the start; traces and scores already there are never stored twice). Ends with a count check."
        ),
    )
    copy.add_argument("--from", dest="source", required=True, metavar="PATH", help="the SQLite store (traces.db)")
    copy.add_argument("--to", dest="target", required=True, metavar="URL", help="postgresql://user@host:5432/dbname")
    copy.add_argument("--restart", action="store_true", help="copy from the first trace again")
    copy.set_defaults(handler=copy_command)


def copy_command(args: argparse.Namespace) -> int:
    from ..store import StoreError
    from ..store.copy import copy_store
    from ..store.postgres.engine import PostgresEngine, is_postgres

    if not is_postgres(args.target):
        err("--to must be a postgresql:// URL")
        return 2
    tty = sys.stderr.isatty()

    def meter(what: str) -> Callable[[int, int], None]:
        shown = [0.0]

        def progress(done: int, total: int) -> None:
            share = done / total if total else 1.0
            if tty:
                bar = "#" * int(share * 30)
                print(f"\r  [{bar:<30}] {done:,}/{total:,} {what}", end="", file=sys.stderr, flush=True)
            elif share - shown[0] >= 0.1 or done == total:  # a line per tenth when not on a terminal
                shown[0] = share
                print(f"  {done:,}/{total:,} {what}", file=sys.stderr, flush=True)

        return progress

    score_progress = meter("scores")
    scores_started = [False]

    def scores_meter(done: int, total: int) -> None:
        if tty and not scores_started[0]:
            print(file=sys.stderr)  # the traces' bar keeps its own line
        scores_started[0] = True
        score_progress(done, total)

    try:
        engine = PostgresEngine(args.target)
        print(f"copying {args.source} -> {engine.location}", file=sys.stderr)
        copied = copy_store(
            args.source, engine, restart=args.restart, progress=meter("traces"), score_progress=scores_meter
        )
    except StoreError as exc:
        if tty:
            print(file=sys.stderr)
        err(str(exc))
        return 1
    if tty:
        print(file=sys.stderr)
    if not copied.whole:
        err(
            f"count check failed: {copied.traces:,} trace(s) and {copied.scores:,} score(s) in {args.source}, "
            f"{copied.traces_present:,} and {copied.scores_present:,} of them in {engine.location}"
        )
        return 1
    print(
        f"count check: all {copied.traces:,} trace(s) and {copied.scores:,} score(s) of {args.source} "
        f"are in {engine.location}"
    )
    return 0
