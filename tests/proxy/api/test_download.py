"""Export: every trace of a filtered list as CSV or JSON Lines, streamed chunk by chunk, behind
``/api/v1/traces?format=…`` and the dashboard's ``/ui/api/traces?format=…``; safe in a
spreadsheet and valid JSON whatever was captured; a client that leaves stops the reading. A real
proxy on loopback over a store filled beforehand (more rows than one chunk)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prysmai._proxy.api import download
from prysmai._proxy.store.rows import COLUMNS
from prysmai._proxy.store.sqlite import SQLiteEngine, insert_rows

from ..conftest import KEY, PRYSMAI, FakeUpstream, Proxy, ProxyHandle, cli_env

AUTH = {"Authorization": f"Bearer {KEY}"}
NOW = float(int(time.time()) - 60)
#: Every character, unpaired surrogates and controls included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
HOSTILE = st.one_of(
    ANY_TEXT,
    st.sampled_from(["=1+2", "+cmd", "-2+3", "@SUM(A1)", "\t=x", "\r=x", "\uff1d1", "a\nb", "\x00", "\u2028"]),
    st.just("\ud800"),
    st.builds(lambda a, b: a + b, st.sampled_from(["=", "+", "-", "@", "\t", "\r", "\n"]), ANY_TEXT),
)


def make_rows(n: int, seed: int = 3, **fixed: Any) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {
            "id": f"{rng.getrandbits(128):032x}",
            "created_at": NOW - i * 0.5,
            "method": "POST",
            "endpoint": "chat/completions",
            "model": rng.choice(["gpt-4o-mini", "o3"]),
            "stream": int(i % 3 == 0),
            "status": rng.choice(["success", "success", "error"]),
            "http_status": 200,
            "latency_ms": round(rng.random() * 100, 3),
            "total_tokens": rng.choice([None, rng.randint(1, 900)]),
            "cost_usd": rng.choice([None, round(rng.random() / 100, 8)]),
            "request_body": json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}),
            "response_body": f"answer {i}",
            "user_id": rng.choice(["ann", "bob", None]),
            "metadata": '{"env": "prod"}' if i % 2 else None,
            "notes": "[]",
            "key_id": "key_aaaaaaaaaaaa",
            "project": "default",
            "provider": "openai",
        }
        row.update(fixed)
        rows.append(row)
    return rows


def fill(path: str, rows: list[dict[str, Any]]) -> None:
    with SQLiteEngine(path).open_for_writing() as conn:
        insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows])


@pytest.fixture
def filled(tmp_path: Any, fake: FakeUpstream, start_proxy: Any) -> tuple[ProxyHandle, list[dict[str, Any]]]:
    """A proxy over 1 234 traces (more than two chunks), newest first."""
    rows = make_rows(1234)
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    return start_proxy(fake.url, db_path=path), rows


@contextlib.contextmanager
def dashboard(proxy: ProxyHandle) -> Iterator[httpx.Client]:
    """A client logged in to the proxy's dashboard."""
    base = proxy.server.url
    with httpx.Client(base_url=base) as client:
        r = client.post("/ui/login", data={"key": KEY}, headers={"Origin": base}, follow_redirects=False)
        assert r.status_code == 303
        client.cookies.update(r.cookies)
        yield client


def listed_ids(base: str, params: dict[str, str]) -> list[str]:
    """The ids of the list API, paged through."""
    ids: list[str] = []
    cursor = None
    while True:
        page = httpx.get(
            f"{base}/traces", params={**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}, headers=AUTH
        ).json()
        ids += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


