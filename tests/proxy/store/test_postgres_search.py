"""PostgreSQL's search index of the bodies against SQLite's FTS5 index, on a real server: the same
words find the same traces (accents and case ignored, punctuation between words, the last word a
prefix, a phrase within one body), a body too large for a ``tsvector`` still goes in, a server
without the ``unaccent`` extension says what to do and searches the bodies, and
``--search-index off``/``on`` drops and builds it."""

from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import Store, TraceFilter, queries
from prysmai._proxy.store.engine import dialect_of
from prysmai._proxy.store.postgres import search
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

NOW = float(int(time.time()) - 3600)
#: Words as they are written in bodies: accents, case, digits, words joined by punctuation.
WORDS = [
    "Zürich",
    "zurich",
    "ZÜRICH",
    "naïve",
    "Crème",
    "brûlée",
    "search_docs",
    "foo-bar",
    "e-mail",
    "a@b.com",
    "https://x.org/path?q=1",
    "3.14",
    "v1.2.3",
    "Needle",
    "needles",
    "haystack",
    "北京",
    "quokka",
    "the",
    "an",
    "x",
]
SEPARATORS = [" ", "  ", ", ", '": "', "\n", "\t", "/", "(", ") "]


def _body(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(0, 12))]
    out = ""
    for word in words:
        out += word + rng.choice(SEPARATORS)
    return out


def _rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {
            "id": f"{rng.getrandbits(128):032x}",
            "created_at": NOW - i * 97.0,
            "method": "POST",
            "endpoint": "chat/completions",
            "model": "gpt-4o-mini",
            "stream": 0,
            "status": "success",
            "request_body": _body(rng) if rng.random() < 0.95 else None,
            "response_body": _body(rng) if rng.random() < 0.7 else None,
            "notes": "[]",
            "project": "default",
        }
        rows.append(tuple(row.get(c) for c in COLUMNS))
    return rows


@pytest.fixture(scope="module")
def both(postgres_server: Any, tmp_path_factory: Any) -> Any:
    """The same 400 traces in a SQLite store (FTS5) and a PostgreSQL store (its search index)."""
    rows = _rows(400, seed=3)
    path = str(tmp_path_factory.mktemp("sqlite") / "t.db")
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, rows)
    engine = PostgresEngine(postgres_server.database())
    conn = engine.open_for_writing()
    try:
        assert search.exists(conn)
        engine.insert_rows(conn, rows)
    finally:
        conn.close()
    stores = Store.existing(path, read_time_limit=None), Store.existing(engine.url, read_time_limit=None)
    assert stores[0] is not None and stores[1] is not None
    yield stores
    for store in stores:
        assert store is not None
        store.close()


def _found(store: Store, text: str) -> list[str]:
    rows, cursor = store.read_sync(queries.list_traces, TraceFilter(text=text), limit=1000)
    assert cursor is None
    return [r["id"] for r in rows]


def _spelled(word: str, rng: random.Random) -> str:
    """``word`` as someone may type it: any case, sometimes cut short."""
    word = "".join(c.upper() if rng.random() < 0.3 else c.lower() for c in word)
    return word


queries_typed = st.builds(
    lambda words, seps, cut, seed: _query(words, seps, cut, random.Random(seed)),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    st.lists(st.sampled_from([" ", "-", ", ", "_", ". "]), min_size=2, max_size=2),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=1000),
)


def _query(words: list[str], seps: list[str], cut: int, rng: random.Random) -> str:
    spelled = [_spelled(w, rng) for w in words]
    if cut and len(spelled[-1]) > cut:
        spelled[-1] = spelled[-1][:-cut]  # the last word still being typed
    out = spelled[0]
    for i, word in enumerate(spelled[1:]):
        out += seps[i % len(seps)] + word
    return out


@given(text=queries_typed)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_text_search_finds_the_same_traces_on_both_engines(both: Any, text: str) -> None:
    """Both ways PostgreSQL answers: from the matches' ids (few), and checking the list's rows
    (many: here, more than 2)."""
    sqlite_store, pg_store = both
    expected = _found(sqlite_store, text)
    assert expected == _found(pg_store, text), text
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search, "FEW_MATCHES", 2)
        assert expected == _found(pg_store, text), text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zurich", True),  # accents and case
        ("ZÜR", True),  # a prefix
        ("search docs", True),  # _ separates words
        ("zurich zebra", False),  # every word of a phrase
        ("北京", True),
        ("quokk", True),
        ("zebra", False),
        ("_", False),  # no word: nothing on either engine
    ],
)
def test_what_a_search_finds(both: Any, text: str, expected: bool) -> None:
    sqlite_store, pg_store = both
    found = _found(pg_store, text)
    assert bool(found) == expected
    assert found == _found(sqlite_store, text)


