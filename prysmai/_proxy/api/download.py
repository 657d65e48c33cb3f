"""Every trace of a filtered list as one download: CSV or JSON Lines, streamed.

``GET /api/v1/traces?…&format=csv|jsonl`` (the dashboard's export button reads the same route
below ``/ui/api``) and ``prysmai traces --all --format csv|jsonl`` write every trace the list's
filters match, in the list's order (``sort``, ``order``), not one page of it. ``fields`` picks the
columns (:data:`DEFAULT_FIELDS` without it; ``all`` adds the bodies); ``limit`` caps the rows
(none by default); ``cursor`` starts after a list page's last row. A trace's ``scores`` (a
list of the read API's score documents; in CSV as JSON text) are a default field.

The traces are read in chunks of :data:`CHUNK` rows, each one keyset page of
:func:`~..store.queries.list_traces` read and encoded on the store's read runner (a worker
thread), under its time limit, and each chunk is written to the client before the next is read:
memory holds one chunk, whatever the number of rows, and the event loop that forwards requests
only hands bytes on.
The first chunk is read before the answer begins, so a bad parameter is still a JSON error; a read
that fails later cuts the answer off (the client sees an incomplete body, never a short file that
looks whole). A client that leaves stops the reading at the chunk in progress.

Captured content is untrusted. In CSV every cell a client chose is neutralised for spreadsheets:
control characters (tab, CR and LF included) are written as ``\\uXXXX``, so every record is one
line, and a cell starting with ``=``, ``+``, ``-``, ``@`` (or their full-width forms) gets a
leading ``'``, so no spreadsheet reads it as a formula. CSV is for reading; JSON Lines is the exact
copy: one JSON document per line (the read API's trace shape, limited to ``fields``), valid
whatever was captured -- an unpaired surrogate is written as its ``\\uXXXX`` escape, and so are
U+0085, U+2028 and U+2029, which some line readers take for line ends.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from dataclasses import dataclass

from ..asgi import uncancel, watch_client
from ..store import QueryTimeout, StoreError, queries, scores
from ..store.queries import ParamError
from ..store.writer import GIL_SLICE
from . import jsonshape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from ..asgi import Receive, Send
    from ..store import Store, TraceFilter
    from .downloadproc import Exports

log = logging.getLogger("prysmai.proxy")

#: ``format=``: ``json`` (a page, the default) or a download.
FORMATS = ("json", "csv", "jsonl")
DOWNLOADS = ("csv", "jsonl")
#: Rows read per chunk.
CHUNK = 500
BODY_FIELDS = jsonshape.BODY_FIELDS
#: Every field a download may hold, in this order by default.
FIELDS = (*queries.SUMMARY_COLUMNS, "cost_status", "scores", *BODY_FIELDS)
#: The fields without ``fields=``: everything but the bodies.
DEFAULT_FIELDS = tuple(name for name in FIELDS if name not in BODY_FIELDS)
MEDIA_TYPES = {"csv": b"text/csv; charset=utf-8", "jsonl": b"application/x-ndjson; charset=utf-8"}


def parse_format(raw: str | None) -> str | None:
    """The download format ``format=`` asks for; ``None`` for a page (``json`` or no format)."""
    if raw in (None, "", "json"):
        return None
    if raw not in DOWNLOADS:
        raise ParamError("format", f"format must be one of {', '.join(FORMATS)}, not {raw!r}")
    return raw


def parse_fields(raw: str | None) -> tuple[str, ...]:
    """The fields ``fields=`` names: comma-separated names of :data:`FIELDS`, in the order given,
    or ``all`` (every field, bodies included); :data:`DEFAULT_FIELDS` without it."""
    if raw is None or raw.strip() == "":
        return DEFAULT_FIELDS
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if names == ["all"]:
        return FIELDS
    unknown = [name for name in names if name not in FIELDS]
    if unknown or not names:
        message = (
            f"fields: unknown field {unknown[0]!r}; give 'all' or comma-separated names of: {', '.join(FIELDS)}"
            if unknown
            else "fields: give 'all' or comma-separated field names"
        )
        raise ParamError("fields", message)
    return tuple(dict.fromkeys(names))  # (each once, in the order given)


def parse_max_rows(raw: str | None) -> int | None:
    """``limit=`` of a download: the most rows it holds (``None``: every match)."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ParamError("limit", f"limit of an export must be a whole number of rows, 1 or more, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Plan:
    """What one download holds: its ``format``, ``fields``, order, the ``cursor`` it starts after
    and the most rows (``max_rows``, ``None``: all)."""

    format: str
    fields: tuple[str, ...] = DEFAULT_FIELDS
    sort: str = "created_at"
    descending: bool = True
    cursor: str | None = None
    max_rows: int | None = None

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Plan | None:
        """The download a read API query asks for; ``None`` for a page (then ``fields`` is refused:
        it would be silently ignored)."""
        fmt = parse_format(query.get("format"))
        if fmt is None:
            if query.get("fields"):
                raise ParamError("fields", "fields applies to an export: add format=csv or format=jsonl")
            return None
        return cls(
            fmt,
            parse_fields(query.get("fields")),
            query.get("sort") or "created_at",
            query.get("order", "desc") != "asc",
            query.get("cursor") or None,
            parse_max_rows(query.get("limit")),
        )

    def chunk(self, cursor: str | None, shown: int) -> dict[str, Any]:
        """``list_traces``' arguments for the chunk after ``cursor`` when ``shown`` rows are out."""
        size = CHUNK if self.max_rows is None else min(CHUNK, self.max_rows - shown)
        bodies = any(name in BODY_FIELDS for name in self.fields)
        return {"sort": self.sort, "descending": self.descending, "cursor": cursor, "limit": size, "bodies": bodies}

    def more(self, cursor: str | None, shown: int) -> bool:
        return cursor is not None and (self.max_rows is None or shown < self.max_rows)

    def filename(self) -> str:
        return time.strftime("prysm-traces-%Y%m%dT%H%M%SZ", time.gmtime()) + "." + self.format