# -- the API --------------------------------------------------------------------------------------
def test_an_export_holds_every_match_in_the_lists_order(filled: tuple[ProxyHandle, list[dict[str, Any]]]) -> None:
    proxy, rows = filled
    for params in (
        {"since": "all"},
        {"since": "all", "model": "o3", "status": "error"},
        {"since": "all", "sort": "cost", "order": "asc"},
    ):
        expected = listed_ids(proxy.base_url, params)
        r = httpx.get(f"{proxy.base_url}/traces", params={**params, "format": "jsonl"}, headers=AUTH)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["content-disposition"].startswith('attachment; filename="prysm-traces-')
        assert "content-length" not in r.headers  # streamed (chunked), not built whole
        lines = r.text.splitlines()
        assert [json.loads(line)["id"] for line in lines] == expected, params
        r = httpx.get(f"{proxy.base_url}/traces", params={**params, "format": "csv"}, headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
        records = list(csv.reader(io.StringIO(r.text, newline="")))
        assert records[0] == list(download.DEFAULT_FIELDS)
        assert [rec[0] for rec in records[1:]] == expected
    assert len(expected) == len(rows)  # (the last one: no filter but the order)
    # Every field of a stored row, as the list gives it; bodies only when asked.
    by_id = {r["id"]: r for r in rows}
    first = json.loads(
        httpx.get(f"{proxy.base_url}/traces", params={"format": "jsonl", "limit": "1"}, headers=AUTH).text
    )
    assert list(first) == list(download.DEFAULT_FIELDS) and "request_body" not in first
    assert first["model"] == by_id[first["id"]]["model"] and first["stream"] is bool(by_id[first["id"]]["stream"])
    some = httpx.get(
        f"{proxy.base_url}/traces",
        params={"format": "jsonl", "fields": "id,response_body,request_body", "limit": "700"},
        headers=AUTH,
    ).text.splitlines()
    assert len(some) == 700
    for line in some:
        doc = json.loads(line)
        assert list(doc) == ["id", "response_body", "request_body"]
        assert doc["response_body"] == by_id[doc["id"]]["response_body"]
        assert doc["request_body"] == json.loads(by_id[doc["id"]]["request_body"])
    every = httpx.get(f"{proxy.base_url}/traces", params={"format": "csv", "fields": "all", "limit": "3"}, headers=AUTH)
    records = list(csv.reader(io.StringIO(every.text, newline="")))
    assert records[0] == list(download.FIELDS) and len(records) == 4
    assert records[1][download.FIELDS.index("request_body")] == by_id[records[1][0]]["request_body"]


def test_the_dashboard_exports_the_same_download(filled: tuple[ProxyHandle, list[dict[str, Any]]]) -> None:
    proxy, _ = filled
    params = {"since": "all", "user": "ann", "format": "csv"}
    api = httpx.get(f"{proxy.base_url}/traces", params=params, headers=AUTH)
    with dashboard(proxy) as client:
        page = client.get("/ui/api/traces", params=params)
    assert page.status_code == 200 and page.text == api.text and page.text.count("\n") > 100
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"format": "xml"}, "format"),
        ({"format": "csv", "fields": "id,api_key"}, "fields"),
        ({"format": "csv", "fields": ","}, "fields"),
        ({"fields": "id"}, "fields"),  # fields without an export
        ({"format": "jsonl", "limit": "0"}, "limit"),
        ({"format": "jsonl", "limit": "x"}, "limit"),
        ({"format": "csv", "sort": "mood"}, "sort"),
        ({"format": "csv", "cursor": "bm9wZQ"}, "cursor"),
        ({"format": "csv", "since": "yesterday-ish"}, "since"),
    ],
)
def test_a_bad_export_is_a_json_400_naming_the_parameter(
    filled: tuple[ProxyHandle, list[dict[str, Any]]], params: dict[str, str], param: str
) -> None:
    proxy, _ = filled
    r = httpx.get(f"{proxy.base_url}/traces", params=params, headers=AUTH)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
    assert r.json()["error"]["param"] == param


def test_a_limit_caps_an_export_and_a_cursor_resumes_after_a_page(
    filled: tuple[ProxyHandle, list[dict[str, Any]]],
) -> None:
    proxy, rows = filled
    expected = [r["id"] for r in rows]  # newest first
    page = httpx.get(f"{proxy.base_url}/traces", params={"limit": "10"}, headers=AUTH).json()
    r = httpx.get(
        f"{proxy.base_url}/traces",
        params={"format": "jsonl", "cursor": page["next_cursor"], "limit": "600"},
        headers=AUTH,
    )
    assert [json.loads(line)["id"] for line in r.text.splitlines()] == expected[10:610]


