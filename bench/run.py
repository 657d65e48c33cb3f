"""Run the benchmarks, echo their JSON lines, then print the table (Markdown) with the targets.

    python bench/run.py --quick                       # CI: a few rounds, no peer (< 3 minutes)
    python bench/run.py --peer litellm --openai 1.109.1 --openai 2.54.0   # the README's table

Each benchmark runs as its own process and prints one JSON line per measurement; this script
collects them (also into ``--json-out``), and the table shows medians over rounds and ratios
taken within the same run. It fails (exit 1) when a benchmark crashes, a request fails, a client
is not routed where it should be or a trace is lost; it never fails on a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, REPO_DIR, VENVS_DIR, machine_info, median

QUICK = {
    "sdk": ["--rounds", "6", "--calls", "10", "--stream-calls", "3"],
    "activation": ["--runs", "8", "--warmup", "1", "--instrument-runs", "3"],
    "proxy": ["--rounds", "2", "--seq-requests", "200", "--stream-requests", "20", "--load-requests", "400"],
    "dashboard": ["--quick"],
    "export": ["--quick"],
    "sustained": ["--seconds", "5"],
}
FULL = {
    "sdk": ["--rounds", "60", "--calls", "25", "--stream-calls", "6"],
    "activation": ["--runs", "60"],
    "proxy": ["--rounds", "5"],
    "dashboard": [],
    "export": ["--rows", "1000000", "--rounds", "4"],
    "sustained": ["--seconds", "60"],
}


# -- running -------------------------------------------------------------------------------------
def openai_python(version: str) -> str:
    """A virtualenv with openai==version (and prysmai's other dependencies), made once."""
    venv = VENVS_DIR / f"openai-{version}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        print(f"installing openai=={version} into {venv} ...", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"openai=={version}", "wrapt>=1.14", "httpx>=0.27"],
            check=True,
            timeout=1800,
        )
        marker.write_text(version)
    return str(python)


