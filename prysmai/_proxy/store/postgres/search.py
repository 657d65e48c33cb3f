"""The search index over the bodies on PostgreSQL: what a text search (``q=``) reads instead of
every body, with the words contract of SQLite's FTS5 index (:mod:`..sqlite.search`).

A body's words are found the way FTS5's ``unicode61`` tokenizer (diacritics removed) finds them:
the text is folded -- accents removed (the ``unaccent`` extension), lower case (ICU's, so beyond
ASCII whatever the database's locale), every run of characters that are not letters or digits
made one space -- and the folded text becomes a ``tsvector`` of PostgreSQL's ``simple``
configuration (each word as it is, with its position). ``q=`` is folded the same way and its
words become a phrase, the last one a prefix (``'search' <-> 'doc':*``), matched against each
body on its own, as FTS5 matches a phrase within one column.

Two GIN indexes of the partitioned ``trace_bodies`` hold them (one per body, an index per day
partition, made with the partition), kept by the batch insert itself: nothing else to run. A
search reads its first matches' ids from them; fewer than :data:`FEW_MATCHES`, the list starts
from those; more, the list is read in its order, each row checked, until a page is full.

Where it differs from SQLite's, documented in docs/proxy.md:

* ``unaccent`` folds a little more than FTS5: ``ß`` is ``ss``, ``æ`` is ``ae``, Greek and
  Cyrillic accents go too (FTS5 removes diacritics from Latin letters only);
* only a body's first :data:`INDEXED_CHARACTERS` characters are searched (a ``tsvector`` holds at
  most 1 MB; the body cap keeps most bodies shorter anyway), and a phrase is found only within a
  body's first 16 383 words (a ``tsvector`` position's limit; a single word is found anywhere in
  those characters); a word longer than 2 047 bytes is not indexed.

It needs ``unaccent`` (a contrib extension, *trusted*: a user with ``CREATE`` on the database,
its owner for one, can create it; Debian's ``postgresql`` package ships it) and ICU (the
``und-x-icu`` collation; Debian's, RDS's and most builds have it). Where either is missing the
store has no index: a clear warning says what to run, and ``q=`` reads the bodies as a substring
(``ILIKE``), as SQLite without FTS5 does. ``prysmai proxy --search-index off`` drops the index.
"""

from __future__ import annotations

import logging
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import psycopg

log = logging.getLogger("prysmai.proxy")

EXTENSION = "unaccent"
COLLATION = "und-x-icu"
#: A body's characters that are searched: a ``tsvector`` of more could pass its 1 MB limit (and
#: fail the batch); words are at least one character and a space apart, so this many characters
#: make at most ~50 000 positions, well under it.
INDEXED_CHARACTERS = 100_000
#: The indexes, one per body (see the module's docstring).
INDEXES = {"request_body": "trace_bodies_words_request", "response_body": "trace_bodies_words_response"}

_WORD = re.compile(r"\w+", re.UNICODE)


def _functions(schema: str) -> str:
    """The folding functions, calling ``unaccent`` in ``schema`` by its full name (an index's
    expression must not depend on the ``search_path``)."""
    unaccent = f"{schema}.unaccent('{schema}.unaccent'::regdictionary, $1)"
    return f"""
CREATE OR REPLACE FUNCTION prysmai_fold(text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT regexp_replace(lower({unaccent} COLLATE "{COLLATION}"), '[^[:alnum:]]+', ' ', 'g') $$;
CREATE OR REPLACE FUNCTION prysmai_words(text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT to_tsvector('pg_catalog.simple'::regconfig, prysmai_fold(left($1, {INDEXED_CHARACTERS}))) $$;
CREATE OR REPLACE FUNCTION prysmai_phrase(text) RETURNS tsquery
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT CASE WHEN btrim(f) = '' THEN NULL ELSE to_tsquery('pg_catalog.simple'::regconfig,
        replace(btrim(f), ' ', ' <-> ') || ':*') END FROM prysmai_fold($1) AS f $$;
"""


def exists(conn: Any) -> bool:
    """Whether the store has the search index (both indexes)."""
    found = " AND ".join(f"to_regclass('{index}') IS NOT NULL" for index in INDEXES.values())
    return bool(conn.execute(f"SELECT {found}").fetchone()[0])