def test_a_client_that_leaves_stops_the_reading(tmp_path: Any, fake: FakeUpstream, start_proxy: Any) -> None:
    """50 000 traces are 100 chunks; a client that reads the first bytes and leaves costs a few."""
    path = str(tmp_path / "traces.db")
    fill(path, make_rows(50_000))
    proxy = start_proxy(fake.url, db_path=path)
    store = proxy.app.store
    reads: list[Any] = []
    read = store.read

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("cursor"))
        return await read(fn, *args, **kwargs)

    store.read = counting  # (counts the export's chunk reads on the real store)
    with socket.create_connection(("127.0.0.1", proxy.server.port)) as sock:
        sock.sendall(
            b"GET /api/v1/traces?format=csv&fields=all HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {KEY}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    # Closed: the export notices, and no chunk is read after it.
    deadline = time.monotonic() + 10
    seen = -1
    while seen != len(reads):
        seen = len(reads)
        time.sleep(0.5)
        assert time.monotonic() < deadline
    assert 1 <= len(reads) < 50, len(reads)
    # The proxy goes on answering (an export to the end still holds every row).
    ids = [
        r.split(",", 1)[0]
        for r in httpx.get(f"{proxy.base_url}/traces", params={"format": "csv"}, headers=AUTH).text.splitlines()
    ]
    assert len(ids) == 50_001


# -- hostile content -------------------------------------------------------------------------------
_ESCAPE = re.compile(r"\\u([0-9a-f]{4})")
_FORMULA = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _unescape(cell: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), cell)


