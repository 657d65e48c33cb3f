"""The one JSON shape of what the CLI (``--json``) and the HTTP read API return.

Both print exactly these documents (docs/proxy.md, "JSON output"):

* a trace: ``{"object": "trace", "id": ..., ...}``; ``cost_status`` says what ``cost_usd`` is
  (``priced``; ``unpriced``: no price for the model; ``no_usage``: the provider reported no
  usage, see :mod:`.costs`); ``request_body`` / ``response_body`` are the
  body as a JSON value when it is JSON (an object, not JSON text inside a string), else the text,
  else ``null``; ``metadata`` an object or ``null``; ``notes`` a list; ``stream`` a boolean;
* a list: ``{"object": "list", "data": [...], "next_cursor": ...}`` (traces without bodies, or
  sessions or users); ``next_cursor`` is ``null`` on the last page; a list of traces also has
  ``total`` and ``total_exact`` (see :func:`trace_list`);
* a session: ``{"object": "session", "session_id", "totals": {...}, "traces": [...],
  "next_cursor"}`` -- the totals of all its traces, one page of them in full;
* stats: ``{"object": "stats", ...}``;
* an error: ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's error shape; the CLI
  writes it to stderr and exits non-zero).

Standard library only (as :mod:`..asgi`): the CLI imports it without the proxy's extra.
"""

from __future__ import annotations

import json

from ..asgi import error_document
from . import costs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

BODY_FIELDS = ("request_body", "response_body")


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: a body holding them stays its text (else no answer could carry it).
    raise ValueError(name)


def _body(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    stripped = text.lstrip()
    # Only documents become JSON values: a plain-text body that happens to parse as a JSON
    # scalar ("42", "true") stays the text it was.
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            pass
    return text


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return value
    return value


def trace(row: Mapping[str, Any]) -> dict[str, Any]:
    """One trace (a full one, or a list row without bodies)."""
    out: dict[str, Any] = {"object": "trace"}
    out.update(row)
    out["object"] = "trace"
    if "cost_usd" in out:
        out["cost_status"] = costs.cost_status(out)
    if "stream" in out:
        out["stream"] = bool(out["stream"])
    if "metadata" in out:
        # An empty object stays an object: "{}" was sent, which is not "nothing was sent".
        out["metadata"] = None if out["metadata"] in (None, "") else _json_field(out["metadata"])
    if "notes" in out:
        notes = _json_field(out["notes"]) if out["notes"] else []
        out["notes"] = notes if isinstance(notes, list) else [str(notes)]
    for name in BODY_FIELDS:
        if name in out:
            out[name] = _body(out[name])
    return out


def session(session_id: str, page: Mapping[str, Any]) -> dict[str, Any]:
    """A session: its totals, a page of its traces in full and the next page's cursor."""
    return {
        "object": "session",
        "session_id": session_id,
        "totals": page["totals"],
        "traces": [trace(t) for t in page["traces"]],
        "next_cursor": page["next_cursor"],
    }


def page(data: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """The list envelope: one page of ``data`` and the cursor of the next (``None``: the last)."""
    return {"object": "list", "data": data, "next_cursor": next_cursor}


def trace_list(rows: list[Any], next_cursor: str | None, total: tuple[int, bool] | None) -> dict[str, Any]:
    """A page of traces (list rows) with the number of matches: ``total`` is
    :func:`~..store.queries.count_traces`' ``(n, exact)``, or ``None`` when it could not be
    counted in time (``"total": null``)."""
    document = page([trace(r) for r in rows], next_cursor)
    document["total"], document["total_exact"] = total if total is not None else (None, False)
    return document


def stats(values: Mapping[str, Any]) -> dict[str, Any]:
    return {"object": "stats", **{k: v for k, v in values.items() if k != "object"}}


def error(message: str, code: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error document, as the proxy answers it."""
    return error_document(message, type_, code)


def encode(document: Any, *, allow_nan: bool = True) -> bytes:
    """UTF-8 JSON for an HTTP answer (the read API, the dashboard's endpoints); an unpaired
    surrogate in a stored value goes out as its ``\\uXXXX`` escape, as in :func:`dumps`, instead of
    failing the whole answer."""
    return json.dumps(document, ensure_ascii=False, allow_nan=allow_nan).encode("utf-8", "backslashreplace")


def dumps(document: Any, pretty: bool = True) -> str:
    """Exact JSON; an unpaired surrogate in a stored value (not valid Unicode) is written as its
    ``\\uXXXX`` escape, which a JSON reader decodes back to the same value, instead of crashing print()."""
    text = json.dumps(document, indent=2 if pretty else None, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
