"""A trace row: its columns, and building the rows of a batch of captured exchanges.

Engine-neutral: the writer thread (:mod:`.writer`) and the writer process (:mod:`.writerproc`)
build rows here and hand them to their engine's ``insert_rows``.
"""

from __future__ import annotations

import logging
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

log = logging.getLogger("prysmai.proxy")

COLUMNS = (
    "id",  # ours: uuid4 hex, never the provider's id
    "created_at",  # unix time (seconds, float) at which the proxy received the request
    "method",
    "endpoint",  # path below /api/v1, e.g. "chat/completions"
    "model",  # the model the client asked for
    "stream",  # 0/1
    "status",  # success | error | timeout | cancelled
    "http_status",  # status sent to the client
    "latency_ms",
    "ttft_ms",  # streams only; see docs/proxy.md
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",  # NULL when unknown
    "request_body",
    "response_body",  # for streams: the reassembled content and tool calls
    "error",
    "user_id",
    "session_id",
    "metadata",  # JSON object text
    "notes",  # JSON array of strings (e.g. malformed metadata)
    "response_model",  # the model the provider says answered
    "provider_request_id",  # the provider's x-request-id, for cross-reference only
    "key_id",  # which accepted key sent it (an id derived from the key, never the key); schema 2
    "project",  # the key's project (DEFAULT_PROJECT when none is given); schema 3
    "provider",  # the name of the provider the request went to (None: not forwarded); schema 3
    "prompt_preview",  # the start of the last user message, one line (see previews.py); schema 6
    "answer_preview",  # the start of the answer, one line; schema 6
    "error_code",  # the code of the error the proxy answered itself (a limit's 429...); schema 8
)


def build_row(
    item: Any,
    finalize: Callable[[Any], dict[str, Any]],
    fallback: Callable[[Any, BaseException], dict[str, Any]] | None,
) -> tuple[tuple[Any, ...] | None, int]:
    """The row of one captured item: (row, 1 if built by the fallback); (None, 0) if no row can
    be built at all."""
    try:
        row = finalize(item)
        return tuple(map(row.get, COLUMNS)), 0
    except Exception as exc:
        log.warning("trace %s: could not build its row (%s: %s); storing it unparsed", _id(item), _kind(exc), exc)
        if fallback is not None:
            try:
                row = fallback(item, exc)
                return tuple(row.get(c) for c in COLUMNS), 1
            except Exception:
                log.exception("trace %s: the fallback row failed too", _id(item))
        return None, 0


def build_rows(
    items: Sequence[Any],
    finalize: Callable[[Any], dict[str, Any]],
    fallback: Callable[[Any, BaseException], dict[str, Any]] | None,
    gil_slice: float | None = None,
) -> tuple[list[tuple[Any, ...]], int, int]:
    """The rows of ``items`` (:func:`build_row` each): (rows, how many the fallback built, how many
    items no row could be built for). With ``gil_slice``, the GIL is yielded whenever that many
    seconds of building have passed (the writer thread: see :data:`.writer.GIL_SLICE`)."""
    rows: list[tuple[Any, ...]] = []
    repaired = unbuildable = 0
    since = time.perf_counter()
    for item in items:
        row, by_fallback = build_row(item, finalize, fallback)
        if gil_slice is not None and time.perf_counter() - since > gil_slice:
            time.sleep(0)  # let the event loop have the GIL
            since = time.perf_counter()
        if row is None:
            unbuildable += 1
        else:
            rows.append(row)
            repaired += by_fallback
    return rows, repaired, unbuildable


def _id(item: Any) -> str:
    return str(getattr(item, "id", None) or (item.get("id") if isinstance(item, dict) else "?"))


def _kind(exc: BaseException) -> str:
    return type(exc).__name__
