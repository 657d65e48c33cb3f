"""The search index over the bodies: an FTS5 table of the words of every trace's request and
response body, so that a text search (``q=``) reads the index instead of every body.

``traces_fts`` is an *external-content* FTS5 table: it holds the index only, the text stays in
``traces`` (rows are matched by ``rowid``). The writer keeps it up to date as it keeps the rollups:
a trigger on the rollup watermark (:mod:`.rollups`) adds each batch's rows in the batch's own
transaction, and the delete trigger takes a deleted row out. Words are found by FTS5's
``unicode61`` tokenizer with diacritics removed (``zurich`` finds ``Zürich``) and case folded;
``_`` and other punctuation separate words, so ``search_docs`` is the phrase ``search docs``.

Optional: SQLite built without FTS5 has no index, and ``q=`` reads the bodies (``LIKE``) as before;
``prysmai proxy --search-index off`` drops it (and ``on`` builds it again) for a writer that must
not pay for it (bench/README.md has the cost). The choice is kept in the store (``search_state``),
so that whatever else opens it for writing (the writer process, a script) leaves it as chosen.

The index refers to rows by ``rowid``. SQLite's ``VACUUM`` keeps the rowids of a table it copies
whole, as it copies ``traces``; should they ever change, ``INSERT INTO traces_fts(traces_fts)
VALUES ('rebuild')`` builds the index again from the rows.

On PostgreSQL the same search would be a ``tsvector`` column of both bodies with a GIN index
(``to_tsvector('simple', ...)``, ``unaccent``), kept by the same insert, and the query
``@@ phraseto_tsquery('simple', unaccent(q))`` with a prefix on the last word.
"""

from __future__ import annotations

import re
import sqlite3

TABLE = "traces_fts"
TOKENIZER = "unicode61 remove_diacritics 2"
#: The trigger that indexes each batch (fires with the rollups' fold, once per batch).
FOLD_TRIGGER = "search_fold"
DELETE_TRIGGER = "search_delete"

_CREATE = f"""CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(request_body, response_body,
    content='traces', content_rowid='rowid', tokenize='{TOKENIZER}')"""
_FOLD = f"""CREATE TRIGGER IF NOT EXISTS {FOLD_TRIGGER} AFTER UPDATE OF folded_rowid ON rollup_state
WHEN NEW.folded_rowid > NEW.fold_from BEGIN
    INSERT INTO {TABLE} (rowid, request_body, response_body)
    SELECT rowid, request_body, response_body FROM traces NOT INDEXED
    WHERE rowid > NEW.fold_from AND rowid <= NEW.folded_rowid;
END"""
_DELETE = f"""CREATE TRIGGER IF NOT EXISTS {DELETE_TRIGGER} AFTER DELETE ON traces
WHEN OLD.rowid <= (SELECT folded_rowid FROM rollup_state) BEGIN
    INSERT INTO {TABLE} ({TABLE}, rowid, request_body, response_body)
    VALUES ('delete', OLD.rowid, OLD.request_body, OLD.response_body);
END"""


def available(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has FTS5."""
    try:
        conn.execute("SELECT fts5(?1)", (None,))
    except sqlite3.OperationalError as exc:
        # "wrong number of arguments" / a pointer error: the function exists, so FTS5 does.
        return "no such function" not in str(exc)
    return True


def exists(conn: sqlite3.Connection) -> bool:
    """Whether the store has the search index."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(sql, (TABLE,)).fetchone() is not None


_STATE = """CREATE TABLE IF NOT EXISTS search_state (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    enabled INTEGER NOT NULL
)"""


def wanted(conn: sqlite3.Connection) -> bool:
    """Whether the store's owner wants the index (on unless turned off)."""
    row = conn.execute("SELECT enabled FROM search_state").fetchone() if _has_state(conn) else None
    return row is None or bool(row[0])


def _has_state(conn: sqlite3.Connection) -> bool:
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'search_state'"
    return conn.execute(sql).fetchone() is not None


def choose(conn: sqlite3.Connection, enabled: bool) -> bool:
    """Keep the choice and make the store match it (in the caller's write transaction): build
    the index over every folded row, or drop it. ``True`` if anything changed."""
    conn.execute(_STATE)
    conn.execute("INSERT OR REPLACE INTO search_state (one, enabled) VALUES (1, ?)", (int(enabled),))
    if enabled and not exists(conn):
        return install(conn)
    if not enabled and exists(conn):
        uninstall(conn)
        return True
    return False


def install(conn: sqlite3.Connection) -> bool:
    """Create the index over the rows folded so far, and its triggers (in the caller's write
    transaction); ``False`` when this SQLite lacks FTS5."""
    if not available(conn):
        return False
    conn.execute(_CREATE)
    conn.execute(
        f"INSERT INTO {TABLE} (rowid, request_body, response_body) SELECT rowid, request_body, response_body "
        "FROM traces WHERE rowid <= (SELECT folded_rowid FROM rollup_state)"
    )
    conn.execute(_FOLD)
    conn.execute(_DELETE)
    return True


def uninstall(conn: sqlite3.Connection) -> None:
    """Drop the index and its triggers (in the caller's write transaction)."""
    conn.execute(f"DROP TRIGGER IF EXISTS {FOLD_TRIGGER}")
    conn.execute(f"DROP TRIGGER IF EXISTS {DELETE_TRIGGER}")
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def fewer_matches_than(conn: sqlite3.Connection, match: str, n: int) -> bool:
    """Whether ``match`` matches fewer than ``n`` traces (reads at most ``n`` of its matches)."""
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} WHERE {TABLE} MATCH ? LIMIT ?)"
    return int(conn.execute(sql, (match, n)).fetchone()[0]) < n


_WORD = re.compile(r"\w+", re.UNICODE)


def match_expression(text: str) -> str | None:
    """The FTS5 query for ``text``: its words as a phrase, the last one as a prefix (so that a
    word being typed still matches); ``None`` when ``text`` has no word to look for."""
    words = _WORD.findall(text)
    if not words:
        return None
    quoted = [w.replace('"', '""') for w in words]
    return '"' + " ".join(quoted) + '" *'


__all__ = [
    "TABLE",
    "available",
    "choose",
    "exists",
    "fewer_matches_than",
    "install",
    "match_expression",
    "uninstall",
    "wanted",
]
