"""What of a built row is kept: a project's :class:`~..config.policy.StoragePolicy` applied to it.

Run by the writer (:func:`.capture.finalize` and :func:`.capture.fallback_row`) on every row,
after usage and cost were read from the full bodies:

* ``capture = "metadata"``: the bodies become their *outline* -- the request's parameters
  (:data:`REQUEST_PARAMETERS`: model, sampling settings, ``stream``...; never messages, input,
  instructions, tools or anything else that carries content) and the answer's ids, model, finish
  reasons, status and usage -- so the dashboard and the export still show how the model was
  called and why it stopped;
* redaction (:mod:`.redact`) of the bodies, the metadata (keys and values), the error text and
  the notes;
* the size cap: a body larger than ``max_body_bytes`` is stored cut, with a note saying how much
  was cut. A JSON body is cut inside its longest strings, so it stays a JSON document the
  dashboard shows as a conversation; one that cannot be (a huge array of numbers) is cut as text,
  on a character boundary, with a marker at the end;
* the previews of the traces list (:mod:`.previews`), from the bodies as they are then kept.

Fail closed: if redaction itself fails, the bodies are not stored (a note says so).
"""

from __future__ import annotations

import json
import logging
import re

from . import previews
from .redact import of_policy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..config.policy import StoragePolicy

log = logging.getLogger("prysmai.proxy")

#: Request fields an outline keeps (``capture = "metadata"``): how the model was asked, not what.
REQUEST_PARAMETERS = frozenset(
    {
        "model",
        "stream",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stream_options",
        "reasoning_effort",
        "service_tier",
        "parallel_tool_calls",
        "store",
        "dimensions",
        "encoding_format",
        "previous_response_id",
        "truncation",
    }
)
#: Answer fields an outline keeps.
RESPONSE_FIELDS = frozenset(
    {"id", "object", "created", "created_at", "model", "status", "usage", "system_fingerprint", "service_tier"}
)
METADATA_NOTE = "bodies not stored (capture = \"metadata\"): the request's parameters and the answer's outline only"


def _outline_request(doc: Any) -> Any:
    if not isinstance(doc, dict):
        return None
    out = {k: v for k, v in doc.items() if k in REQUEST_PARAMETERS}
    reasoning = doc.get("reasoning")
    if isinstance(reasoning, dict) and "effort" in reasoning:
        out["reasoning"] = {"effort": reasoning["effort"]}
    return out


def _outline_response(doc: Any) -> Any:
    if not isinstance(doc, dict):
        return None
    out = {k: v for k, v in doc.items() if k in RESPONSE_FIELDS}
    choices = doc.get("choices")
    if isinstance(choices, list):
        out["choices"] = [
            {"index": c.get("index"), "finish_reason": c.get("finish_reason")} for c in choices if isinstance(c, dict)
        ]
    details = doc.get("incomplete_details")
    if isinstance(details, dict) and "reason" in details:
        out["incomplete_details"] = {"reason": details["reason"]}
    if isinstance(doc.get("error"), dict):  # an error document: its type and code, not its message
        err = doc["error"]
        out["error"] = {k: err.get(k) for k in ("type", "code") if k in err}
    return out


