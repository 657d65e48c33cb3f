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
import functools
import json
import math
import re
import secrets
import time
from dataclasses import dataclass

from . import queries
from .engine import dialect_of
from .queries import ParamError, TraceFilter, _conditions, _tiered, _where, get_trace
from .rollups import (
    KEY_PERIOD,
    METRICS,
    SCORE_DIMS,
    SCORE_ROLLUP_ALL,
    SCORE_ROLLUP_DAY,
    SCORED_HIST,
    SCORED_TOTALS,
    scored_fold_sql,
)

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
_ORPHANS = "trace_time < ? AND NOT EXISTS (SELECT 1 FROM traces WHERE traces.id = scores.trace_id)"

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
    inserted = conn.execute(
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
    # A queued score applied again stores nothing, and is not folded into the rollups again.
    if score.num is not None and inserted.rowcount == 1:
        _fold(conn, trace["created_at"], trace["project"], score.name, trace["model"], trace["user_id"], 1, score.num)
    if inserted.rowcount == 1 and _named(conn, trace["id"], score.name) == 1:
        _fold_scored(conn, trace["id"], trace["created_at"], score.name, "")
    return _document(row)


def new_score_id() -> str:
    return "score_" + secrets.token_hex(12)


def delete(conn: Connection, score_id: str, *, project: str | None) -> bool:
    """Delete a score by id (in ``project`` when given); whether there was one."""
    scope, params = ("", []) if project is None else (" AND score_project = ?", [project])
    found = conn.execute(
        "SELECT trace_time, score_project, name, trace_model, trace_user, num, trace_id FROM scores "
        f"WHERE score_id = ?{scope}",
        [score_id, *params],
    ).fetchone()
    if found is None:
        return False
    conn.execute(f"DELETE FROM scores WHERE score_id = ?{scope}", [score_id, *params])
    trace_time, score_project, name, model, user, num, trace_id = found
    if num is not None:
        _fold(conn, trace_time, score_project, name, model, user, -1, -num)
    if _named(conn, trace_id, name) == 0:  # (a trace already gone took itself back out)
        _fold_scored(conn, trace_id, trace_time, name, "-")
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


# -- the score rollups (see ..rollups): kept in the transaction of each score's write -------------
def _upsert(table: str, period: bool) -> str:
    names = ", ".join(["dim", *(["period"] if period else []), "project", "name", "dim_value"])
    marks = ", ".join("?" * (len(names.split(", ")) + 2))
    return (
        f"INSERT INTO {table} ({names}, scores, total) VALUES ({marks}) ON CONFLICT ({names}) DO UPDATE SET "
        f"scores = {table}.scores + excluded.scores, total = {table}.total + excluded.total"
    )


_UPSERT_DAY = _upsert(SCORE_ROLLUP_DAY, True)
_UPSERT_ALL = _upsert(SCORE_ROLLUP_ALL, False)


def _fold(
    conn: Connection,
    trace_time: float,
    project: str,
    name: str,
    model: str | None,
    user: str | None,
    count: int,
    total: float,
) -> None:
    """Add ``count`` scores adding up to ``total`` (negative: taken out) to the score rollups."""
    day = math.floor(trace_time / KEY_PERIOD) * KEY_PERIOD
    for dim, value in (("model", model), ("user", user)):
        key = [project, name, value or ""]
        conn.execute(_UPSERT_DAY, [dim, day, *key, count, total])
        conn.execute(_UPSERT_ALL, [dim, *key, count, total])


def _named(conn: Connection, trace_id: str, name: str) -> int:
    """How many scores named ``name`` the trace has."""
    return int(
        conn.execute("SELECT count(*) FROM scores WHERE trace_id = ? AND name = ?", [trace_id, name]).fetchone()[0]
    )


def _fold_scored(conn: Connection, trace_id: str, created_at: float, name: str, sign: str) -> None:
    """Add the trace to (``sign`` ``""``), or take it out of (``"-"``), the scored traces' rollups
    under ``name``: its first score of that name was added, or its last one deleted."""
    dialect = dialect_of(conn)
    totals, hist = scored_fold_sql(
        lambda t: dialect.period(t, KEY_PERIOD),
        dialect.bucket,
        "traces",
        "CAST(? AS TEXT)",
        "id = ? AND created_at = ?",
        sign,
    )
    one = [name, trace_id, created_at]
    conn.execute(totals, one)
    conn.execute(hist, one * len(METRICS))


def rollup_fill_sql(period: str) -> tuple[str, ...]:
    """The statements that fold every number and boolean score of the ``scores`` table into
    rollups just created empty (a migration's; ``period`` is the engine's SQL for a score's day
    number)."""
    out = []
    for dim, column in SCORE_DIMS.items():
        value = f"coalesce({column}, '')"
        out.append(
            f"INSERT INTO {SCORE_ROLLUP_DAY} (dim, period, project, name, dim_value, scores, total) "
            f"SELECT '{dim}', {period} * {KEY_PERIOD}, score_project, name, {value}, count(*), sum(num) "
            f"FROM scores WHERE num IS NOT NULL GROUP BY 2, 3, 4, 5"
        )
        out.append(
            f"INSERT INTO {SCORE_ROLLUP_ALL} (dim, project, name, dim_value, scores, total) "
            f"SELECT '{dim}', score_project, name, {value}, count(*), sum(num) "
            f"FROM scores WHERE num IS NOT NULL GROUP BY 2, 3, 4"
        )
    return tuple(out)


def forget_orphans(conn: Connection, before: float) -> None:
    """Retention's last step: delete the scores of the traces that are gone (trace time before
    ``before``), and take them out of the score rollups, in the caller's transaction."""
    period = dialect_of(conn).period("trace_time", KEY_PERIOD)
    for dim, column in SCORE_DIMS.items():
        value = f"coalesce({column}, '')"
        for table, key in ((SCORE_ROLLUP_DAY, f"{period} * {KEY_PERIOD}, "), (SCORE_ROLLUP_ALL, "")):
            names = "dim, " + ("period, " if key else "") + "project, name, dim_value"
            groups = ", ".join(str(i + 1) for i in range(1, len(names.split(", "))))  # not the constant
            # "WHERE true" keeps SQLite's parser from reading ON CONFLICT as a join constraint.
            conn.execute(
                f"INSERT INTO {table} ({names}, scores, total) SELECT * FROM ("
                f"SELECT '{dim}', {key}score_project, name, {value}, -count(*), -sum(num) FROM scores "
                f"WHERE num IS NOT NULL AND {_ORPHANS} GROUP BY {groups}) AS gone WHERE true "
                f"ON CONFLICT ({names}) DO UPDATE SET "
                f"scores = {table}.scores + excluded.scores, total = {table}.total + excluded.total",
                [before],
            )
    conn.execute(f"DELETE FROM scores WHERE {_ORPHANS}", [before])
    for table in (SCORE_ROLLUP_DAY, SCORE_ROLLUP_ALL):
        conn.execute(f"DELETE FROM {table} WHERE scores <= 0")
    # The scored traces' rollups took the deleted traces back with them (see ..rollups): what they
    # brought to zero goes.
    conn.execute(f"DELETE FROM {SCORED_TOTALS} WHERE requests <= 0")
    conn.execute(f"DELETE FROM {SCORED_HIST} WHERE n <= 0")


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
    ``rows`` groups and names with the most scores, each ``{group, name, average, scores}``. An
    average is the scores' sum over their count, given to :data:`AVERAGE_DIGITS` significant digits
    (however it was read, rollups or rows, it is then the same number).

    A filter on time, project and at most one of model and user (the one grouped by, if any) is
    answered from the score rollups (:data:`~.rollups.SCORE_ROLLUP_DAY` for the whole days of the
    range, :data:`~.rollups.SCORE_ROLLUP_ALL` for all time) and the scores of the partial days at
    its edges. Otherwise time, project, model and user are matched on the scores' own copies (one
    index of the scores), and any other filter joins each score to its trace, read through the
    traces' time-first index (the score has the trace's time)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        out[group] = [
            {group: key, "name": name, "average": average, "scores": n}
            for key, name, average, n in _ranked(_gather(conn, f, group))[:rows]
        ]
    return out