def test_a_search_reads_the_index(both: Any, monkeypatch: Any) -> None:
    """A rare word's traces are found from both bodies' words indexes (their ids); a common
    word's condition checks each row of the list with the same indexes' expressions (told not to
    read whole tables, the planner answers it from them)."""
    _, pg_store = both

    def plans(conn: Any) -> tuple[tuple[str, list[Any]], str]:
        rare = dialect_of(conn).text_search(conn, "quokka")
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = conn.execute("EXPLAIN " + search.MATCHES, ["quokka", "quokka", 10]).fetchall()
        return rare, "\n".join(r[0] for r in plan)

    (sql, params), plan = pg_store.read_sync(plans)
    assert sql == "traces.id = ANY(?)" and params[0], (sql, params)
    assert "prysmai_words_idx " in plan and "prysmai_words_idx1" in plan, plan
    monkeypatch.setattr(search, "FEW_MATCHES", 1)

    def many(conn: Any) -> tuple[str, str]:
        sql, params = dialect_of(conn).text_search(conn, "zurich")
        conn.execute("SET LOCAL enable_seqscan = off")
        rows = conn.execute(f"EXPLAIN SELECT id FROM traces WHERE {sql}", params).fetchall()
        return sql, "\n".join(r[0] for r in rows)

    sql, plan = pg_store.read_sync(many)
    assert sql.startswith("EXISTS") and "prysmai_words_idx" in plan, plan


def test_a_body_too_large_for_a_tsvector_is_stored_and_found(pg_url: str) -> None:
    """A body of more distinct words than a ``tsvector`` holds (1 MB) fails no batch: its first
    characters are indexed, and the trace is stored and found by them."""
    rng = random.Random(5)
    huge = "wombat " + " ".join(uuid.UUID(int=rng.getrandbits(128)).hex[:12] for _ in range(160_000))
    rows = _rows(3, seed=9)
    row = list(rows[0])
    row[COLUMNS.index("request_body")] = huge
    rows[0] = tuple(row)
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    try:
        assert engine.insert_rows(conn, rows)[0] == 3
    finally:
        conn.close()
    store = Store.existing(pg_url, read_time_limit=None)
    assert store is not None
    with store:
        assert _found(store, "wombat") == [row[COLUMNS.index("id")]]
        assert store.read_sync(queries.count_traces, TraceFilter()) == (3, True)


def test_without_the_extension_it_says_what_to_do_and_reads_the_bodies(postgres_server: Any, caplog: Any) -> None:
    """A role that may create tables in its schema but not extensions in the database: the
    store works, the log says which extension to create and how, and ``q=`` finds substrings."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    role = "r_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
    with psycopg.connect(postgres_server.url(name), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA AUTHORIZATION {role}")  # its tables go there: no CREATE on the database
    url = f"postgresql://{role}:pw-{role}@127.0.0.1:{postgres_server.port}/{name}"
    engine = PostgresEngine(url, search_index=True)
    with caplog.at_level(logging.WARNING, logger="prysmai.proxy"):
        conn = engine.open_for_writing()
    try:
        engine.insert_rows(conn, _rows(50, seed=2))
        assert not search.exists(conn)
    finally:
        conn.close()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "CREATE EXTENSION unaccent" in said and "pw-" not in said, said
    store = Store.existing(url, read_time_limit=None)
    assert store is not None
    with store:
        # A substring, case-insensitive for ASCII: "eedl" is in "Needle", which no word search finds.
        assert _found(store, "eedl") and _found(store, "eedl") == _found(store, "needle")


def test_search_index_off_drops_it_and_on_builds_it_over_the_stored_bodies(pg_url: str) -> None:
    rows = _rows(100, seed=6)
    conn = PostgresEngine(pg_url).open_for_writing()
    try:
        PostgresEngine(pg_url).insert_rows(conn, rows)
    finally:
        conn.close()
    store = Store.existing(pg_url, read_time_limit=None)
    assert store is not None
    with store:
        indexed = _found(store, "needle")
        assert indexed
        for wanted in (False, True):
            conn = PostgresEngine(pg_url, search_index=wanted).open_for_writing()
            try:
                assert search.exists(conn) == wanted
                # Built over stored bodies, with their words' frequencies, which the planner
                # needs to start a rare word's search from the index.
                sql = "SELECT count(*) FROM pg_stats WHERE tablename LIKE 'trace_bodies_d%prysmai_words_idx%'"
                assert (conn.execute(sql).fetchone()[0] > 0) == wanted
            finally:
                conn.close()
        assert _found(store, "needle") == indexed