def _parse(text: str | None) -> Any:
    if not text or text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def apply(
    row: dict[str, Any],
    policy: StoragePolicy,
    request_doc: Any = None,
    response_doc: Any = None,
) -> dict[str, Any]:
    """Apply ``policy`` to ``row`` in place (and return it). ``request_doc`` / ``response_doc``:
    the bodies already decoded, when the caller has them (else they are parsed here if needed)."""
    notes: list[str] = json.loads(row["notes"]) if row.get("notes") else []
    redactor = of_policy(policy)
    redactor.counts = {}
    if policy.capture == "metadata":
        for column, doc, outline in (
            ("request_body", request_doc, _outline_request),
            ("response_body", response_doc, _outline_response),
        ):
            if row.get(column) is not None:
                kept = outline(doc if doc is not None else _parse(row[column]))
                row[column] = None if kept is None else json.dumps(kept, ensure_ascii=False)
        request_doc = response_doc = None  # the outlines are what is redacted below
        notes.append(METADATA_NOTE)
    try:
        for column, doc in (("request_body", request_doc), ("response_body", response_doc)):
            text = row.get(column)
            if not text:
                continue
            size = len(text.encode("utf-8", "surrogatepass"))
            if policy.max_body_bytes and size > policy.max_body_bytes + PRECUT_MARGIN:
                text, doc = _precut(text, doc, policy.max_body_bytes)
            row[column] = _cap(redactor.json_text(text, doc) if redactor else text, policy, column, notes, size)
        if row.get("metadata") and redactor:
            meta = json.loads(row["metadata"])
            kept = redactor.value(meta)
            if kept is not meta:
                row["metadata"] = json.dumps(kept, ensure_ascii=False)
        if row.get("error") and redactor:
            row["error"] = redactor.text(row["error"])
        if redactor:
            notes = [redactor.text(n) for n in notes]
    except (RecursionError, ValueError, TypeError) as exc:
        # Never store what could not be redacted.
        row["request_body"] = row["response_body"] = row["metadata"] = None
        notes.append(f"bodies and metadata not stored: redacting them failed ({type(exc).__name__})")
        if row.get("error"):
            row["error"] = "(not stored: redaction failed)"
    if redactor.counts:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(redactor.counts.items()))
        notes.append(f"redacted before storage: {found}")
    row["notes"] = json.dumps(notes, ensure_ascii=False) if notes else None
    # From the bodies as stored: a preview holds nothing that redaction or the cap took out.
    return previews.fill(row)


# -- the size cap -----------------------------------------------------------------------------------
#: A body this much larger than the cap is first cut, without markers, to the cap and this much
#: more, and only then redacted: redaction costs time in proportion to the text, and the writer
#: must not spend seconds on a 30 MB body it stores 1 MiB of. The margin is longer than any
#: secret a pattern finds, so one that straddles the first cut is wholly in what the final cut
#: drops.
PRECUT_MARGIN = 64 * 1024


def _precut(text: str, doc: Any, limit: int) -> tuple[str, Any]:
    """``text`` (and its document) cut to about ``limit + PRECUT_MARGIN``, marked as the final cut
    marks (which adds what it cuts to what these markers say): a JSON document's longest strings,
    else the text itself."""
    doc = doc if doc is not None else _parse(text)
    if doc is not None:
        lengths: list[int] = []
        try:
            _string_lengths(doc, lengths)
            # In characters: each is at least a byte, so strings of ``limit`` characters in all
            # (and the margin) hold what the final cut keeps, however the body was escaped.
            keep = _longest_kept(lengths, sum(lengths) - limit)
            if keep is not None:
                trimmed = _cut_strings(doc, keep + PRECUT_MARGIN)
                return json.dumps(trimmed, ensure_ascii=False), trimmed
        except RecursionError:
            pass
    head = text[: limit + PRECUT_MARGIN]
    cut = len(text.encode("utf-8", "surrogatepass")) - len(head.encode("utf-8", "surrogatepass"))
    return head + _TEXT_TAIL.format(cut), None


def _cap(text: str, policy: StoragePolicy, column: str, notes: list[str], received: int) -> str:
    """``text`` within the cap; ``received``: the body's size as it came (before any cut)."""
    limit = policy.max_body_bytes
    if not limit or received <= limit:
        return text
    kept = text  # cut beforehand (and redacted since) to within the cap already
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        kept = _shrink_json(text, limit) or _cut_text(text, limit)
    stored = len(kept.encode("utf-8", "surrogatepass"))
    what = column.replace("_", " ")
    notes.append(
        f"{what}: {received} bytes, over the {limit}-byte limit on stored bodies (--max-stored-body-bytes): "
        f"stored {stored} bytes, {received - stored} bytes cut"
    )
    return kept