#: A search matching fewer traces than this starts from them (their ids, read from the index);
#: one matching more reads the list in its order and checks each row, so that a page of a common
#: word stops at a page's worth (as SQLite's, :mod:`..sqlite.engine`).
FEW_MATCHES = 5000
_MATCH = " OR ".join(f"prysmai_words(b.{body}) @@ prysmai_phrase(?)" for body in INDEXES)
#: The ids of a search's first matches (the text once per body, then how many).
MATCHES = f"SELECT b.id FROM trace_bodies b WHERE {_MATCH} LIMIT ?"


def condition(conn: Any, text: str) -> tuple[str, list[Any]] | None:
    """The condition on ``traces`` for a search of ``text`` through the index; ``None`` when
    ``text`` has no word to look for (SQLite's FTS5 then reads the bodies too)."""
    if not _WORD.search(text):
        return None
    words = [text] * len(INDEXES)
    # The matches from the indexes, up to FEW_MATCHES. The planner is told not to read whole
    # tables for it: it cannot know how rare a prefix or a phrase is, and reading every body's
    # words to find a rare one takes minutes at a million traces. In the caller's read
    # transaction; the setting is put back at once.
    conn.execute("SET LOCAL enable_seqscan = off")
    try:
        ids = [r[0] for r in conn.execute(MATCHES, [*words, FEW_MATCHES]).fetchall()]
    finally:
        conn.execute("RESET enable_seqscan")
    if len(ids) < FEW_MATCHES:
        return "traces.id = ANY(?)", [ids]
    # The bodies' own table, not the view's bodies (subqueries of each row, which no index can
    # answer): each row of the list, in its order, checked until the page is full.
    sql = (
        "EXISTS (SELECT 1 FROM trace_bodies b WHERE b.id = traces.id AND b.created_at = traces.created_at"
        f" AND ({_MATCH}))"
    )
    return sql, words


def missing(conn: psycopg.Connection[Any]) -> str | None:
    """Why this server cannot have the index (with what to do), or ``None``: it can. Creates the
    extension when it can (in a savepoint of the caller's transaction)."""
    import psycopg

    if conn.execute("SELECT 1 FROM pg_collation WHERE collname = %s", [COLLATION]).fetchone() is None:
        return f"this PostgreSQL has no ICU collation {COLLATION!r} (built without ICU)"
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", [EXTENSION]).fetchone() is not None:
        return None
    try:
        with conn.transaction():
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"the extension {EXTENSION} could not be created ({reason}); as a user with CREATE on this "
            f"database (its owner, or a superuser), run: CREATE EXTENSION {EXTENSION};"
            " (Debian: the postgresql package ships it; elsewhere, postgresql-contrib)"
        )
    return None


def install(conn: psycopg.Connection[Any], where: str) -> bool:
    """Build the index over every stored body (in the caller's transaction); ``False``, with a
    warning that says what to do, when this server cannot have it."""
    why = missing(conn)
    if why is not None:
        log.warning("trace store %s: no search index of the bodies: %s; text searches (q=) read the bodies", where, why)
        return False
    sql = "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = %s"
    row = conn.execute(sql, [EXTENSION]).fetchone()
    schema = str(row[0]) if row else "public"  # quoted by PostgreSQL where it needs to be
    conn.execute(_functions(schema))
    for body, index in INDEXES.items():
        conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON trace_bodies USING gin (prysmai_words({body}))")
    # The words' frequencies, which the planner reads to start a search from the index (a rare
    # word) or from the list's order (a common one). Without them it guesses a quarter of the
    # rows for any word and walks the list, reading every body for a rare one; autovacuum would
    # gather them only for the days that still change.
    conn.execute("ANALYZE trace_bodies")
    return True


def uninstall(conn: psycopg.Connection[Any]) -> None:
    """Drop the index (in the caller's transaction); the functions stay, harmless."""
    for index in INDEXES.values():
        conn.execute(f"DROP INDEX IF EXISTS {index}")


__all__ = [
    "FEW_MATCHES",
    "INDEXED_CHARACTERS",
    "INDEXES",
    "MATCHES",
    "condition",
    "exists",
    "install",
    "missing",
    "uninstall",
]