def _gather(
    conn: Connection, f: TraceFilter, group: str, keys: Sequence[str] | None = None
) -> dict[tuple[Any, str], list[float]]:
    """The count and sum of the number and boolean scores of ``f``'s traces by ``group`` and
    name (only the groups ``keys`` when given), from the score rollups where ``f`` allows (see
    :func:`averages`)."""
    rest = dataclasses.replace(f, project=None, since=None, until=None, model=None, user_id=None)
    clauses, params = _conditions(conn, rest, times=False) if rest != TraceFilter() else ([], [])
    found: dict[tuple[Any, str], list[float]] = {}
    dim = None if clauses else _rollup_dim(f, group)
    if dim is None:
        _average_rows(conn, f, group, clauses, params, f.since, f.until, found, keys)
    elif f.since is None and f.until is None:
        _average_rollup(conn, f, group, dim, SCORE_ROLLUP_ALL, None, None, found, keys)
    else:
        _tiered(
            f.since,
            f.until,
            time.time(),
            [
                (
                    KEY_PERIOD,
                    functools.partial(_average_rollup, conn, f, group, dim, SCORE_ROLLUP_DAY, found=found, keys=keys),
                )
            ],
            functools.partial(_average_rows, conn, f, group, [], [], found=found, keys=keys),
        )
    return found


