"""Terminal output for ``prysmai traces`` / ``traces show`` / ``stats``: aligned plain text.

Captured values come from any key holder: every control character in them (C0, DEL, C1, line
separators, bidi overrides, unpaired surrogates) is shown as an escape (``\\x1b``, ``\\u202e``), as
in the proxy's log (one rule: :func:`..server.logs.escape`), so a trace can never retitle, clear or
recolour the operator's terminal. ``--json`` output is exact JSON, not this.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from ..api import costs
from ..server.logs import escape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

NONE = "-"


def safe(text: object, lines: bool = False) -> str:
    """``text`` with control characters escaped; ``lines=True`` keeps newlines and tabs."""
    return escape(str(text), lines)


def fmt_time(ts: float | None) -> str:
    """Local time with its UTC offset, e.g. ``2025-01-31 12:00:05+01:00`` (``TZ=UTC`` for UTC)."""
    if ts is None:
        return NONE
    local = datetime.fromtimestamp(ts).astimezone()
    offset = local.strftime("%z")  # +0100
    return local.strftime("%Y-%m-%d %H:%M:%S") + f"{offset[:3]}:{offset[3:5]}"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return NONE
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def fmt_int(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def _clip(text: str | None, width: int = 24) -> str:
    if not text:
        return NONE
    text = safe(text)
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns as wide as their widest cell; columns in ``right`` are right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def traces_table(traces: Sequence[dict[str, Any]]) -> str:
    """One line per trace; a PROJECT column when the traces are of more than one project."""
    projects = len({t.get("project") for t in traces}) > 1
    headers = [
        "ID",
        "TIME",
        "ENDPOINT",
        "MODEL",
        "STATUS",
        "LATENCY ms",
        "TTFT ms",
        "TOKENS",
        "COST",
        "USER",
        "SESSION",
        "KEY",
    ] + (["PROJECT"] if projects else [])
    rows = []
    for t in traces:
        status = t["status"] if t.get("http_status") in (None, 200) else f"{t['status']} {t['http_status']}"
        rows.append(
            [
                safe(t["id"][:12]),
                fmt_time(t.get("created_at")),
                safe(t.get("endpoint", "")) + (" (stream)" if t.get("stream") else ""),
                _clip(t.get("model")),
                safe(status),
                fmt_ms(t.get("latency_ms")),
                fmt_ms(t.get("ttft_ms")),
                fmt_int(t.get("total_tokens")),
                costs.trace_cost(t),
                _clip(t.get("user_id"), 20),
                _clip(t.get("session_id"), 20),
                safe(t.get("key_id") or NONE),
            ]
            + ([_clip(t.get("project"), 20)] if projects else [])
        )
    return render_table(headers, rows, right=(5, 6, 7, 8))


def _pretty_body(text: str | None) -> str:
    if text is None:
        return NONE
    try:
        # JSON escapes every control character inside strings (\u001b): nothing raw gets through.
        return safe(json.dumps(json.loads(text), indent=2, ensure_ascii=False), lines=True)
    except (ValueError, RecursionError):
        return safe(text, lines=True)


def _cost_detail(t: dict[str, Any]) -> str:
    status = costs.cost_status(t)
    if status == costs.PRICED:
        return costs.usd(float(t["cost_usd"]))
    if status == costs.UNPRICED:
        return "unpriced: no price for this model in the price table (unknown, never counted as $0)"
    return "no usage reported by the provider: nothing to price"


def trace_detail(t: dict[str, Any]) -> str:
    fields = [
        ("Trace", t["id"]),
        ("Time", fmt_time(t.get("created_at"))),
        ("Project", t.get("project") or NONE),
        ("Provider", t.get("provider") or NONE),
        ("Request", f"{t.get('method')} /api/v1/{t.get('endpoint')}" + ("  (streamed)" if t.get("stream") else "")),
        (
            "Model",
            f"{t.get('model') or NONE}"
            + (
                f"  (answered by {t['response_model']})"
                if t.get("response_model") and t.get("response_model") != t.get("model")
                else ""
            ),
        ),
        ("Status", f"{t.get('status')}  (HTTP {t.get('http_status') if t.get('http_status') is not None else NONE})"),
        ("Latency", f"{fmt_ms(t.get('latency_ms'))} ms"),
        ("TTFT", f"{fmt_ms(t.get('ttft_ms'))} ms" if t.get("ttft_ms") is not None else NONE),
        (
            "Tokens",
            f"prompt {fmt_int(t.get('prompt_tokens'))}, completion {fmt_int(t.get('completion_tokens'))}, "
            f"total {fmt_int(t.get('total_tokens'))}",
        ),
        ("Cost", _cost_detail(t)),
        ("User", t.get("user_id") or NONE),
        ("Session", t.get("session_id") or NONE),
        ("Metadata", json.dumps(t["metadata"], ensure_ascii=False) if t.get("metadata") is not None else NONE),
        ("Provider request id", t.get("provider_request_id") or NONE),
        ("Key", t.get("key_id") or NONE),
    ]
    if t.get("error"):
        fields.append(("Error", t["error"]))
    if t.get("notes"):
        fields.append(("Notes", "; ".join(t["notes"]) if isinstance(t["notes"], list) else str(t["notes"])))
    for score in t.get("scores") or ():
        comment = f'  "{score["comment"]}"' if score.get("comment") else ""
        fields.append(("Score", f"{score['name']} = {json.dumps(score['value'])}  by {score['key_id']}{comment}"))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {safe(v)}" for k, v in fields]
    lines += [
        "",
        "Request body:",
        _pretty_body(t.get("request_body")),
        "",
        "Response body:",
        _pretty_body(t.get("response_body")),
    ]
    return "\n".join(lines)


def stats_text(stats: dict[str, Any]) -> str:
    def pct(x: float) -> str:
        return f"{x * 100:.1f}%"

    # What the sum leaves out, each for what it is: requests of models without a price (their cost
    # is unknown), and requests that reported no usage (failed or cancelled: nothing to price).
    notes = []
    if stats["unpriced_requests"]:
        plus = "+ " if stats["cost_usd"] is not None else ""
        notes.append(f"{plus}{stats['unpriced_requests']:,} request(s) of models without a price")
    if stats.get("no_usage_requests"):
        notes.append(f"{stats['no_usage_requests']:,} request(s) reported no usage")
    if stats["cost_usd"] is not None:
        cost = costs.usd(stats["cost_usd"])
    else:
        cost = "unknown" if stats["unpriced_requests"] else "none reported"
    lines = [
        f"Requests      {stats['requests']:,}",
        f"Errors        {stats['errors']:,}  ({pct(stats['error_rate'])}: error or timeout)",
        f"Cancelled     {stats.get('cancelled', 0):,}  (the client went away first)",
        f"Tokens        {stats['total_tokens']:,}  "
        f"(prompt {stats['prompt_tokens']:,}, completion {stats['completion_tokens']:,})",
        f"Cost          {cost}" + (f"  ({'; '.join(notes)})" if notes else ""),
        f"Latency       p50 {fmt_ms(stats['latency_p50_ms'])} ms, p95 {fmt_ms(stats['latency_p95_ms'])} ms",
        f"TTFT          p50 {fmt_ms(stats['ttft_p50_ms'])} ms (streams)",
    ]
    store = stats.get("store")
    if store and store.get("dropped"):
        lines.append(f"Dropped       {store['dropped']:,} trace(s) lost to a full queue")

    def model_cost(s: dict[str, Any]) -> str:
        if s["cost_usd"] is None:
            return "unpriced" if s["unpriced_requests"] else "no usage"
        return costs.usd(s["cost_usd"]) + ("*" if s["unpriced_requests"] else "")

    rows = [
        [
            _clip(model, 32),
            fmt_int(s["requests"]),
            pct(s["error_rate"]),
            fmt_int(s["total_tokens"]),
            model_cost(s),
            fmt_ms(s["latency_p50_ms"]),
            fmt_ms(s["latency_p95_ms"]),
        ]
        for model, s in stats["by_model"].items()
    ]
    if rows:
        lines += [
            "",
            render_table(
                ["MODEL", "REQUESTS", "ERRORS", "TOKENS", "COST", "P50 ms", "P95 ms"], rows, right=(1, 2, 3, 4, 5, 6)
            ),
        ]
        footnotes = []
        if any(s["cost_usd"] is None and s["unpriced_requests"] for s in stats["by_model"].values()):
            footnotes.append("unpriced: no price for the model")
        if any(s["cost_usd"] is not None and s["unpriced_requests"] for s in stats["by_model"].values()):
            footnotes.append("*: some of its requests unpriced")
        if any(s["cost_usd"] is None and not s["unpriced_requests"] for s in stats["by_model"].values()):
            footnotes.append("no usage: its requests reported none (failed or cancelled)")
        if footnotes:
            lines.append("(" + "; ".join(footnotes) + ")")
    return "\n".join(lines)


def budgets_text(doc: dict[str, Any], limits_known: bool) -> str:
    """``prysmai stats --budgets``: one line per project (see :mod:`..store.budgets`)."""
    start = datetime.fromtimestamp(doc["month_start"], timezone.utc)
    days_in = (doc["as_of"] - doc["month_start"]) / 86400
    lines = [f"Month {start:%Y-%m} (UTC), {days_in:.1f} days in; the pace is the month's average per day so far."]
    if not limits_known:
        lines.append("Limits unknown: give the proxy's config file (--config or $PRYSM_CONFIG) to see them.")
    if not doc["projects"]:
        return "\n".join([*lines, "No spend and no limits' refusals this month."])
    rows = []
    for p in doc["projects"]:
        spend, rate, refused = p["spend"], p["rate"], p["refusals"]
        if spend["budget_usd"] is None:
            spent = costs.usd(spend["month_usd"])
            used = left = NONE
        else:
            spent = f"{costs.usd(spend['month_usd'])} of {costs.usd(spend['budget_usd'])}"
            used = f"{spend['used'] * 100:.1f}%"
            if spend["exhausted"]:
                left = "exhausted"
            elif spend["days_left"] is None:
                left = "no spend yet"
            else:
                left = f"{spend['days_left']:.1f}"
                if spend["runs_out_at"] is not None and spend["runs_out_at"] >= doc["month_end"]:
                    left += " (lasts the month)"
        per_minute = rate["requests_per_minute"]
        minute = fmt_int(rate["last_minute"]) + ("" if per_minute is None else f" of {per_minute:,}/min")
        if limits_known and not p["limited"]:
            spent += " (no limits)"
        rows.append(
            [
                _clip(p["project"], 32),
                spent,
                used,
                costs.usd(spend["pace_usd_per_day"]),
                left,
                minute,
                f"{refused['rate']:,} rate, {refused['budget']:,} budget",
            ]
        )
    headers = ["Project", "Spend this month", "Used", "Pace/day", "Days left", "Last minute", "429s (limits)"]
    return "\n".join(lines) + "\n\n" + render_table(headers, rows)
