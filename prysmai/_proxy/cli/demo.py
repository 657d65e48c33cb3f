"""``prysmai demo``: the whole product on one machine in a few seconds.

Starts the proxy on a free port with a fresh store and the offline model (or the real provider
with ``--real``), runs a small sample app under ``prysmai.instrument()`` and prints what the proxy
captured.

Imported on every ``prysmai`` invocation (for its parser): standard library only at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile

from ..config.settings import DEFAULT_UPSTREAM, DEMO_UPSTREAM, UPSTREAM_KEY_ENV
from .common import LOOPBACK, needs_extra

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_MODEL = "gpt-4o-mini"


def add_parser(subparsers: Any) -> None:
    """Add ``demo`` to ``prysmai``."""
    demo = subparsers.add_parser(
        "demo",
        help="start a proxy with the offline model, run a sample app through it, show the traces",
        description=(
            "Start the proxy in-process on a free port with a fresh store and the built-in offline model, "
            "run a small app under prysmai.instrument() (plain, streamed, async, and per-user calls), "
            "then print the captured traces and stats. No network, no account."
        ),
    )
    demo.add_argument("--real", action="store_true", help=f"use the real provider ({UPSTREAM_KEY_ENV} required)")
    demo.add_argument("--model", default=None, help="model for the sample calls (default gpt-4o-mini)")
    demo.add_argument(
        "--db",
        "--keep-db",
        dest="keep_db",
        metavar="PATH",
        help="write the traces to PATH and keep them (default: a temporary store); a store kept from an "
        "earlier run is added to",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: a free one); the same port keeps the URL"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then keep the proxy and its dashboard running (prints the URL and a key to log in; Ctrl+C stops)",
    )
    demo.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    status = needs_extra()
    if status is not None:
        return status
    if not 0 <= args.port <= 65535:
        print(f"prysmai demo: --port must be from 0 to 65535, not {args.port}", file=sys.stderr)
        return 2
    return run_demo(
        real=args.real, keep_db=args.keep_db, model=args.model, serve=args.serve, host=args.host, port=args.port
    )


def sample_app(model: str, say: Any = print) -> None:
    """An ordinary OpenAI app: it knows nothing of Prysm except ``prysm_context`` tags."""
    import openai

    import prysmai

    client = openai.OpenAI()
    question = [{"role": "user", "content": "In one sentence: why trace LLM calls?"}]

    answer = client.chat.completions.create(model=model, messages=question)  # type: ignore[arg-type]
    say(f"  plain call     -> {answer.choices[0].message.content}")

    stream = client.chat.completions.create(model=model, messages=question, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # type: ignore[union-attr]
    say(f"  streamed call  -> {text}")

    async def async_call() -> str:
        async with openai.AsyncOpenAI() as aclient:
            r = await aclient.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "And asynchronously?"}]
            )
            return r.choices[0].message.content or ""

    say(f"  async call     -> {asyncio.run(async_call())}")

    for user, session, feature in (("alice", "session-a1", "search"), ("bob", "session-b7", "summarise")):
        with prysmai.prysm_context(user_id=user, session_id=session, metadata={"feature": feature}):
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Hello, I am {user}."}]
            )
        say(f"  as {user:<10}  -> {r.choices[0].message.content}")

    # A tool call and its answer, in alice's session.
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search_docs",
                "description": "Search the documentation",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
            },
        }
    ]
    with prysmai.prysm_context(user_id="alice", session_id="session-a1", metadata={"feature": "search"}):
        turn: list[Any] = [
            {"role": "system", "content": "You answer from the docs."},
            {"role": "user", "content": "How do I see my traces?"},
        ]
        r = client.chat.completions.create(model=model, messages=turn, tools=tools)  # type: ignore[arg-type]
        call = (r.choices[0].message.tool_calls or [])[0]
        say(f"  tool call      -> {call.function.name}({call.function.arguments})")  # type: ignore[union-attr]
        turn += [
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Open the dashboard: prysmai demo --serve"},
        ]
        r = client.chat.completions.create(model=model, messages=turn, tools=tools)  # type: ignore[arg-type]
        say(f"  tool result    -> {r.choices[0].message.content}")

    try:  # an error: the provider refuses a request without messages
        client.chat.completions.create(model=model, messages=[])
    except openai.BadRequestError as exc:
        say(f"  bad request    -> {exc.status_code} (captured as an error trace)")


def _keep_serving(url: str, key: str) -> None:
    """``--serve``: keep the proxy and its dashboard up until Ctrl+C (or SIGTERM)."""
    import signal
    import threading

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:  # Ctrl+C may come while the lines below are printed, too
        print(f"\nDashboard: {url}/  (log in with the demo's key: {key})", flush=True)
        print(f"The proxy stays up at {url}/api/v1; Ctrl+C stops it and prints the captured traces.", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Traces listed when the demo ends (the totals are of every trace).
SHOWN = 100


def run_demo(
    real: bool = False,
    keep_db: str | None = None,
    model: str | None = None,
    serve: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
) -> int:
    import prysmai

    from ..config.keys import generate_key
    from ..config.settings import ProxyConfig
    from ..server.serve import BackgroundServer
    from ..store import Store, TraceFilter
    from ..store.queries import list_traces, stats
    from .report import stats_text, traces_table

    upstream_key = os.environ.get(UPSTREAM_KEY_ENV) or None
    if real and not upstream_key:
        print(f"prysmai demo --real: set {UPSTREAM_KEY_ENV} to your provider key first.", file=sys.stderr)
        return 2
    tmpdir = None if keep_db else tempfile.mkdtemp(prefix="prysmai-demo-")
    db_path = keep_db or os.path.join(tmpdir or ".", "traces.db")
    key = generate_key()
    config = ProxyConfig(
        keys=[key],
        db_path=db_path,
        upstream=DEFAULT_UPSTREAM if real else DEMO_UPSTREAM,
        upstream_api_key=upstream_key if real else None,
        host=host,
        port=port,
    )
    model = model or DEFAULT_MODEL
    # The sample app's clients must target OpenAI's default URL (what instrument() redirects) and
    # need some API key to be constructed; neither setting leaves this process.
    saved = {name: os.environ.get(name) for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    os.environ.pop("OPENAI_BASE_URL", None)
    os.environ.setdefault("OPENAI_API_KEY", "sk-demo-unused")
    try:
        try:
            server = BackgroundServer(config).start()
        except (RuntimeError, OSError) as exc:
            print(f"prysmai demo: cannot listen on {host}:{port} ({exc}); pick another --port", file=sys.stderr)
            return 1
        try:
            where = "the real provider" if real else "the built-in offline model (prysm-demo)"
            print(f"Prysm demo: a proxy on {server.base_url} in front of {where}.")
            if host not in LOOPBACK:
                print(f"(Listening on {host}: anyone who can reach it and has the key below can use it.)")
            print(f"Running a sample app under prysmai.instrument() with model {model}:\n")
            prysmai.instrument(prysm_key=key, base_url=server.base_url)
            try:
                sample_app(model)
            finally:
                prysmai.uninstrument()
            if serve:
                server.app.store.flush(10.0)
                _keep_serving(server.url, key)
        finally:
            server.stop()
        # Stopping the server wrote every pending trace.
        store = Store.existing(db_path, read_time_limit=None)
        if store is None:  # pragma: no cover
            print("No trace store was written.", file=sys.stderr)
            return 1
        with store:
            traces, _ = store.read_sync(list_traces, TraceFilter(), limit=SHOWN)
            totals = store.read_sync(stats, TraceFilter())
        count = totals["requests"]
        shown = f" (the newest {len(traces)} below)" if count > len(traces) else ""
        print(f"\nCaptured {count:,} trace(s){shown}:\n")
        print(traces_table(list(reversed(traces))))
        print("\nStats:\n")
        print(stats_text(totals))
        if not real:
            models = sorted(m for m in totals["by_model"] if m != "(none)")
            named = ", ".join(models) if models else model
            what = "the model" if len(models) <= 1 else "each model"
            print(f"\n(Offline model: costs are what {what} named in the requests ({named}) would have cost.)")
        if keep_db:
            print(f"\nTraces kept in {db_path}: try `prysmai traces --db {db_path}`.")
        if not serve:
            print("\nSee them in the browser: `prysmai demo --serve` keeps the proxy and its dashboard up.")
        print("\nNext: `prysmai proxy` serves this for real; `prysmai proxy --help` has the essentials.")
        return 0
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
