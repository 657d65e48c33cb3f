"""Copying a SQLite store into a PostgreSQL store (``prysmai store copy``).

The source is read in ``rowid`` order, in chunks; each chunk goes through the PostgreSQL engine's
idempotent batch insert (a trace already there is skipped, and not folded twice into the rollups),
and is then checked: every id of the chunk must be in the target. The position reached is kept in
the target (``prysmai_copies``, by the source file's path), so a copy that was stopped goes on from
there when run again; a copy run again from the start stores nothing twice.

The scores follow the traces, the same way: in ``rowid`` order, in chunks, each chunk one
transaction of :func:`.scores.add` with the score's own id and time (a score already there is
stored once, and folded into the score rollups once), checked by id on arrival, the position kept
beside the traces'. A score whose trace the source no longer holds (retention takes those next)
is not copied.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

from . import scores
from .engine import StoreError
from .rows import COLUMNS
from .sqlite.engine import SQLiteEngine

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable
    from typing import Any

    import psycopg

    from .postgres.engine import PostgresEngine

CHUNK = 2000
_PROGRESS = """CREATE TABLE IF NOT EXISTS prysmai_copies (
    source text PRIMARY KEY, last_rowid bigint NOT NULL, copied bigint NOT NULL, total bigint NOT NULL)"""
# Added by the copy of scores; a table made by an earlier version gains it here.
_SCORE_PROGRESS = "ALTER TABLE prysmai_copies ADD COLUMN IF NOT EXISTS last_score_rowid bigint NOT NULL DEFAULT 0"
#: The source's scores that are copied: those whose trace it still holds.
_LIVE_SCORES = "EXISTS (SELECT 1 FROM traces WHERE traces.id = scores.trace_id)"
_SCORE_COLUMNS = "score_id, trace_id, score_project, name, kind, num, label, comment, scored_at, author_key, source"


class Copied(NamedTuple):
    """What a copy found at its end: the source's traces and scores, and how many of each the
    target holds (the count check: equal when the copy is whole)."""

    traces: int
    traces_present: int
    scores: int
    scores_present: int

    @property
    def whole(self) -> bool:
        return self.traces == self.traces_present and self.scores == self.scores_present


def copy_store(
    source: str,
    target: PostgresEngine,
    *,
    restart: bool = False,
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
    score_progress: Callable[[int, int], None] | None = None,
) -> Copied:
    """Copy the traces and then the scores of the SQLite store at ``source`` into ``target``;
    returns the count check (:class:`Copied`). ``restart``: from the first row, not from where an
    earlier copy stopped. ``progress(done, total)`` is called after each chunk of traces,
    ``score_progress(done, total)`` after each chunk of scores. Raises :class:`StoreError` for a
    source that is not a store, a chunk that did not arrive whole, or a score whose name has
    another type in the target's project."""
    reader = SQLiteEngine(source).open_existing()
    if reader is None:
        raise StoreError(f"no trace store at {source}")
    key = os.path.abspath(source)
    remote = target.open_for_writing()
    try:
        remote.execute(_PROGRESS)
        remote.execute(_SCORE_PROGRESS)
        total = int(reader.execute("SELECT count(*) FROM traces").fetchone()[0])
        after, done = 0, 0
        if not restart:
            row = remote.execute("SELECT last_rowid, copied FROM prysmai_copies WHERE source = %s", [key]).fetchone()
            if row is not None:
                after, done = int(row[0]), int(row[1])
        select = f"SELECT rowid, {', '.join(COLUMNS)} FROM traces WHERE rowid > ? ORDER BY rowid LIMIT ?"
        while True:
            rows = [tuple(r) for r in reader.execute(select, [after, chunk])]
            if not rows:
                break
            target.insert_rows(remote, [r[1:] for r in rows])
            ids = [r[1] for r in rows]
            found = remote.execute("SELECT count(DISTINCT id) FROM trace_rows WHERE id = ANY(%s)", [ids]).fetchone()
            if found is None or int(found[0]) != len(set(ids)):
                raise StoreError(f"a chunk of {len(ids)} trace(s) did not arrive whole; run the copy again")
            after, done = int(rows[-1][0]), done + len(rows)
            remote.execute(
                "INSERT INTO prysmai_copies (source, last_rowid, copied, total) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (source) DO UPDATE SET last_rowid = excluded.last_rowid, copied = excluded.copied, "
                "total = excluded.total",
                [key, after, done, total],
            )
            if progress is not None:
                progress(min(done, total), total)
        ids_total = int(reader.execute("SELECT count(*) FROM traces").fetchone()[0])
        present = _present(reader, remote, chunk)
        scores_total = _copy_scores(reader, target, remote, key, restart, chunk, score_progress)
        return Copied(ids_total, present, scores_total, _scores_present(reader, remote, chunk))
    finally:
        with contextlib.suppress(Exception):
            remote.close()
        reader.close()