_TEXT_TAIL = "…[truncated: {} bytes not stored]"
_STRING_TAIL = "…[truncated: {} characters not stored]"
_TEXT_CUT = re.compile(r"…\[truncated: ([0-9]+) bytes not stored\]\Z")
_STRING_CUT = re.compile(r"…\[truncated: ([0-9]+) characters not stored\]\Z")


def _earlier_cut(value: str, pattern: re.Pattern[str]) -> tuple[str, int]:
    """``value`` without the marker of an earlier cut at its end, and what that cut removed."""
    found = pattern.search(value)
    return (value[: found.start()], int(found.group(1))) if found else (value, 0)


def _cut_text(text: str, limit: int) -> str:
    text, before = _earlier_cut(text, _TEXT_CUT)
    room = max(0, limit - len(_TEXT_TAIL.format(10**12).encode()))
    raw = text.encode("utf-8", "surrogatepass")[:room]
    head = raw.decode("utf-8", "ignore")  # a character cut in two is dropped whole
    # A marker cut in two would read as text the writer never wrote: drop its beginning.
    bracket = head.rfind("[redacted:")
    if bracket >= 0 and "]" not in head[bracket:]:
        head = head[:bracket]
    size = len(text.encode("utf-8", "surrogatepass"))
    return head + _TEXT_TAIL.format(before + size - len(head.encode("utf-8", "surrogatepass")))


def _shrink_json(text: str, limit: int) -> str | None:
    """``text`` (a JSON document) with its longest strings cut so that it fits in ``limit``
    bytes; ``None`` if it is not JSON or its strings are not where its size is."""
    doc = _parse(text)
    if doc is None:
        return None
    strings: list[int] = []
    try:
        _string_lengths(doc, strings)
    except RecursionError:
        return None
    # Lengths are in characters, the limit in bytes (a character is 1 to 4 of them, and JSON
    # escapes some): cut, measure, and cut more by what is still over, a few times at most.
    try:
        written = json.dumps(doc, ensure_ascii=False)  # how it is written back (escapes undone)
    except RecursionError:
        return None
    excess = len(written.encode("utf-8", "surrogatepass")) - limit + 48 * len(strings) + 64
    for _ in range(8):
        keep = _longest_kept(strings, excess)
        if keep is None:
            return None
        try:
            out = json.dumps(_cut_strings(doc, keep), ensure_ascii=False)
        except RecursionError:
            return None
        over = len(out.encode("utf-8", "surrogatepass")) - limit
        if over <= 0:
            return out
        excess += over + 64
    return None


def _string_lengths(value: Any, out: list[int]) -> None:
    if isinstance(value, str):
        out.append(len(value))
    elif isinstance(value, dict):
        for v in value.values():
            _string_lengths(v, out)
    elif isinstance(value, list):
        for v in value:
            _string_lengths(v, out)


def _longest_kept(lengths: list[int], excess: int) -> int | None:
    """The largest string length L such that cutting every longer string to L characters removes
    at least ``excess`` characters; ``None`` if even L = 0 does not."""
    if sum(lengths) < excess:
        return None
    lo, hi = 0, max(lengths, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(n - mid for n in lengths if n > mid) >= excess:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_strings(value: Any, keep: int) -> Any:
    if isinstance(value, str):
        if len(value) <= keep:
            return value
        value, before = _earlier_cut(value, _STRING_CUT)
        head = value[:keep]
        bracket = head.rfind("[redacted:")
        if bracket >= 0 and "]" not in head[bracket:]:
            head = head[:bracket]
        return head + _STRING_TAIL.format(before + len(value) - len(head))
    if isinstance(value, dict):
        return {k: _cut_strings(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, keep) for v in value]
    return value
