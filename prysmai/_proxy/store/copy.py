"""Copying a SQLite store into a PostgreSQL store (``prysmai store copy``).

The source is read in ``rowid`` order, in chunks; each chunk goes through the PostgreSQL engine's
idempotent batch insert (a trace already there is skipped, and not folded twice into the rollups),
and is then checked: every id of the chunk must be in the target. The position reached is kept in
the target (``prysmai_copies``, by the source file's path), so a copy that was stopped goes on from
there when run again; a copy run again from the start stores nothing twice.
"""

from __future__ import annotations

import contextlib
import os

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


def copy_store(
    source: str,
    target: PostgresEngine,
    *,
    restart: bool = False,
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Copy the SQLite store at ``source`` into ``target``; returns (traces in the source, traces
    of the source found in the target at the end). ``restart``: from the first row, not from where
    an earlier copy stopped. ``progress(done, total)`` is called after each chunk. Raises
    :class:`StoreError` for a source that is not a store, or a chunk that did not arrive whole."""
    reader = SQLiteEngine(source).open_existing()
    if reader is None:
        raise StoreError(f"no trace store at {source}")
    key = os.path.abspath(source)
    remote = target.open_for_writing()
    try:
        remote.execute(_PROGRESS)
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
        return ids_total, present
    finally:
        with contextlib.suppress(Exception):
            remote.close()
        reader.close()


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