def _copy_scores(
    reader: sqlite3.Connection,
    target: PostgresEngine,
    remote: psycopg.Connection[Any],
    key: str,
    restart: bool,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Copy the source's scores after the position kept under ``key``; returns their number."""
    from .postgres.engine import PostgresConnection

    if not _has_scores(reader):
        return 0
    total = int(reader.execute(f"SELECT count(*) FROM scores WHERE {_LIVE_SCORES}").fetchone()[0])
    after = 0
    if not restart:
        row = remote.execute("SELECT last_score_rowid FROM prysmai_copies WHERE source = %s", [key]).fetchone()
        after = int(row[0]) if row is not None else 0
    done = int(
        reader.execute(f"SELECT count(*) FROM scores WHERE rowid <= ? AND {_LIVE_SCORES}", [after]).fetchone()[0]
    )
    select = f"SELECT rowid, {_SCORE_COLUMNS} FROM scores WHERE rowid > ? AND {_LIVE_SCORES} ORDER BY rowid LIMIT ?"
    conn = PostgresConnection(remote)
    while True:
        rows = [tuple(r) for r in reader.execute(select, [after, chunk])]
        if not rows:
            return total
        with target.editing(conn):
            for _rowid, score_id, trace_id, project, name, kind, num, label, comment, at, author, source in rows:
                score = scores.NewScore(name, kind, num, label, comment)
                try:
                    added = scores.add(
                        conn,
                        trace_id,
                        score,
                        project=project,
                        author_key=author,
                        source=source,
                        score_id=score_id,
                        scored_at=at,
                    )
                except scores.KindConflict as exc:
                    raise StoreError(f"score {score_id}: {exc}") from None
                if added is None:
                    raise StoreError(f"score {score_id}: its trace {trace_id} is not in the target; run the copy again")
            after = int(rows[-1][0])
            remote.execute("UPDATE prysmai_copies SET last_score_rowid = %s WHERE source = %s", [after, key])
        ids = [r[1] for r in rows]
        found = remote.execute("SELECT count(*) FROM scores WHERE score_id = ANY(%s)", [ids]).fetchone()
        if found is None or int(found[0]) != len(ids):
            raise StoreError(f"a chunk of {len(ids)} score(s) did not arrive whole; run the copy again")
        done += len(rows)
        if progress is not None:
            progress(min(done, total), total)


def _has_scores(reader: sqlite3.Connection) -> bool:
    """Whether the source has a scores table (a store written before scores has none)."""
    return reader.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scores'").fetchone() is not None


def _scores_present(reader: sqlite3.Connection, remote: psycopg.Connection[Any], chunk: int) -> int:
    """How many of the source's scores (of traces it holds) the target holds."""
    if not _has_scores(reader):
        return 0
    present = 0
    cursor = reader.execute(f"SELECT score_id FROM scores WHERE {_LIVE_SCORES} ORDER BY rowid")
    while True:
        ids = [r[0] for r in cursor.fetchmany(chunk)]
        if not ids:
            return present
        row = remote.execute("SELECT count(*) FROM scores WHERE score_id = ANY(%s)", [ids]).fetchone()
        present += int(row[0]) if row is not None else 0


def _present(reader: sqlite3.Connection, remote: psycopg.Connection[Any], chunk: int) -> int:
    """How many of the source's traces the target holds (the count check at the end)."""
    present = 0
    cursor = reader.execute("SELECT id FROM traces ORDER BY rowid")
    while True:
        ids = [r[0] for r in cursor.fetchmany(chunk)]
        if not ids:
            return present
        row = remote.execute("SELECT count(DISTINCT id) FROM trace_rows WHERE id = ANY(%s)", [ids]).fetchone()
        present += int(row[0]) if row is not None else 0