@given(values=st.lists(st.tuples(HOSTILE, HOSTILE, HOSTILE), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_csv_cells_are_safe_in_a_spreadsheet_and_round_trip_through_the_csv_module(
    values: list[tuple[str, str, str]],
) -> None:
    plan = download.Plan("csv", ("id", "user_id", "session_id", "error", "response_body", "cost_usd"))
    rows = [
        {"id": f"{i:032x}", "user_id": u, "session_id": s, "error": e, "response_body": u + e, "cost_usd": 0.5}
        for i, (u, s, e) in enumerate(values)
    ]
    encoder = download.Encoder(plan)
    data = encoder.head() + encoder.encode(rows)
    text = data.decode("utf-8")  # valid UTF-8, surrogates included
    assert text.count("\r\n") == len(rows) + 1  # one physical line per record
    records = list(csv.reader(io.StringIO(text, newline="")))
    assert records[0] == list(plan.fields) and len(records) == len(rows) + 1
    for row, record in zip(rows, records[1:]):
        assert len(record) == len(plan.fields) and record[-1] == "0.5"
        for name, cell in zip(plan.fields[1:-1], record[1:-1]):
            original = str(row[name])
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in cell), cell
            assert not cell.startswith((*_FORMULA, "\t", "\r")), cell
            if "\\u" in original:  # (a literal escape in the text: ambiguous to undo)
                continue
            undone = _unescape(cell)
            if original.startswith(_FORMULA):
                assert undone == "'" + original
            else:
                assert undone == original


@given(values=st.lists(st.tuples(HOSTILE, HOSTILE, HOSTILE), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_jsonl_is_one_valid_document_per_line_whatever_was_captured(values: list[tuple[str, str, str]]) -> None:
    plan = download.Plan("jsonl", ("id", "user_id", "metadata", "request_body", "response_body"))
    rows = [
        {
            "id": f"{i:032x}",
            "user_id": u,
            "metadata": json.dumps({"k": s}),
            "request_body": "{{" + e,  # never valid JSON ("{" + "}" was): stays text
            "response_body": json.dumps({"content": e, "n": "NaN"}),
        }
        for i, (u, s, e) in enumerate(values)
    ]
    data = download.Encoder(plan).encode(rows)
    text = data.decode("utf-8")
    assert len(text.splitlines()) == len(rows)  # (str.splitlines splits on U+2028 and friends too)
    for row, line in zip(rows, text.splitlines()):
        doc = json.loads(line)
        assert doc["user_id"] == row["user_id"] and doc["metadata"] == {"k": json.loads(row["metadata"])["k"]}
        assert doc["request_body"] == row["request_body"]
        assert doc["response_body"] == json.loads(row["response_body"])


def test_a_body_holding_nan_is_exported_as_its_text() -> None:
    plan = download.Plan("jsonl", ("id", "response_body"))
    line = download.Encoder(plan).encode([{"id": "a", "response_body": '{"x": NaN}'}]).decode()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {"id": "a", "response_body": '{"x": NaN}'}


def test_hostile_captured_content_exports_safely_end_to_end(
    tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    hostile = [
        '=HYPERLINK("http://evil")',
        "+1",
        "-1+1",
        "@A1",
        "\t=1",
        "\r=1",
        "a\r\nb",
        "\x1b[31m",
        "\ud800x",
        "\u2028",
    ]
    rows = make_rows(len(hostile))
    for row, text in zip(rows, hostile):
        row["user_id"] = text
        row["response_body"] = text
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    r = httpx.get(
        f"{proxy.base_url}/traces", params={"format": "csv", "fields": "id,user_id,response_body"}, headers=AUTH
    )
    records = list(csv.reader(io.StringIO(r.content.decode("utf-8"), newline="")))
    assert len(records) == len(hostile) + 1
    cells = {rec[0]: rec[1:] for rec in records[1:]}
    for row in rows:
        for cell in cells[row["id"]]:
            assert (not cell.startswith((*_FORMULA, "\t", "\r")) and cell.isprintable()) or "\u2028" in cell
    r = httpx.get(f"{proxy.base_url}/traces", params={"format": "jsonl", "fields": "id,user_id"}, headers=AUTH)
    got = {d["id"]: d["user_id"] for d in map(json.loads, r.content.decode("utf-8").splitlines())}
    # As the list API gives them (the store keeps an unpaired surrogate as its \\uXXXX escape).
    listed = httpx.get(f"{proxy.base_url}/traces", headers=AUTH).json()["data"]
    assert got == {t["id"]: t["user_id"] for t in listed} and len(got) == len(hostile)


# -- PostgreSQL and the CLI --------------------------------------------------------------------------
def test_an_export_from_postgres_is_the_same_file_as_from_sqlite(
    pg_url: str, tmp_path: Any, fake: FakeUpstream, start_proxy: Any
) -> None:
    """The same traces in both stores: a real ``prysmai proxy --db postgresql://…`` exports the
    bytes a SQLite proxy exports, chunk after chunk."""
    from prysmai._proxy.store.postgres.engine import PostgresEngine

    rows = make_rows(1100, seed=11)
    engine = PostgresEngine(pg_url)
    conn = engine.open_for_writing()
    engine.insert_rows(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows])
    conn.close()
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    on_sqlite = start_proxy(fake.url, db_path=path)
    on_postgres = Proxy("--db", pg_url, "--outbox", str(tmp_path / "outbox.db"), "--upstream", fake.url, "--key", KEY)
    on_postgres.start()
    try:
        for params in (
            {"format": "csv", "fields": "all"},
            {"format": "jsonl", "model": "o3", "order": "asc"},
        ):
            a = httpx.get(f"{on_sqlite.base_url}/traces", params=params, headers=AUTH, timeout=30)
            b = httpx.get(f"{on_postgres.base}/traces", params=params, headers=AUTH, timeout=30)
            assert a.status_code == b.status_code == 200, b.text
            assert a.content == b.content, params
            assert len(a.text.splitlines()) > 300
        # By another column, traces of the same value may come in another order (SQLite breaks
        # those ties by arrival, PostgreSQL by id): the same values in order, the same lines.
        params = {"format": "jsonl", "sort": "latency"}
        x = httpx.get(f"{on_sqlite.base_url}/traces", params=params, headers=AUTH, timeout=30).text.splitlines()
        y = httpx.get(f"{on_postgres.base}/traces", params=params, headers=AUTH, timeout=30).text.splitlines()
        assert [json.loads(line)["latency_ms"] for line in x] == [json.loads(line)["latency_ms"] for line in y]
        assert sorted(x) == sorted(y) and len(x) == len(rows)
    finally:
        on_postgres.stop()


def test_the_cli_exports_what_the_api_exports(filled: tuple[ProxyHandle, list[dict[str, Any]]]) -> None:
    proxy, rows = filled
    path = str(proxy.db_path)
    exports = (("csv", ["--fields", "id,user_id,response_body"]), ("jsonl", ["--model", "o3", "--sort", "cost"]))
    for fmt, extra in exports:
        cli = subprocess.run(
            [*PRYSMAI, "traces", "--db", path, "--all", "--format", fmt, *extra],
            capture_output=True,
            env=cli_env(),
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        params = {"format": fmt, "since": "all"}
        params.update(dict(zip([e[2:] for e in extra[::2]], extra[1::2])))
        params["sort"] = params.get("sort", "time")
        api = httpx.get(f"{proxy.base_url}/traces", params=params, headers=AUTH)
        assert cli.stdout == api.content and cli.stdout.count(b"\n") >= 300
    # Without --all, one page of --limit rows.
    page = subprocess.run(
        [*PRYSMAI, "traces", "--db", path, "--format", "jsonl", "--limit", "7"], capture_output=True, env=cli_env()
    )
    assert [json.loads(line)["id"] for line in page.stdout.splitlines()] == [r["id"] for r in rows[:7]]
    for argv, message in (
        (["--format", "csv", "--fields", "id,secret"], "--fields: unknown field 'secret'"),
        (["--fields", "id"], "--fields applies to an export"),
        (["--format", "csv", "--json"], "--json and --format"),
    ):
        bad = subprocess.run([*PRYSMAI, "traces", "--db", path, *argv], capture_output=True, env=cli_env(), text=True)
        assert bad.returncode == 2 and message in bad.stderr and not bad.stdout, (argv, bad.stderr)


def test_an_export_carries_each_traces_scores(tmp_path: Any, fake: FakeUpstream, start_proxy: Any) -> None:
    """Scores (the read API's documents) are a default field of both formats; a hostile comment
    stays text in a spreadsheet."""
    rows = make_rows(3)
    path = str(tmp_path / "traces.db")
    fill(path, rows)
    proxy = start_proxy(fake.url, db_path=path)
    scored = rows[1]["id"]
    for body in ({"name": "helpful", "value": 1}, {"name": "tone", "value": "curt", "comment": '=HYPERLINK("x")'}):
        r = httpx.post(f"{proxy.base_url}/traces/{scored}/scores", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
    lines = httpx.get(f"{proxy.base_url}/traces", params={"format": "jsonl", "since": "all"}, headers=AUTH).text
    exported = {d["id"]: d["scores"] for d in map(json.loads, lines.splitlines())}
    assert {i: [(s["name"], s["value"]) for s in v] for i, v in exported.items()} == {
        rows[0]["id"]: [],
        scored: [("helpful", 1), ("tone", "curt")],
        rows[2]["id"]: [],
    }
    assert exported[scored][1]["comment"] == '=HYPERLINK("x")'
    text = httpx.get(f"{proxy.base_url}/traces", params={"format": "csv", "since": "all"}, headers=AUTH).text
    records = list(csv.reader(io.StringIO(text, newline="")))
    column = records[0].index("scores")
    cells = {rec[0]: rec[column] for rec in records[1:]}
    assert cells[rows[0]["id"]] == "[]" and cells[scored].startswith("[")  # never a formula
    assert [s["comment"] for s in json.loads(cells[scored])] == [None, '=HYPERLINK("x")']
