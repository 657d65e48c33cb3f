"""``prysmai traces``, ``prysmai traces show`` and ``prysmai stats``: the store read from the terminal,
through the same query layer and JSON shape as the read API.

Imported on every ``prysmai`` invocation: standard library only at module level.
"""

from __future__ import annotations

import argparse

from .common import add_config, add_db, config_path, fail, open_store

#: The statuses a trace has (``store.queries.STATUSES``, without importing the store here).
STATUSES = ("success", "error", "timeout", "cancelled")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..store import TraceFilter


#: The filter flags, as the read API's query names them (``--user-prefix`` is ``user~``).
_FILTER_FLAGS = {
    "project": "project",
    "model": "model",
    "model_prefix": "model~",
    "endpoint": "endpoint",
    "user": "user",
    "user_prefix": "user~",
    "session": "session",
    "key": "key",
    "status": "status",
    "since": "since",
    "until": "until",
    "q": "q",
    "score": "score",
    "score_min": "score_min",
    "score_max": "score_max",
    "provider": "provider",
    "stream": "stream",
    "http_status": "http_status",
    **{f"{name}_{end}": f"{name}_{end}" for name in ("cost", "latency", "ttft", "tokens") for end in ("min", "max")},
}


def _add_filters(p: argparse.ArgumentParser) -> None:
    """The read API's filters, one flag each (docs/proxy.md, "HTTP read API")."""
    p.add_argument("--project", metavar="NAME", help="only this project's traces (without a config file: default)")
    p.add_argument("--model", help="only this model, exactly (as requested by the client)")
    p.add_argument("--model-prefix", metavar="TEXT", help="only models starting with TEXT, any case")
    p.add_argument("--endpoint", help="only this endpoint, e.g. chat/completions, embeddings, responses")
    p.add_argument("--user", help="only this user id, exactly")
    p.add_argument("--user-prefix", metavar="TEXT", help="only user ids starting with TEXT, any case")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--key", metavar="KEY_ID", help="only traces sent with this key (its key_..., never the key)")
    p.add_argument("--status", choices=STATUSES, help="only this status")
    p.add_argument(
        "--meta",
        metavar="KEY=VALUE",
        action="append",
        default=None,
        help="only traces whose metadata KEY is VALUE (repeatable: every one must hold)",
    )
    p.add_argument("--q", metavar="TEXT", help="only traces whose request or response body holds these words")
    p.add_argument(
        "--score", metavar="NAME", help="only traces with a score of this name (see --score-min/--score-max)"
    )
    p.add_argument("--score-min", metavar="X", help="with --score: only scores of at least X (true is 1, false 0)")
    p.add_argument("--score-max", metavar="Y", help="with --score: only scores of at most Y")
    p.add_argument("--provider", metavar="NAME", help="only traces sent to this provider (as the config names it)")
    p.add_argument("--stream", choices=("true", "false"), help="only streamed (true) or unstreamed (false) requests")
    p.add_argument("--http-status", metavar="CODE", help="only answers with this HTTP status, e.g. 429")
    for name, unit in (("cost", "USD"), ("latency", "ms"), ("ttft", "ms"), ("tokens", "total tokens")):
        for end, word in (("min", "at least"), ("max", "at most")):
            p.add_argument(
                f"--{name}-{end}", metavar="X", help=f"only traces whose {name} is {word} X ({unit}; unknown: none)"
            )
    p.add_argument("--since", metavar="WHEN", help="only newer traces: 15m, 2h, 7d, unix seconds or an ISO date/time")
    p.add_argument("--until", metavar="WHEN", help="only older traces (as --since)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_parsers(subparsers: Any) -> None:
    """Add ``traces`` (and ``traces show``) and ``stats`` to ``prysmai``."""
    traces = subparsers.add_parser(
        "traces",
        help="list captured traces (or `traces show ID` for one)",
        description="List captured traces, newest first, a page at a time (or every one with --all). "
        "`prysmai traces show TRACE_ID` prints one in full.",
        usage="prysmai traces [options]\n       prysmai traces show TRACE_ID [--json] [--db PATH] [--project NAME]",
    )
    add_db(traces)
    _add_filters(traces)
    traces.add_argument(
        "--sort", choices=("time", "latency", "ttft", "tokens", "cost"), default="time", help="order (default time)"
    )
    traces.add_argument("--order", choices=("desc", "asc"), default="desc", help="descending (default) or ascending")
    traces.add_argument("--limit", type=int, default=50, help="rows per page, 1 to 1000 (default 50)")
    traces.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    traces.add_argument(
        "--all",
        action="store_true",
        help="every matching trace, a page after another (with --json: one trace per line, JSON Lines)",
    )
    traces.add_argument(
        "--format",
        choices=("table", "csv", "jsonl"),
        default="table",
        help="csv or jsonl: an export to stdout, streamed (every match with --all, else --limit rows); "
        'CSV is neutralised for spreadsheets, JSON Lines is exact (docs/proxy.md, "Export")',
    )
    traces.add_argument(
        "--fields",
        metavar="NAMES",
        help="with --format: comma-separated fields of the export, or 'all' (bodies included); "
        "default: every field but the bodies",
    )
    traces.set_defaults(handler=traces_command)
    # The help is the group's, not the choice's: argparse would otherwise list `show` twice.
    traces_sub = traces.add_subparsers(
        dest="traces_command",
        title="one trace",
        metavar="show TRACE_ID",
        help="one trace in full (the id, or a unique prefix of 8+ characters)",
    )
    show = traces_sub.add_parser(
        "show",
        description="Print one trace in full.",
        usage="prysmai traces show TRACE_ID [--json] [--db PATH] [--project NAME]",
    )
    show.add_argument("trace_id", metavar="TRACE_ID", help="the id, or a unique prefix of 8+ hex characters")
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
    stats.add_argument(
        "--budgets",
        action="store_true",
        help="each project's spend this month against its monthly_budget_usd, its last minute against "
        "requests_per_minute, and the 429s its limits gave (since --since, default this month); "
        "the limits come from --config",
    )
    add_config(stats)
    stats.set_defaults(handler=stats_command)


def _filters(args: argparse.Namespace) -> TraceFilter | None:
    """The command's filter flags as a :class:`~..store.TraceFilter` (``None`` after an error)."""
    from ..asgi import Query
    from ..store import TraceFilter

    if getattr(args, "project", None) == "":
        fail(args, "--project: give a project's name (leave the flag out for every project)", "invalid_parameter", 2)
        return None
    pairs = [(name, getattr(args, flag)) for flag, name in _FILTER_FLAGS.items() if getattr(args, flag, None)]
    pairs += [("meta", m) for m in getattr(args, "meta", None) or []]
    try:
        return TraceFilter.from_query(Query(pairs))
    except ValueError as exc:
        message = str(exc)
        for name in ("since", "until", "meta"):  # the flag, as the user typed it
            if message.startswith(name + ":"):
                message = "--" + message
        for name in _FILTER_FLAGS:
            if "_" in name:  # the flag, as the user typed it: --score-min, --http-status...
                message = message.replace(name, "--" + name.replace("_", "-"))
        fail(args, message, "invalid_parameter", 2)
        return None


def _unknown_project(args: argparse.Namespace, store: Any, f: TraceFilter) -> int | None:
    """Exit status 2 after saying ``f``'s project has no trace in the store; ``None`` if it has."""
    from ..store.queries import project_exists, projects

    if f.project is None or store.read_sync(project_exists, f.project):
        return None
    known = ", ".join(store.read_sync(projects)) or "none yet"
    return fail(args, f"unknown project {f.project!r}: this store has traces of {known}", "unknown_project", 2)


def _nothing(f: TraceFilter) -> str:
    from ..store import TraceFilter

    filtered = f != TraceFilter()
    return "No traces" + (" match these filters." if filtered else " yet: send a request through the proxy.")


def traces_command(args: argparse.Namespace) -> int:
    import contextlib

    from ..api import jsonshape
    from ..store import QueryTimeout
    from ..store.queries import MAX_LIMIT, count_traces
    from ..store.scores import list_traces
    from .report import safe, traces_table

    f = _filters(args)
    if f is None:
        return 2
    if not 1 <= args.limit <= MAX_LIMIT:
        return fail(args, f"--limit must be a whole number from 1 to {MAX_LIMIT}", "invalid_parameter", 2)
    plan = _export_plan(args)
    if plan is False:
        return 2
    store, status = open_store(args)
    if store is None:
        return status
    with store:
        unknown = _unknown_project(args, store, f)
        if unknown is not None:
            return unknown
        if plan is not None:
            return _export(args, store, f, plan)
        cursor = args.cursor
        shown = 0
        while True:
            try:
                rows, cursor = store.read_sync(
                    list_traces,
                    f,
                    sort=args.sort,
                    descending=args.order == "desc",
                    cursor=cursor,
                    limit=MAX_LIMIT if args.all else args.limit,
                )
            except ValueError as exc:
                return fail(args, ("--cursor: " if "cursor" in str(exc) else "") + str(exc), "invalid_parameter", 2)
            if args.all and args.json:
                for r in rows:
                    print(jsonshape.dumps(jsonshape.trace(r), pretty=False), flush=True)
            elif args.json:
                total = None
                with contextlib.suppress(QueryTimeout):  # (as the read API: no total, rather than no page)
                    total = store.read_sync(count_traces, f)
                print(jsonshape.dumps(jsonshape.trace_list(rows, cursor, total)))
            elif rows:
                print(("\n" if shown else "") + traces_table(rows), flush=True)
            shown += len(rows)
            if not args.all or cursor is None:
                break
    if not args.json:
        if not shown:
            print(_nothing(f))
        elif cursor is not None:
            print(f"\n{shown} trace(s) shown; the next page: add --cursor {safe(cursor)}")
    return 0


def _export_plan(args: argparse.Namespace) -> Any:
    """The export ``--format`` asks for: a :class:`~..api.download.Plan`, ``None`` for a table or
    ``--json``, ``False`` after an error."""
    from ..api.download import Plan, parse_fields

    if args.format == "table":
        if args.fields is not None:
            fail(args, "--fields applies to an export: add --format csv or --format jsonl", "invalid_parameter", 2)
            return False
        return None
    if args.json:
        fail(args, "--json and --format: choose one (--all --json is JSON Lines too)", "invalid_parameter", 2)
        return False
    try:
        fields = parse_fields(args.fields)
    except ValueError as exc:
        fail(args, "--" + str(exc), "invalid_parameter", 2)
        return False
    sort = {"time": "created_at"}.get(args.sort, args.sort)
    return Plan(args.format, fields, sort, args.order == "desc", args.cursor, None if args.all else args.limit)


def _export(args: argparse.Namespace, store: Any, f: TraceFilter, plan: Any) -> int:
    """Write the export to stdout chunk by chunk (memory holds one chunk)."""
    import sys

    from ..api.download import chunks_sync

    out = sys.stdout.buffer
    try:
        for chunk in chunks_sync(store, f, plan):
            out.write(chunk)
            out.flush()
    except ValueError as exc:  # a cursor of another listing, before anything was written
        return fail(args, ("--cursor: " if "cursor" in str(exc) else "") + str(exc), "invalid_parameter", 2)
    except BrokenPipeError:  # (| head): the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def show_command(args: argparse.Namespace) -> int:
    from ..api import jsonshape
    from ..store.scores import trace_with_scores as get_trace
    from .report import trace_detail

    project = getattr(args, "project", None)
    if project == "":
        return fail(args, "--project: give a project's name", "invalid_parameter", 2)
    store, status = open_store(args)
    if store is None:
        return status
    with store:
        if project is not None:
            from ..store import TraceFilter

            unknown = _unknown_project(args, store, TraceFilter(project=project))
            if unknown is not None:
                return unknown
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
    if args.budgets:
        taken = ("project", "since", "until")
        for flag in [*_FILTER_FLAGS, "meta"]:
            if flag not in taken and getattr(args, flag, None):
                name = "--" + flag.replace("_", "-")
                message = f"{name} does not apply to --budgets, which takes --project, --since and --until"
                return fail(args, message, "invalid_parameter", 2)
        return _budgets(args, f)
    store, status = open_store(args)
    if store is None:
        return status
    with store:
        unknown = _unknown_project(args, store, f)
        if unknown is not None:
            return unknown
        # Aggregated by the database from the hourly rollups: constant memory, whatever the store's size.
        result = store.read_sync(stats, f)
    if args.json:
        print(jsonshape.dumps(jsonshape.stats(result)))
    elif not result["requests"]:
        print(_nothing(f))
    else:
        print(stats_text(result))
    return 0


def _budgets(args: argparse.Namespace, f: TraceFilter) -> int:
    """``prysmai stats --budgets``: the budgets read of the API (:mod:`..store.budgets`), from the
    store, with the limits of the config file (none without one: the spend is still shown)."""
    import time

    from ..api import jsonshape
    from ..store import budgets
    from ..store.queries import pick_bucket
    from .report import budgets_text

    path = config_path(args)
    limits: dict[str, Any] = {}
    if path is not None:
        try:
            from ..config import file as projectconfig
        except ImportError:  # Python < 3.11 without the proxy extra, which brings tomli
            message = "reading a config file needs the proxy's extra: pip install 'prysmai[proxy]'"
            return fail(args, message, "invalid_config", 2)
        try:
            # Only the limits are read: the proxy's secrets need not be set where this runs.
            tenancy = projectconfig.load(path, secrets=False)
        except (projectconfig.ConfigError, OSError) as exc:
            return fail(args, str(exc), "invalid_config", 2)
        limits = {name: p.limits for name, p in tenancy.projects.items()}
        if f.project is not None and f.project not in limits:
            names = ", ".join(sorted(limits))
            return fail(args, f"{path} has no project {f.project!r} (its projects: {names})", "unknown_project", 2)
    store, status = open_store(args)
    if store is None:
        return status
    now = time.time()
    since = budgets.month_start(now) if f.since is None else f.since
    with store:
        if path is None:
            unknown = _unknown_project(args, store, f)
            if unknown is not None:
                return unknown
        doc = store.read_sync(
            budgets.budgets,
            {k: v for k, v in limits.items() if f.project in (None, k)},
            now=now,
            project=f.project,
            since=since,
            until=f.until,
            bucket=pick_bucket(since, f.until, now),
        )
    print(jsonshape.dumps(doc) if args.json else budgets_text(doc, limits_known=path is not None))
    return 0