def _ranked(found: dict[tuple[Any, str], list[float]]) -> list[tuple[Any, str, float, int]]:
    """(group, name, average, scores) of what :func:`_gather` found, most scores first; then by
    name, and by group with none last (as both engines' SQL did)."""
    ranked = sorted(
        ((key, name, n, total) for (key, name), (n, total) in found.items() if n > 0),
        key=lambda r: (-r[2], r[1], r[0] is None, "" if r[0] is None else str(r[0])),
    )
    return [(key, name, _digits(total / n), int(n)) for key, name, n, total in ranked]


#: Most keys :func:`of_keys` takes at once (a page of sessions or users is at most 1 000).
MAX_KEYS = 1000


def of_keys(conn: Connection, f: TraceFilter, column: str, keys: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The number and boolean scores of ``f``'s traces of each of ``keys`` (users or sessions, by
    ``column``: ``user_id`` or ``session_id``): per key, ``[{name, average, scores}]``, the names
    with most scores first (a key without scores is absent; category scores are not averaged).

    Users: as :func:`averages` by user, from the score rollups when ``f`` names no more than time,
    project and the user (only the rollup rows of ``keys``: a page's worth), else from the
    scores' own copies of the trace's columns. Sessions, which the scores do not carry: the
    traces of ``keys`` (through the traces' session index) joined to their scores (through
    ``scores_by_trace_name``), so a page reads the traces of its own sessions only."""
    wanted = list(dict.fromkeys(k for k in keys if k is not None))[:MAX_KEYS]
    if not wanted:
        return {}
    if column == "user_id":
        found = _gather(conn, f, "user", wanted)
    elif column == "session_id":
        found = {}
        clauses, params = _conditions(conn, f)
        clauses.append(f"session_id IN ({', '.join('?' * len(wanted))})")
        sql = (
            "SELECT scored.session_id, scores.name, count(*), sum(scores.num) FROM "
            f"(SELECT id, session_id FROM traces{_where(clauses)}) AS scored "
            "JOIN scores ON scores.trace_id = scored.id AND scores.num IS NOT NULL "
            "GROUP BY scored.session_id, scores.name"
        )
        for key, name, n, total in conn.execute(sql, [*params, *wanted]):
            _add(found, key, name, n, total)
    else:
        raise ValueError(f"scores by key: column must be user_id or session_id, not {column!r}")
    out: dict[str, list[dict[str, Any]]] = {}
    for key, name, average, n in _ranked(found):
        out.setdefault(key, []).append({"name": name, "average": average, "scores": n})
    return out


#: Significant digits of an average (a sum kept in a rollup through adds and deletes differs from
#: a fresh sum of the same scores by a few units in the last of float's 17).
AVERAGE_DIGITS = 12


def _digits(x: float) -> float:
    return float(f"{x:.{AVERAGE_DIGITS}g}")


def _rollup_dim(f: TraceFilter, group: str) -> str | None:
    """The score rollup's dimension that answers ``group`` under ``f`` (``None``: none does)."""
    if group not in AVERAGE_GROUPS:
        raise ValueError(f"averages by must be one of {', '.join(AVERAGE_GROUPS)}, not {group!r}")
    wanted = {group} - {"project"}
    wanted |= {dim for dim, value in (("model", f.model), ("user", f.user_id)) if value is not None}
    if len(wanted) > 1:
        return None
    return wanted.pop() if wanted else "model"


def _average_rollup(
    conn: Connection,
    f: TraceFilter,
    group: str,
    dim: str,
    table: str,
    lo: int | None,
    hi: int | None,
    found: dict[tuple[Any, str], list[float]],
    keys: Sequence[str] | None = None,
) -> None:
    clauses = ["dim = ?"]
    params: list[Any] = [dim]
    if keys is not None:  # (``dim`` is then the group's)
        clauses.append(f"dim_value IN ({', '.join('?' * len(keys))})")
        params.extend(keys)
    if f.project is not None:
        clauses.append("project = ?")
        params.append(f.project)
    value = f.model if dim == "model" else f.user_id
    if value is not None:
        clauses.append("dim_value = ?")
        params.append(value)
    if hi is not None:
        clauses.append("period < ?")
        params.append(hi)
    if lo is not None:
        clauses.append("period >= ?")
        params.append(lo)
    column = "project" if group == "project" else "dim_value"
    sql = f"SELECT {column}, name, sum(scores), sum(total) FROM {table}{_where(clauses)} GROUP BY {column}, name"
    for key, name, n, total in conn.execute(sql, params):
        _add(found, None if key == "" else key, name, n, total)


def _average_rows(
    conn: Connection,
    f: TraceFilter,
    group: str,
    clauses: list[str],
    params: list[Any],
    lo: float | None,
    hi: float | None,
    found: dict[tuple[Any, str], list[float]],
    keys: Sequence[str] | None = None,
) -> None:
    own: list[str] = ["scores.num IS NOT NULL"]
    own_params: list[Any] = []
    if keys is not None:
        own.append(f"scores.{AVERAGE_GROUPS[group][0]} IN ({', '.join('?' * len(keys))})")
        own_params.extend(keys)
    for column, value in (("score_project", f.project), ("trace_model", f.model), ("trace_user", f.user_id)):
        if value is not None:
            own.append(f"scores.{column} = ?")
            own_params.append(value)
    if lo is not None:
        own.append("scores.trace_time >= ?")
        own_params.append(lo)
    if hi is not None:
        own.append("scores.trace_time < ?")
        own_params.append(hi)
    join = ""
    if clauses:
        traces = dialect_of(conn).time_first("traces")
        join = f" JOIN {traces} ON traces.created_at = scores.trace_time AND traces.id = scores.trace_id"
    # Grouped by expressions (SQLite: unary +): left to choose, SQLite may walk scores_by_name, in
    # the group's order, through every score of every time to skip a sort.
    unindexed = dialect_of(conn).unindexed
    keys = f"{unindexed('scores.' + AVERAGE_GROUPS[group][0])}, {unindexed('scores.name')}"
    sql = f"SELECT {keys}, count(*), sum(scores.num) FROM scores{join}{_where([*own, *clauses])} GROUP BY {keys}"
    for key, name, n, total in conn.execute(sql, [*own_params, *params]):
        _add(found, key, name, n, total)


def _add(found: dict[tuple[Any, str], list[float]], key: Any, name: str, n: Any, total: Any) -> None:
    cell = found.get((key, name))
    if cell is None:
        found[(key, name)] = [int(n), float(total or 0)]
    else:
        cell[0] += int(n)
        cell[1] += float(total or 0)


def names(conn: Connection, project: str | None) -> list[dict[str, str]]:
    """The score names of ``project`` (every project's when ``None``) and their types, by name."""
    scope, params = ("", []) if project is None else (" WHERE project = ?", [project])
    sql = f"SELECT DISTINCT name, kind FROM score_names{scope} ORDER BY name"
    return [{"name": n, "type": k} for n, k in conn.execute(sql, params)]


def list_traces(conn: Connection, f: TraceFilter, **options: Any) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`~.queries.list_traces` with each row's ``scores``, in one snapshot."""
    rows, cursor = queries.list_traces(conn, f, **options)
    return with_scores(conn, rows), cursor


def sessions(conn: Connection, f: TraceFilter, **options: Any) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`~.queries.sessions` with each row's ``scores`` (:func:`of_keys`), in one snapshot."""
    return _with_key_scores(conn, f, "session_id", *queries.sessions(conn, f, **options))


def users(conn: Connection, f: TraceFilter, **options: Any) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`~.queries.users` with each row's ``scores`` (:func:`of_keys`), in one snapshot."""
    return _with_key_scores(conn, f, "user_id", *queries.users(conn, f, **options))


def _with_key_scores(
    conn: Connection, f: TraceFilter, column: str, rows: list[dict[str, Any]], cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    found = of_keys(conn, f, column, [r[column] for r in rows])
    for r in rows:
        r["scores"] = found.get(r[column], [])
    return rows, cursor


def session_page(conn: Connection, session_id: str, **options: Any) -> dict[str, Any]:
    """:func:`~.queries.session_page` with the session's ``scores`` in its totals (:func:`of_keys`)
    and each trace's scores, in one snapshot."""
    page = queries.session_page(conn, session_id, **options)
    f = TraceFilter(project=options.get("project"))
    page["totals"]["scores"] = of_keys(conn, f, "session_id", [session_id]).get(session_id, [])
    with_scores(conn, page["traces"])
    return page


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
