"""The SQL a SQLite connection runs: for the tests that check which tables a read touches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def statements_run(conn: Any) -> Iterator[list[str]]:
    """The statements ``conn`` (a ``sqlite3.Connection``) runs inside the block, in order."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn.set_trace_callback(None)