# -- encoding -------------------------------------------------------------------------------------
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: What spreadsheets read as the start of a formula (tab and CR never start a cell: they are escaped).
_FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
#: Characters json.dumps leaves raw that line readers (str.splitlines, some JSON Lines tools) split on.
_LINE_ENDS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _escape_control(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def csv_cell(value: Any) -> Any:
    """One CSV cell, safe in a spreadsheet: numbers as they are (ours, never a client's text);
    text with its control characters as ``\\uXXXX`` and a ``'`` before a formula's first
    character; objects and lists as compact JSON, then as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    value = _CONTROL.sub(_escape_control, value)
    if value.startswith(_FORMULA_START):
        value = "'" + value
    return value


def jsonl_line(document: Mapping[str, Any]) -> str:
    """One JSON Lines record (with its newline), valid JSON whatever the captured content."""
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_LINE_ENDS) + "\n"


def _utf8(text: str) -> bytes:
    # An unpaired surrogate (stored as captured) goes out as its \uXXXX escape.
    return text.encode("utf-8", "backslashreplace")


class Encoder:
    """Rows of :func:`~..store.queries.list_traces` as the bytes of a ``plan``'s download."""

    def __init__(self, plan: Plan) -> None:
        self.format = plan.format
        self.fields = plan.fields

    def head(self) -> bytes:
        if self.format != "csv":
            return b""
        return self._csv([list(self.fields)])

    def encode(self, rows: list[dict[str, Any]]) -> bytes:
        """The rows' bytes. Run in a worker thread of the proxy: it lets go of the GIL every
        :data:`~..store.writer.GIL_SLICE` seconds, as the writer does, so that the event loop
        forwarding requests never waits out CPython's switch interval behind an export."""
        csv_rows: list[list[Any]] = []
        lines: list[str] = []
        since = time.perf_counter()
        for row in rows:
            if self.format == "csv":
                csv_rows.append([csv_cell(value) for value in self._values(row, raw_bodies=True)])
            else:
                lines.append(jsonl_line(dict(zip(self.fields, self._values(row)))))
            if time.perf_counter() - since > GIL_SLICE:
                time.sleep(0)  # let the event loop have the GIL
                since = time.perf_counter()
        return self._csv(csv_rows) if self.format == "csv" else _utf8("".join(lines))

    def _values(self, row: dict[str, Any], raw_bodies: bool = False) -> list[Any]:
        shaped = jsonshape.trace(row)
        if raw_bodies:  # the body as stored, not re-serialised
            for name in BODY_FIELDS:
                if name in row:
                    shaped[name] = row[name]
        return [shaped.get(name) for name in self.fields]

    @staticmethod
    def _csv(records: list[list[Any]]) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(records)
        return _utf8(out.getvalue())


# -- the download, read chunk by chunk --------------------------------------------------------------
def read_rows(
    conn: Any, f: TraceFilter, plan: Plan, cursor: str | None, shown: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A query function: the rows of the chunk after ``cursor`` and the next chunk's cursor."""
    listing = scores.list_traces if "scores" in plan.fields else queries.list_traces
    return listing(conn, f, **plan.chunk(cursor, shown))


def read_chunk(
    conn: Any, f: TraceFilter, plan: Plan, encoder: Encoder, cursor: str | None, shown: int
) -> tuple[bytes, str | None, int]:
    """A query function (for the read runner): the chunk after ``cursor`` as the download's bytes,
    the next chunk's cursor and the rows it held -- encoded in the worker thread, not on the
    event loop."""
    rows, cursor = read_rows(conn, f, plan, cursor, shown)
    return encoder.encode(rows), cursor, len(rows)


def chunks_sync(store: Store, f: TraceFilter, plan: Plan) -> Iterator[bytes]:
    """The download's bytes, chunk by chunk, read in the calling thread (the CLI). Nothing is
    yielded before the first chunk is read: a bad cursor fails before any output."""
    encoder = Encoder(plan)
    cursor, shown = plan.cursor, 0
    head = encoder.head()
    while True:
        data, cursor, n = store.read_sync(read_chunk, f, plan, encoder, cursor, shown)
        shown += n
        yield head + data
        head = b""
        if not plan.more(cursor, shown):
            return


class CutOff(Exception):
    """The rest of a download could not be read (its process failed or is gone): the answer is
    cut off. Raised by an :class:`~.downloadproc.Exports` relay."""


class Download:
    """A download the read API answers instead of a document: its first chunk already read.
    :meth:`start` reads it; :meth:`send` streams it all to the client -- the other chunks read
    by a process of their own when ``exports`` is given (the proxy: :mod:`.downloadproc`), else
    on the store's read runner (``prysmai ui``)."""

    def __init__(
        self,
        store: Store,
        f: TraceFilter,
        plan: Plan,
        first: tuple[bytes, str | None, int],
        exports: Exports | None = None,
    ) -> None:
        self.store = store
        self.filter = f
        self.plan = plan
        self.encoder = Encoder(plan)
        self.exports = exports
        self._first = first

    @classmethod
    async def start(cls, store: Store, f: TraceFilter, plan: Plan, exports: Exports | None = None) -> Download:
        """Read the first chunk: a bad cursor or sort, or a store that is down, fails here, while
        the answer can still be a JSON error. (In the proxy's read runner even with ``exports``:
        it is one chunk, and a download that fits in it needs no process.)"""
        first = await store.read(read_chunk, f, plan, Encoder(plan), plan.cursor, 0)
        return cls(store, f, plan, first, exports)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", MEDIA_TYPES[self.plan.format]),
            (b"content-disposition", f'attachment; filename="{self.plan.filename()}"'.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
        ]

    async def send(self, send: Send, receive: Receive, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Stream the download (``extra``: more response headers); returns early when the client
        leaves, or when a later chunk's read fails (the answer is then left incomplete). Ends the
        admission :meth:`~.downloadproc.Exports.admit` gave it, whichever way it ends."""
        watch = watch_client(send, receive)
        relay = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [*self.headers(), *(extra or ())]})
            data, cursor, shown = self._first
            self._first = (b"", None, 0)
            await send({"type": "http.response.body", "body": self.encoder.head() + data, "more_body": True})
            if self.exports is None:
                while self.plan.more(cursor, shown):
                    data, cursor, n = await self.store.read(
                        read_chunk, self.filter, self.plan, self.encoder, cursor, shown
                    )
                    shown += n
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            elif self.plan.more(cursor, shown):
                relay = self.exports.relay(self.filter, self.plan, cursor, shown)
                while (part := await relay.next()) is not None:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (QueryTimeout, StoreError, CutOff) as exc:
            # The head is out: no error document can follow. Ending without the last chunk tells
            # the client the download is incomplete.
            log.warning("an export stopped after part of its rows: %s", exc)
        except BaseException:
            if not watch.gone:
                raise
            uncancel()
        finally:
            watch.stop()
            if relay is not None:
                relay.close()  # (a client that left, a proxy stopping: its process ends now)
            if self.exports is not None:
                self.exports.release()
