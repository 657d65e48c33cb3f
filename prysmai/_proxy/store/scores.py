"""Scores: judgements attached to traces (a reviewer's thumbs up, an app user's feedback, an
evaluation's number), read and written through the one query layer on every engine.

A score is a name (``helpful``), a value -- a number, a boolean or a short category -- an optional
comment, when it was given and by whom (the id of the key that sent it, and whether it came
through the API or the dashboard). One name has one type per project: the first score of a name
fixes it (``score_names``), so averages and ranges mean one thing. The ``scores`` table keeps
the trace's time, project, model and user beside its id (a trace's never change), so the
averages by model, user or project over a time range read one index of the scores, and join the
traces only for a filter on another of their columns.

Every function takes a DB-API connection (:class:`~.engine.Connection`): the reads run on the
store's read runner; :func:`add` and :func:`delete` in one short write transaction of the
store's edit runner (:mod:`.edits`), never on the trace writer's connection. Column names differ
from those of ``traces`` (``score_project``, ``trace_time``...) so that a join with ``traces``
takes the query layer's trace conditions unqualified.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
import time
from dataclasses import dataclass

from . import queries
from .engine import dialect_of
from .queries import ParamError, TraceFilter, _conditions, _where, get_trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from .engine import Connection

KINDS = ("number", "boolean", "category")
#: A name: a letter or digit, then letters, digits and ``_ . : -``; at most this long.
MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
#: A category: printable text without angle brackets, quotes or backslashes, at most this long.
MAX_CATEGORY = 64
_CATEGORY = re.compile(r"[^\x00-\x1f\x7f-\x9f<>\"'`\\]{1,64}")
#: A comment: any text but control characters other than tab and newline, at most this long.
MAX_COMMENT = 2000
_BAD_COMMENT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Where a score came from.
SOURCES = ("api", "dashboard")

#: Retention: the scores of traces that are gone (a trace's scores go with it; they are few beside it).
ORPHAN_SCORES = (
    "DELETE FROM scores WHERE trace_time < ? AND NOT EXISTS (SELECT 1 FROM traces WHERE traces.id = scores.trace_id)"
)

_COLUMNS = "score_id, trace_id, name, kind, num, label, comment, scored_at, author_key, source"


@dataclass(frozen=True)
class NewScore:
    """A score as a client sent it, validated: ``kind`` is one of :data:`KINDS`; ``num`` holds a
    number (a boolean as 1 or 0), ``label`` a category."""

    name: str
    kind: str
    num: float | None
    label: str | None
    comment: str | None

    @classmethod
    def parse(cls, document: Any) -> NewScore:
        """From the JSON body ``{"name", "value", "comment"}``; :class:`ParamError` names the field
        at fault and says what is expected."""
        if not isinstance(document, dict):
            raise ParamError("body", 'expected a JSON object like {"name": "helpful", "value": 1}')
        unknown = sorted(set(document) - {"name", "value", "comment"})
        if unknown:
            raise ParamError(unknown[0], f"unknown field {unknown[0]!r}: a score has name, value and comment")
        name = document.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ParamError(
                "name",
                f"name must be 1 to {MAX_NAME} characters: a letter or digit, then letters, digits, "
                "'_', '.', ':' or '-' (like helpful or eval.relevance)",
            )
        value = document.get("value")
        num: float | None = None
        label: str | None = None
        if isinstance(value, bool):
            kind, num = "boolean", 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > 1e15:
                raise ParamError("value", "value must be a finite number of at most 1e15 in size")
            kind, num = "number", float(value)
        elif isinstance(value, str):
            if not _CATEGORY.fullmatch(value) or value.strip() != value or not _unicode(value):
                raise ParamError(
                    "value",
                    f"a category value must be 1 to {MAX_CATEGORY} printable characters, without leading or "
                    "trailing spaces, control characters, < > \" ' ` or \\",
                )
            kind, label = "category", value
        else:
            raise ParamError("value", "value must be a number, true/false or a short category string")
        comment = document.get("comment")
        if comment is not None:
            if not isinstance(comment, str):
                raise ParamError("comment", "comment must be text (or null)")
            if len(comment) > MAX_COMMENT or _BAD_COMMENT.search(comment) or not _unicode(comment):
                raise ParamError(
                    "comment",
                    f"comment must be at most {MAX_COMMENT} characters of valid Unicode, without control characters",
                )
            comment = comment or None
        return cls(name, kind, num, label, comment)


def _unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (JSON's ``"\\ud800"`` decodes to a lone surrogate, which
    no database can store as text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class KindConflict(ParamError):
    """A score whose type differs from the one its name already has in its project."""


def add(
    conn: Connection,
    trace_id: str,
    score: NewScore,
    *,
    project: str | None,
    author_key: str,
    source: str,
    score_id: str | None = None,
    scored_at: float | None = None,
) -> dict[str, Any] | None:
    """Attach ``score`` to the trace ``trace_id`` (an id or a unique prefix, in ``project`` when
    given), in the caller's write transaction; the score as :func:`of_traces` reads it, or
    ``None`` if there is no such trace. :class:`KindConflict` if the name has another type.
    ``score_id`` and ``scored_at`` are given by a score queued before (:class:`Edit`): added
    again, a score of that id is stored once."""
    trace = get_trace(conn, trace_id, project=project)
    if trace is None:
        return None
    conn.execute(
        "INSERT INTO score_names (project, name, kind) VALUES (?, ?, ?) ON CONFLICT (project, name) DO NOTHING",
        [trace["project"], score.name, score.kind],
    )
    kind = conn.execute(
        "SELECT kind FROM score_names WHERE project = ? AND name = ?", [trace["project"], score.name]
    ).fetchone()[0]
    if kind != score.kind:
        raise KindConflict("value", f"score {score.name!r} holds {kind} values in this project, not {score.kind}")
    row = {
        "score_id": score_id or new_score_id(),
        "trace_id": trace["id"],
        "name": score.name,
        "kind": score.kind,
        "num": score.num,
        "label": score.label,
        "comment": score.comment,
        "scored_at": time.time() if scored_at is None else scored_at,
        "author_key": author_key,
        "source": source,
    }
    conn.execute(
        "INSERT INTO scores (score_id, trace_id, trace_time, score_project, trace_model, trace_user, name, kind, "
        "num, label, comment, scored_at, author_key, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (score_id) DO NOTHING",
        [
            row["score_id"],
            row["trace_id"],
            trace["created_at"],
            trace["project"],
            trace["model"],
            trace["user_id"],
            *[row[c] for c in ("name", "kind", "num", "label", "comment", "scored_at", "author_key", "source")],
        ],
    )
    return _document(row)


def new_score_id() -> str:
    return "score_" + secrets.token_hex(12)


def delete(conn: Connection, score_id: str, *, project: str | None) -> bool:
    """Delete a score by id (in ``project`` when given); whether there was one."""
    scope, params = ("", []) if project is None else (" AND score_project = ?", [project])
    found = conn.execute(f"SELECT 1 FROM scores WHERE score_id = ?{scope}", [score_id, *params]).fetchone()
    if found is None:
        return False
    conn.execute(f"DELETE FROM scores WHERE score_id = ?{scope}", [score_id, *params])
    return True


@dataclass(frozen=True)
class Edit:
    """One write of a score -- an ``add`` (``score`` to the trace ``target``) or a ``delete`` (of
    the score ``target``) -- as a value that can wait in a replica's outbox (:meth:`dumps`) and be
    applied later, in order, once (:meth:`apply`: an add carries its score's id and time, so
    applying it again stores nothing twice, and a delete applied again finds nothing)."""

    op: str
    target: str
    project: str | None
    author_key: str = ""
    source: str = "api"
    score: NewScore | None = None
    score_id: str = ""
    scored_at: float = 0.0

    @classmethod
    def adding(cls, trace_id: str, score: NewScore, *, project: str | None, author_key: str, source: str) -> Edit:
        return cls("add", trace_id, project, author_key, source, score, new_score_id(), time.time())

    @classmethod
    def deleting(cls, score_id: str, *, project: str | None) -> Edit:
        return cls("delete", score_id, project)

    def apply(self, conn: Connection) -> Any:
        """In the caller's write transaction: :func:`add`'s or :func:`delete`'s answer."""
        if self.op == "delete":
            return delete(conn, self.target, project=self.project)
        assert self.score is not None
        return add(
            conn,
            self.target,
            self.score,
            project=self.project,
            author_key=self.author_key,
            source=self.source,
            score_id=self.score_id,
            scored_at=self.scored_at,
        )

    def queued(self) -> dict[str, Any]:
        """The answer to a client while the edit waits to be applied (``status: queued``)."""
        if self.op == "delete":
            return {"object": "score.deleted", "id": self.target, "deleted": True, "status": "queued"}
        assert self.score is not None
        row = {"score_id": self.score_id, "trace_id": self.target, "scored_at": self.scored_at}
        row.update(author_key=self.author_key, source=self.source, **dataclasses.asdict(self.score))
        return {**_document(row), "status": "queued"}

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def loads(cls, text: str) -> Edit:
        values = json.loads(text)
        score = values.pop("score")
        return cls(**values, score=None if score is None else NewScore(**score))


