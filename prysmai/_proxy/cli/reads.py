"""``prysmai traces``, ``prysmai traces show`` and ``prysmai stats``: the store read from the terminal,
through the same query layer and JSON shape as the read API.

Imported on every ``prysmai`` invocation: standard library only at module level.
"""

from __future__ import annotations

import argparse

from .common import add_db, fail, open_store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..store import TraceFilter


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", metavar="NAME", help="only this project's traces (without a config file: default)")
    p.add_argument("--model", help="only this model (as requested by the client)")
    p.add_argument("--user", help="only this user id")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--status", choices=("success", "error", "timeout", "cancelled"), help="only this status")
    p.add_argument("--since", metavar="WHEN", help="only newer traces: 15m, 2h, 7d, or an ISO date/time")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_parsers(subparsers: Any) -> None:
    """Add ``traces`` (and ``traces show``) and ``stats`` to ``prysmai``."""
    traces = subparsers.add_parser(
        "traces",
        help="list captured traces (or `traces show ID` for one)",
        description="List captured traces, newest first. `prysmai traces show TRACE_ID` prints one in full.",
        usage="prysmai traces [options]\n       prysmai traces show TRACE_ID [--json] [--db PATH]",
    )
    add_db(traces)
    _add_filters(traces)
    traces.add_argument("--limit", type=int, default=50, help="at most this many rows, 1 to 1000 (default 50)")
    traces.set_defaults(handler=traces_command)
    # The help is the group's, not the choice's: argparse would otherwise list `show` twice.
    traces_sub = traces.add_subparsers(
        dest="traces_command",
        title="one trace",
        metavar="show TRACE_ID",
        help="one trace in full (the id, or a unique prefix of 8+ characters)",
    )
    show = traces_sub.add_parser("show", description="Print one trace in full.")
    show.add_argument("trace_id", metavar="TRACE_ID")
    # SUPPRESS: a sub-parser's defaults would overwrite `traces --db X show ID`'s values.
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    show.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="trace store (as for traces)")
    show.add_argument(
        "--project", metavar="NAME", default=argparse.SUPPRESS, help="only if the trace is in this project"
    )
    show.set_defaults(handler=show_command)

    stats = subparsers.add_parser("stats", help="requests, error rate, tokens, cost and latency, by model")
    add_db(stats)
    _add_filters(stats)
    stats.set_defaults(handler=stats_command)


def _filters(args: argparse.Namespace) -> TraceFilter | None:
    """The command's filter flags as a :class:`~..store.TraceFilter` (``None`` after an error)."""
    from ..store import TraceFilter

    if getattr(args, "project", None) == "":
        fail(args, "--project: give a project's name (leave the flag out for every project)", "invalid_parameter", 2)
        return None
    names = ("project", "model", "user", "session", "status", "since")
    try:
        return TraceFilter.from_query({name: getattr(args, name) for name in names if getattr(args, name, None)})
    except ValueError as exc:
        message = str(exc)
        fail(args, "--" + message if message.startswith("since:") else message, "invalid_parameter", 2)  # the flag
        return None


def _nothing(f: TraceFilter) -> str:
    from ..store import TraceFilter

    filtered = f != TraceFilter()
    return "No traces" + (" match these filters." if filtered else " yet: send a request through the proxy.")


def traces_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.queries import MAX_LIMIT, list_traces
    from .report import traces_table

    f = _filters(args)
    if f is None:
        return 2
    if not 1 <= args.limit <= MAX_LIMIT:
        return fail(args, f"--limit must be a whole number from 1 to {MAX_LIMIT}", "invalid_parameter", 2)
    store, status = open_store(args)
    if store is None:
        return status
    with store:
        try:
            rows, next_cursor = store.read_sync(list_traces, f, limit=args.limit)
        except ValueError as exc:
            return fail(args, str(exc), "invalid_parameter", 2)
    if args.json:
        print(jsonshape.dumps(jsonshape.page([jsonshape.trace(r) for r in rows], next_cursor)))
    elif not rows:
        print(_nothing(f))
    else:
        print(traces_table(rows))
    return 0


def show_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.queries import get_trace
    from .report import trace_detail

    project = getattr(args, "project", None)
    if project == "":
        return fail(args, "--project: give a project's name", "invalid_parameter", 2)
    store, status = open_store(args)
    if store is None:
        return status
    with store:
        try:
            trace = store.read_sync(get_trace, args.trace_id, project=project)
        except ValueError as exc:  # a prefix too short, or matching several traces
            code = "prefix_too_short" if "too short" in str(exc) else "ambiguous_prefix"
            return fail(args, str(exc), code, 2)
    if trace is None:
        where = f" in project {project!r}" if project is not None else ""
        message = f"no trace {args.trace_id!r}{where} (give the id, or a unique prefix of 8+ characters)"
        return fail(args, message, "not_found", 1)
    print(jsonshape.dumps(jsonshape.trace(trace)) if args.json else trace_detail(trace))
    return 0


def stats_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.queries import stats
    from .report import stats_text

    f = _filters(args)
    if f is None:
        return 2
    store, status = open_store(args)
    if store is None:
        return status
    with store:
        # Aggregated by the database from the hourly rollups: constant memory, whatever the store's size.
        result = store.read_sync(stats, f)
    if args.json:
        print(jsonshape.dumps(jsonshape.stats(result)))
    elif not result["requests"]:
        print(_nothing(f))
    else:
        print(stats_text(result))
    return 0
