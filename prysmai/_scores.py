"""Scores from the application: ``score()`` / ``ascore()``, and ``last_trace_id()`` to know what to score.

The proxy answers every request it forwards with ``X-Prysm-Trace-Id``. The request hooks
(:mod:`._hooks`) forget the previous id when a call starts and remember the answer's when openai
processes it (its ``_process_response``, which every release from 1.0.0 to 3.x calls with the
http response), in a ``ContextVar``: each thread and each asyncio task sees the id of its own
last call, and a call that fail-open sent straight to the provider leaves ``None`` (no proxy, no
trace). Thumbs up from an app is then::

    reply = client.chat.completions.create(...)
    prysmai.score(prysmai.last_trace_id(), "thumbs", True)

``score()`` posts to the proxy's ``POST /api/v1/traces/{id}/scores`` with the same key and base
URL resolution as ``monitor()``/``instrument()`` (arguments, then ``PRYSM_API_KEY`` /
``PRYSM_BASE_URL``). Standard library only; ``ascore()`` runs it in a worker thread, so an event
loop is never blocked.
"""

from __future__ import annotations

import contextvars
import json
import re

from ._wire import TRACE_ID_HEADER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The trace id of the last call of this thread or task (``None``: none, or it went direct).
_last: contextvars.ContextVar[str | None] = contextvars.ContextVar("prysm_last_trace_id", default=None)
_HEADER = TRACE_ID_HEADER.lower()
#: What the proxy's trace ids look like; anything else in the header is not one of ours.
_TRACE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class ScoreError(Exception):
    """The proxy refused a score (``status``: its HTTP status, ``code`` and ``param`` from its
    error document), or could not be reached (``status`` ``None``)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


def last_trace_id() -> str | None:
    """The Prysm trace id of the last OpenAI call made in this thread or asyncio task through a
    monitored or instrumented client; ``None`` if there was none, if the call raised (an error
    answer, a connection failure: never the id of an earlier call), or if fail-open sent it
    straight to the provider (then nothing was traced)."""
    return _last.get()


def forget() -> None:
    """A call is starting: until its answer is processed, there is no last trace id."""
    if _last.get() is not None:
        _last.set(None)


def remember(response: Any) -> None:
    """Keep the trace id of an http response openai is processing (``None`` if it has none)."""
    try:
        value = response.headers.get(_HEADER)
        _last.set(value if isinstance(value, str) and _TRACE_ID.fullmatch(value) else None)
    except Exception:  # never the user's call's problem
        _last.set(None)


def score(
    trace_id: str | None,
    name: str,
    value: bool | float | str,
    *,
    comment: str | None = None,
    prysm_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Attach a score to a trace; returns the score the proxy stored (its ``id`` deletes it). A
    proxy on a PostgreSQL store that cannot reach its database keeps the score and stores it when
    the database is back: the score then has ``"status": "queued"`` (HTTP 202).

    Example (a thumbs-up button)::

        prysmai.score(prysmai.last_trace_id(), "thumbs", True, comment="spot on")

    Args:
        trace_id: the trace (``prysmai.last_trace_id()``, or an id from the dashboard or the API).
        name: what is judged, like ``helpful``: 1 to 64 letters, digits, ``_ . : -``.
        value: a number, ``True``/``False``, or a short category string (one type per name).
        comment: optional text (up to 2 000 characters).
        prysm_key, base_url: as for ``monitor()``; default ``PRYSM_API_KEY`` / ``PRYSM_BASE_URL``.
        timeout: seconds to wait for the proxy.

    Raises:
        ValueError: ``trace_id`` is ``None`` (the last call was not traced) or the key/URL is missing or malformed.
        ScoreError: the proxy refused the score (a bad name or value, no such trace: ``status`` 404)
            or could not be reached.
    """
    from urllib.error import HTTPError, URLError
    from urllib.parse import quote
    from urllib.request import Request, urlopen

    from ._config import resolve_base_url, resolve_key

    if trace_id is None:
        raise ValueError(
            "prysmai.score(): trace_id is None -- the last call has no trace to score (no call yet in this "
            "thread or task, the call raised, or fail-open sent it straight to the provider)."
        )
    if not isinstance(trace_id, str) or not trace_id:
        raise TypeError(f"prysmai.score(): trace_id must be a trace id string, not {type(trace_id).__name__}")
    key = resolve_key(prysm_key)
    url = f"{resolve_base_url(base_url)}/traces/{quote(trace_id, safe='')}/scores"
    body = json.dumps({"name": name, "value": value, "comment": comment}, allow_nan=False).encode()
    request = Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urlopen(request, timeout=timeout) as answer:
            document: dict[str, Any] = json.loads(answer.read())
            return document
    except HTTPError as exc:
        with exc:
            error = _error_of(exc.read())
        raise ScoreError(
            f"the Prysm proxy refused the score (HTTP {exc.code}): {error.get('message') or exc.reason}",
            exc.code,
            error.get("code"),
            error.get("param"),
        ) from None
    except (URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScoreError(f"could not send the score to the Prysm proxy: {reason}") from None


async def ascore(
    trace_id: str | None,
    name: str,
    value: bool | float | str,
    *,
    comment: str | None = None,
    prysm_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """:func:`score` for async code: the same arguments and errors; the request runs in a worker
    thread, so the event loop goes on meanwhile."""
    import asyncio

    if trace_id is None:  # the same clear error, raised in the caller's task
        return score(trace_id, name, value, comment=comment)
    return await asyncio.to_thread(
        score, trace_id, name, value, comment=comment, prysm_key=prysm_key, base_url=base_url, timeout=timeout
    )


def _error_of(body: bytes) -> dict[str, Any]:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}