def run_bench(name: str, cmd: list[str], env: dict[str, str] | None, sink: list[dict[str, Any]]) -> bool:
    """Run one benchmark, echo and collect its JSON lines; True when it exited 0."""
    print(f"# {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=str(BENCH_DIR))
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if not line:
            continue
        print(line, flush=True)
        with contextlib.suppress(ValueError):
            sink.append(json.loads(line))
    code = proc.wait()
    print(f"# {name}: exit {code} after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return code == 0


# -- the table -----------------------------------------------------------------------------------
def _f(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _pct(r: dict[str, Any]) -> str:
    lo, hi = (r["ratio_p25"] - 1.0) * 100.0, (r["ratio_p75"] - 1.0) * 100.0
    return f"{r['us_per_call']:.1f} µs, **{r['added_pct']:+.2f} %** [{lo:+.1f}, {hi:+.1f}]"


def sdk_table(records: list[dict[str, Any]], verdicts: list[tuple[str, str, str]]) -> list[str]:
    rows = [r for r in records if r.get("bench") == "sdk"]
    if not rows:
        return []
    out = [
        "### SDK per-call overhead (in-memory transport; CPU time per call; medians over rounds)",
        "",
        "| openai | transport | mode | raw | by hand to proxy | monitor() | instrument() + context | "
        "monitor vs by hand | instrument vs by hand |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys: list[tuple[str, str, str, bool]] = []
    for r in rows:
        key = (r["openai"], r["lane"], r["mode"], r["stream"])
        if key not in keys:
            keys.append(key)
    worst = {"monitor": float("-inf"), "instrument": float("-inf")}
    for key in keys:
        by = {r["variant"]: r for r in rows if (r["openai"], r["lane"], r["mode"], r["stream"]) == key}
        mode = f"{key[2]}{' stream' if key[3] else ''}"
        cells = [key[0], key[1], mode, f"{by['raw']['us_per_call']:.1f} µs"]
        for variant in ("manual", "monitor", "instrument"):
            found = by.get(variant)
            cells.append("n/a" if found is None else _pct(found))
            if found is not None and variant != "manual":
                worst[variant] = max(worst[variant], found["added_pct"])
        for variant in ("monitor", "instrument"):
            found = by.get(variant)
            cells.append(
                "n/a"
                if found is None or "added_vs_manual_pct" not in found
                else f"{found['added_vs_manual_pct']:+.2f} %"
            )
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "Each cell: CPU µs per call, **added vs raw** = median over rounds of (variant / raw) - 1, and in "
        "brackets the interquartile range of that ratio. *By hand to proxy* is openai pointed at the proxy "
        "without prysmai (Prysm key, proxy base URL, 120 s timeout): the last two columns are what "
        "prysmai's own hooks cost on top of that.",
        "",
    ]
    for variant, label in (("monitor", "monitor()"), ("instrument", "instrument() + context")):
        figures = [r["added_pct"] for r in rows if r["variant"] == variant]
        verdicts.append(
            (
                f"SDK: ≤ 1 % added per call, {label}",
                f"worst row {worst[variant]:+.2f} %, median of rows {median(figures):+.2f} %",
                _verdict(worst[variant] <= 1.0),
            )
        )
    return out


def activation_table(records: list[dict[str, Any]], verdicts: list[tuple[str, str, str]]) -> list[str]:
    rows = {r["variant"]: r for r in records if r.get("bench") == "activation"}
    if not rows:
        return []
    labels = {
        "bare": "`python -c pass`",
        "auto": "`python -c pass` with PRYSM_AUTO=1 (as `prysmai run`)",
        "import": "`python -c 'import prysmai'`",
        "openai": "`python -c 'import openai'`",
        "auto_openai": "`python -c 'import openai'` with PRYSM_AUTO=1",
    }
    out = [
        "### Activation cost (fresh interpreter to exit; median of runs; added = median of paired differences)",
        "",
        "| run | median ms | added ms (IQR) | vs |",
        "|---|---:|---:|---|",
    ]
    for name, label in labels.items():
        r = rows.get(name)
        if r is None:
            continue
        cell = f"{r['added_ms']:+.2f} ({r['added_p25_ms']:+.2f} … {r['added_p75_ms']:+.2f})" if "added_ms" in r else ""
        out.append(f"| {label} | {r['median_ms']:.2f} | {cell} | {r.get('baseline', '')} |")
    call = rows.get("instrument_call")
    if call is not None:
        out.append(
            f"| `import prysmai; prysmai.instrument()` timed in-process after `import openai` "
            f"(the work deferred to openai's import) | {call['median_ms']:.2f} | "
            f"({call['p25_ms']:.2f} … {call['p75_ms']:.2f}) | |"
        )
    check = rows.get("check", {})
    out += [
        "",
        f"Under activation, at start-up: openai imported: **{check.get('openai_imported')}**; modules added: "
        f"{check.get('modules_added')} ({', '.join(check.get('prysmai_modules', []))}); after `import openai`, "
        f"instrumentation in effect: **{check.get('instrumented_after_import')}**.",
        "",
    ]
    auto = rows.get("auto", {})
    added: float | None = auto.get("added_ms")
    verdicts.append(
        (
            "Activation: ≤ 3 ms added to interpreter start",
            f"{added:+.2f} ms" if added is not None else "n/a",
            _verdict(added <= 3.0 if added is not None else None),
        )
    )
    verdicts.append(
        (
            "Activation: openai not imported",
            f"imported: {check.get('openai_imported')}",
            _verdict(check.get("openai_imported") is False if check else None),
        )
    )
    verdicts.append(
        (
            "Activation: openai instrumented once the app imports it (correctness, not a timing)",
            f"instrumented: {check.get('instrumented_after_import')}",
            _verdict(check.get("instrumented_after_import") is True if check else None),
        )
    )
    return out


def _per_round(rows: list[dict[str, Any]], metric: str, target: str, field: str) -> dict[int, float]:
    return {
        r["round"]: r[field]
        for r in rows
        if r.get("metric") == metric and r.get("target") == target and r.get(field) is not None
    }


def _med(rows: list[dict[str, Any]], metric: str, target: str, field: str) -> float | None:
    values = list(_per_round(rows, metric, target, field).values())
    return median(values) if values else None


def _added(rows: list[dict[str, Any]], metric: str, target: str, field: str, base: str = "direct") -> float | None:
    a = _per_round(rows, metric, target, field)
    b = _per_round(rows, metric, base, field)
    diffs = [a[k] - b[k] for k in a if k in b]
    return median(diffs) if diffs else None


def _ratio(rows: list[dict[str, Any]], metric: str, target: str, field: str, base: str) -> float | None:
    a = _per_round(rows, metric, target, field)
    b = _per_round(rows, metric, base, field)
    ratios = [a[k] / b[k] for k in a if b.get(k)]
    return median(ratios) if ratios else None


def proxy_table(records: list[dict[str, Any]], verdicts: list[tuple[str, str, str]]) -> list[str]:
    rows = [r for r in records if r.get("bench") == "proxy" and "metric" in r]
    if not rows:
        return []
    order = ("direct", "prysm", "floor-httpx", "floor-aiohttp", "litellm")
    targets = [t for t in order if any(r["target"] == t for r in rows)]
    memory = {r["target"]: r for r in records if r.get("bench") == "proxy" and r.get("event") == "memory"}
    trace = next((r for r in records if r.get("bench") == "proxy" and r.get("event") == "traces"), None)
    names = {
        "direct": "direct (no proxy)",
        "prysm": "prysmai proxy",
        "floor-httpx": "bare pass-through, httpx",
        "floor-aiohttp": "bare pass-through, aiohttp",
        "litellm": "LiteLLM proxy",
    }
    out = [
        "### Proxy overhead (loopback fake upstream; medians over rounds; added = target - direct in the same round)",
        "",
        "| | " + " | ".join(names[t] for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]

    def row(label: str, cells: list[str]) -> None:
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    for q in ("p50", "p95", "p99"):
        row(f"sequential latency {q} ms", [_f(_med(rows, "seq", t, f"{q}_ms"), 3) for t in targets])
    for q in ("p50", "p95", "p99"):
        row(
            f"sequential **added** {q} ms",
            ["" if t == "direct" else _f(_added(rows, "seq", t, f"{q}_ms"), 3) for t in targets],
        )
    row("streamed TTFT p50 ms", [_f(_med(rows, "stream", t, "ttft_p50_ms"), 3) for t in targets])
    row(
        "streamed TTFT **added** p50 ms",
        ["" if t == "direct" else _f(_added(rows, "stream", t, "ttft_p50_ms"), 3) for t in targets],
    )
    row("gap per chunk p50 ms (upstream: 1 ms)", [_f(_med(rows, "stream", t, "gap_p50_ms"), 3) for t in targets])
    row(
        "**added** delay per chunk ms",
        ["" if t == "direct" else _f(_added(rows, "stream", t, "gap_p50_ms"), 3) for t in targets],
    )
    for metric in ("c16", "c64"):
        row(f"throughput at {metric[1:]} connections, req/s", [_f(_med(rows, metric, t, "rps"), 0) for t in targets])
        row(f"p99 at {metric[1:]} connections, ms", [_f(_med(rows, metric, t, "p99_ms"), 2) for t in targets])
    for metric, label in (("seq", "sequential"), ("c64", "64 connections")):
        row(
            f"proxy CPU µs per request ({label})",
            ["" if t == "direct" else _f(_med(rows, metric, t, "cpu_us_per_req"), 0) for t in targets],
        )
    row(
        "peak RSS MiB",
        [
            ("upstream " if t == "direct" else "") + _f(memory.get(t, {}).get("peak_rss_mib"), 1)
            if t in memory
            else "n/a"
            for t in targets
        ],
    )
    if "prysm" in targets and "floor-httpx" in targets:
        capture = _added(rows, "seq", "prysm", "p50_ms", base="floor-httpx")
        ttft_capture = _added(rows, "stream", "prysm", "ttft_p50_ms", base="floor-httpx")
        out.append(
            "| capture cost: prysmai proxy - bare httpx pass-through, p50 ms (sequential / TTFT) | "
            + " | ".join(f"{_f(capture, 3)} / {_f(ttft_capture, 3)}" if t == "prysm" else "" for t in targets)
            + " |"
        )
    errors = {t: sum(int(r.get("errors", 0)) for r in rows if r["target"] == t) for t in targets}
    row("failed requests", [str(errors[t]) for t in targets])
    if trace is not None:
        out += [
            "",
            f"Trace check (prysmai proxy stopped with SIGTERM, then `prysmai traces --json`): "
            f"{trace['sent']} requests sent, {trace['traces']} traces stored: "
            f"**{'exactly one per request' if trace['ok'] else 'MISMATCH'}**.",
        ]
    out.append("")

    if "prysm" in targets:
        added = _added(rows, "seq", "prysm", "p50_ms")
        verdicts.append(
            (
                "Proxy: sequential added p50 ≤ 1 ms",
                f"{_f(added, 3)} ms",
                _verdict(added <= 1.0 if added is not None else None),
            )
        )
        if "litellm" in targets:
            peer = _added(rows, "seq", "litellm", "p50_ms")
            ok = added is not None and peer is not None and added <= peer / 3.0
            verdicts.append(
                (
                    "Proxy: added p50 ≤ ⅓ of LiteLLM's (same run)",
                    f"{_f(added, 3)} vs {_f(peer, 3)} ms (ratio {_f(added / peer if added and peer else None, 3)})",
                    _verdict(ok if added is not None and peer is not None else None),
                )
            )
        ttft = _added(rows, "stream", "prysm", "ttft_p50_ms")
        verdicts.append(
            ("Proxy: TTFT added ≤ 1 ms", f"{_f(ttft, 3)} ms", _verdict(ttft <= 1.0 if ttft is not None else None))
        )
        if "litellm" in targets:
            ratio = _ratio(rows, "c64", "prysm", "rps", "litellm")
            verdicts.append(
                (
                    "Proxy: throughput at 64 ≥ 2x LiteLLM's",
                    f"{_f(ratio, 2)}x",
                    _verdict(ratio >= 2.0 if ratio is not None else None),
                )
            )
        if trace is not None:
            verdicts.append(
                (
                    "Proxy: no trace lost",
                    f"{trace['traces']} / {trace['sent']}",
                    _verdict(bool(trace["ok"])),
                )
            )
    return out


def sustained_table(records: list[dict[str, Any]], verdicts: list[tuple[str, str, str]]) -> list[str]:
    rows = [r for r in records if r.get("bench") == "sustained"]
    if not rows:
        return []
    out = [
        "### Sustained load (`sustained_load.py`: 64 connections, `--when-behind drop`, then SIGTERM)",
        "",
        "| seconds | req/s | p99 ms | answered | traces stored | dropped | lost | max queued | proxy CPU s/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {_f(r['seconds'], 1)} | {_f(r['rps'], 0)} | {_f(r['p99_ms'], 1)} | {r['answered']} | "
            f"{r['stored']} | {r['dropped']} | {r['lost']} | {r['max_queued']} | {_f(r['proxy_cpu_s_per_s'], 2)} |"
        )
        verdicts.append(
            (
                f"Proxy: sustained load, every answered request stored ({_f(r['seconds'], 0)} s)",
                f"{r['stored']} / {r['answered']}, {r['dropped']} dropped",
                _verdict(bool(r["ok"]) and not r["dropped"]),
            )
        )
    out.append("")
    return out


def render(records: list[dict[str, Any]], header: dict[str, Any]) -> str:
    verdicts: list[tuple[str, str, str]] = []
    body = sdk_table(records, verdicts) + activation_table(records, verdicts) + proxy_table(records, verdicts)
    body += sustained_table(records, verdicts)
    lines = [
        f"## Results ({header['mode']} run, {header['date']})",
        "",
        f"Machine: {header['machine']['cpu']}, {header['machine']['cores']} cores; Python "
        f"{header['machine']['python']}; event loop {header['loop']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in header["versions"].items() if v)
        + ".",
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in verdicts]
    lines.append("")
    return "\n".join(lines + body)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("prysmai", "openai", "httpx2", "httpx", "uvicorn", "starlette", "uvloop", "httptools"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few rounds, no peer: for CI")
    parser.add_argument(
        "--only",
        action="append",
        choices=["sdk", "activation", "proxy", "sustained", "dashboard", "export"],
        help="default: all (dashboard and export, at 1M traces, only with --only; --quick runs their small checks)",
    )
    parser.add_argument("--peer", action="append", choices=["litellm"], default=[])
    parser.add_argument("--openai", action="append", default=[], metavar="VERSION", help="also this openai")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare pass-through targets")
    parser.add_argument("--json-out", type=Path, help="write every JSON line here too")
    parser.add_argument("--table-out", type=Path, help="write the Markdown table here too")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier --json-out; run nothing")
    args = parser.parse_args(argv)
    if args.quick and args.peer:
        parser.error("--quick runs no peer")
    if args.from_json:
        lines = [json.loads(line) for line in args.from_json.read_text().splitlines() if line.strip()]
        print(render([r for r in lines if "header" not in r], lines[0]["header"]))
        return 0
    sizes = QUICK if args.quick else FULL
    only = args.only or ["sdk", "activation", "proxy", "sustained", *(["dashboard", "export"] if args.quick else [])]
    py = sys.executable
    records: list[dict[str, Any]] = []
    ok = True
    start = time.monotonic()

    if "sdk" in only:
        ok &= run_bench("sdk", [py, "sdk_overhead.py", *sizes["sdk"]], None, records)
        for version in args.openai:
            env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
            other = openai_python(version)
            ok &= run_bench(f"sdk openai {version}", [other, "sdk_overhead.py", *sizes["sdk"]], env, records)
    if "activation" in only:
        ok &= run_bench("activation", [py, "activation.py", *sizes["activation"]], None, records)
    if "proxy" in only:
        extra = [arg for name in args.peer for arg in ("--peer", name)]
        if not args.quick and not args.no_floor:
            extra += ["--floor", "httpx"]
            if importlib.util.find_spec("aiohttp") is not None:
                extra += ["--floor", "aiohttp"]
        ok &= run_bench("proxy", [py, "proxy_overhead.py", *sizes["proxy"], *extra], None, records)
    if "dashboard" in only:  # its own table (bench/README.md, "Dashboard at scale"), on stderr
        ok &= run_bench("dashboard", [py, "dashboard_scale.py", *sizes["dashboard"]], None, records)
    if "export" in only:  # an export of every trace: the proxy's RSS and its request path meanwhile
        ok &= run_bench("export", [py, "export_scale.py", *sizes["export"]], None, records)
    if "sustained" in only:
        ok &= run_bench("sustained", [py, "sustained_load.py", *sizes["sustained"]], None, records)

    from _common import loop_name

    header: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "loop": loop_name(),
        "versions": versions(),
    }
    for r in records:
        if r.get("event") == "targets":
            header["versions"].update(r.get("versions", {}))
    table = render(records, header)
    print()
    print(table)
    print(f"(benchmarks took {time.monotonic() - start:.0f} s)")
    if args.json_out:
        args.json_out.write_text("".join(json.dumps(r) + "\n" for r in [{"header": header}, *records]))
    if args.table_out:
        args.table_out.write_text(table + "\n")
    if not ok:
        print("bench: a benchmark failed (see above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