def of_traces(conn: Connection, trace_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The scores of each trace of ``trace_ids``, oldest first (a trace without any is absent)."""
    out: dict[str, list[dict[str, Any]]] = {}
    ids = list(dict.fromkeys(trace_ids))
    for start in range(0, len(ids), 500):
        some = ids[start : start + 500]
        sql = (
            f"SELECT {_COLUMNS} FROM scores WHERE trace_id IN ({', '.join('?' * len(some))}) "
            "ORDER BY scored_at, score_id"
        )
        names = _COLUMNS.split(", ")
        for r in conn.execute(sql, some):
            row = dict(zip(names, r))
            out.setdefault(row["trace_id"], []).append(_document(row))
    return out


def _document(row: dict[str, Any]) -> dict[str, Any]:
    kind = row["kind"]
    value: Any = row["label"] if kind == "category" else row["num"]
    if kind == "boolean":
        value = bool(value)
    elif kind == "number" and isinstance(value, float) and value.is_integer():
        value = int(value)
    return {
        "object": "score",
        "id": row["score_id"],
        "trace_id": row["trace_id"],
        "name": row["name"],
        "value": value,
        "type": kind,
        "comment": row["comment"],
        "created_at": row["scored_at"],
        "key_id": row["author_key"],
        "source": row["source"],
    }


def with_scores(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (traces) each with its ``scores`` (a list, empty when it has none)."""
    found = of_traces(conn, [r["id"] for r in rows])
    for r in rows:
        r["scores"] = found.get(r["id"], [])
    return rows


def trace_with_scores(conn: Connection, trace_id: str, *, project: str | None = None) -> dict[str, Any] | None:
    """:func:`~.queries.get_trace` with the trace's ``scores``, in one snapshot."""
    trace = get_trace(conn, trace_id, project=project)
    return None if trace is None else with_scores(conn, [trace])[0]


#: What :func:`averages` groups by: the scores' copy of the trace's column, and the column.
AVERAGE_GROUPS = {
    "model": ("trace_model", "model"),
    "user": ("trace_user", "user_id"),
    "project": ("score_project", "project"),
}


def averages(conn: Connection, f: TraceFilter, groups: Iterable[str], rows: int) -> dict[str, list[dict[str, Any]]]:
    """The average of each score name (numbers and booleans; a boolean's average is its share of
    ``true``) over the traces of ``f``, by each of ``groups`` (:data:`AVERAGE_GROUPS`): the
    ``rows`` groups and names with the most scores, each ``{group, name, average, scores}``.

    Time, project, model and user are matched on the scores' own copies (one index of the scores
    answers the usual overview); any other filter joins each score to its trace, read through the
    traces' time-first index (the score has the trace's time)."""
    own: list[str] = ["scores.kind <> 'category'"]
    own_params: list[Any] = []
    for column, value in (
        ("score_project", f.project),
        ("trace_model", f.model),
        ("trace_user", f.user_id),
    ):
        if value is not None:
            own.append(f"scores.{column} = ?")
            own_params.append(value)
    if f.since is not None:
        own.append("scores.trace_time >= ?")
        own_params.append(f.since)
    if f.until is not None:
        own.append("scores.trace_time < ?")
        own_params.append(f.until)
    rest = dataclasses.replace(f, project=None, since=None, until=None, model=None, user_id=None)
    clauses, params = _conditions(conn, rest, times=False) if rest != TraceFilter() else ([], [])
    join = ""
    if clauses:
        traces = dialect_of(conn).time_first("traces")
        join = f" JOIN {traces} ON traces.created_at = scores.trace_time AND traces.id = scores.trace_id"
    out: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        column = AVERAGE_GROUPS[group][0]
        sql = (
            f"SELECT scores.{column}, scores.name, avg(scores.num), count(*) FROM scores{join}"
            f"{_where([*own, *clauses])} GROUP BY scores.{column}, scores.name "
            # NULL last on both engines (SQLite sorts it first, PostgreSQL last).
            f"ORDER BY count(*) DESC, scores.name, scores.{column} IS NULL, scores.{column} LIMIT ?"
        )
        out[group] = [
            {group: key, "name": name, "average": float(avg), "scores": int(n)}
            for key, name, avg, n in conn.execute(sql, [*own_params, *params, rows])
        ]
    return out


def names(conn: Connection, project: str | None) -> list[dict[str, str]]:
    """The score names of ``project`` (every project's when ``None``) and their types, by name."""
    scope, params = ("", []) if project is None else (" WHERE project = ?", [project])
    sql = f"SELECT DISTINCT name, kind FROM score_names{scope} ORDER BY name"
    return [{"name": n, "type": k} for n, k in conn.execute(sql, params)]


def list_traces(conn: Connection, f: TraceFilter, **options: Any) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`~.queries.list_traces` with each row's ``scores``, in one snapshot."""
    rows, cursor = queries.list_traces(conn, f, **options)
    return with_scores(conn, rows), cursor


def overview_page(
    conn: Connection,
    f: TraceFilter,
    bucket_seconds: int,
    breakdowns: Iterable[str],
    rows: int,
    groups: Iterable[str],
    average_rows: int,
) -> dict[str, Any]:
    """:func:`~.queries.overview_page` with ``score_averages`` (:func:`averages` by ``groups``), in
    the one snapshot: the scores' averages cannot disagree with the page's totals."""
    page = queries.overview_page(conn, f, bucket_seconds, breakdowns, rows)
    page["score_averages"] = averages(conn, f, groups, average_rows)
    return page
