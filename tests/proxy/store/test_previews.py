"""The list's previews: the start of the last user message and of the answer, one line each,
computed when a row is built (after redaction and the cap) and stored in schema 6 (SQLite) / 2
(PostgreSQL); what the list API answers for each request shape a real proxy captures."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prysmai._proxy.store import Store, TraceFilter, queries
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from prysmai._proxy.store.previews import PREVIEW_CHARS, fill
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows
from prysmai._proxy.store.sqlite.migrations import MIGRATIONS as SQLITE_MIGRATIONS

from ..conftest import KEY, FakeUpstream, ProxyHandle

AUTH = {"Authorization": f"Bearer {KEY}"}


def previews(request: Any, response: Any) -> tuple[Any, Any]:
    row = fill({"request_body": json.dumps(request), "response_body": json.dumps(response)})
    return row["prompt_preview"], row["answer_preview"]


@pytest.mark.parametrize(
    ("request_doc", "response_doc", "expected"),
    [
        (
            {
                "messages": [
                    {"role": "system", "content": "be kind"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "  second\n\n  question "},
                ]
            },
            {"choices": [{"message": {"role": "assistant", "content": "the\tanswer"}}]},
            ("second question", "the answer"),
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is"},
                            {"type": "image_url", "image_url": {"url": "data:x"}},
                        ],
                    }
                ]
            },
            {"choices": [{"message": {"content": None, "tool_calls": [{"function": {"name": "lookup"}}]}}]},
            ("what is [image]", "[tool call] lookup"),
        ),
        ({"input": "Say hi", "instructions": "Be brief."}, {"output_text": "Hi you"}, ("Say hi", "Hi you")),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Stream hi"}]}]},
            {"output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello"}]}]},
            ("Stream hi", "Hello"),
        ),
        ({"prompt": "Once upon"}, {"choices": [{"text": " a time"}]}, ("Once upon", "a time")),
        (
            {"input": ["embed me", "and me"]},
            {"object": "list", "data": [{}, {}]},
            ("embed me", "[2 embedding vector(s)]"),
        ),
        ({"messages": []}, {"error": {"message": "model not found"}}, (None, "model not found")),
    ],
)
def test_each_shape_gives_its_preview(request_doc: Any, response_doc: Any, expected: tuple[Any, Any]) -> None:
    assert previews(request_doc, response_doc) == expected


def test_plain_text_bodies_and_no_bodies() -> None:
    assert fill({"request_body": "hello there", "response_body": None}) == {
        "request_body": "hello there",
        "response_body": None,
        "prompt_preview": "hello there",
        "answer_preview": None,
    }


@given(text=st.text(st.characters(codec=None, exclude_categories=()), max_size=3000))
@settings(max_examples=300, deadline=None)
def test_a_preview_is_one_short_line_of_the_message(text: str) -> None:
    prompt, answer = previews({"messages": [{"role": "user", "content": text}]}, {"output_text": text})
    assert prompt == answer
    if prompt is None:
        assert not text.split()
        return
    assert len(prompt) <= PREVIEW_CHARS and "\n" not in prompt and "\r" not in prompt
    assert prompt.rstrip("…") in " ".join(text.split())  # its start, whitespace runs as one space
    assert " ".join(text.split()).startswith(prompt.rstrip("…"))


def test_a_real_proxy_lists_previews_redacted_and_not_under_capture_metadata(
    fake: FakeUpstream, start_proxy: Any, tmp_path: Any
) -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 6
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"my key is {secret} <b>hi</b>"}]}
    proxy: ProxyHandle = start_proxy(fake.url)
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=chat, headers=AUTH).status_code == 200
    streamed = {**chat, "stream": True, "messages": [{"role": "user", "content": "stream please"}]}
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=streamed, headers=AUTH).status_code == 200
    proxy.traces()
    listed = httpx.get(f"{proxy.base_url}/traces", params={"since": "all"}, headers=AUTH).json()["data"]
    stream, plain = listed
    assert plain["prompt_preview"] == "my key is [redacted:secret] <b>hi</b>" and secret not in json.dumps(listed)
    assert plain["answer_preview"] and stream["prompt_preview"] == "stream please"
    assert stream["stream"] is True and stream["answer_preview"]
    full = httpx.get(f"{proxy.base_url}/traces/{stream['id']}", headers=AUTH).json()
    assert full["response_body"]["choices"][0]["message"]["content"].startswith(stream["answer_preview"].rstrip("…"))

    outline = start_proxy(fake.url, db_path=str(tmp_path / "outline.db"), capture="metadata")
    assert httpx.post(f"{outline.base_url}/chat/completions", json=chat, headers=AUTH).status_code == 200
    outline.traces()
    row = httpx.get(f"{outline.base_url}/traces", headers=AUTH).json()["data"][0]
    assert row["prompt_preview"] is None and row["answer_preview"] is None


def _row(i: int, **extra: Any) -> tuple[Any, ...]:
    row = {
        "id": f"{i:032x}",
        "created_at": 1_700_000_000.0 + i,
        "method": "POST",
        "endpoint": "chat/completions",
        "status": "success",
        "stream": 0,
        "project": "default",
        **extra,
    }
    return tuple(row.get(c) for c in COLUMNS)


def test_a_schema_5_sqlite_store_gains_the_columns_and_keeps_its_rows(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    for step in range(5):  # exactly as schema 5 left it
        conn.execute("BEGIN")
        SQLITE_MIGRATIONS[step](conn)
        conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    old = [c for c in COLUMNS if c not in ("prompt_preview", "answer_preview", "error_code")]  # later columns
    conn.execute(
        f"INSERT INTO traces ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
        [dict(zip(COLUMNS, _row(1))).get(c) for c in old],
    )
    conn.close()
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    with store:
        rows, _ = store.read_sync(queries.list_traces, TraceFilter())
    assert [r["id"] for r in rows] == [f"{1:032x}"] and rows[0]["prompt_preview"] is None
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, [_row(2, prompt_preview="asked", answer_preview="answered")])
    store = Store.existing(path, read_time_limit=None)
    assert store is not None
    with store:
        rows, _ = store.read_sync(queries.list_traces, TraceFilter())
    assert (rows[0]["prompt_preview"], rows[0]["answer_preview"]) == ("asked", "answered")


def test_a_version_1_postgres_database_gains_the_columns_and_answers_as_sqlite(pg_url: str, tmp_path: Any) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:  # a database as version 1 left it
        conn.execute(PG_MIGRATIONS[0])
        conn.execute("CREATE TABLE prysmai_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO prysmai_schema (version) VALUES (1)")
    rows = [_row(i, prompt_preview=f"q{i} <i>", answer_preview=None if i % 2 else f"a{i}") for i in range(30)]
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()  # migrates to the current version (previews since 3)
    engine.insert_rows(conn, rows)
    conn.close()
    path = str(tmp_path / "t.db")
    with SQLiteEngine(path).open_for_writing() as lite:
        insert_rows(lite, rows)
    listed = []
    for url in (path, pg_url):
        store = Store.existing(url, read_time_limit=None)
        assert store is not None
        with store:
            page, _ = store.read_sync(queries.list_traces, TraceFilter(), limit=100)
        listed.append([(r["id"], r["prompt_preview"], r["answer_preview"]) for r in page])
    assert listed[0] == listed[1] and listed[0][0] == (f"{29:032x}", "q29 <i>", None)
