"""The export outbox on SQLite: the traces the OTLP export has yet to send, in the order they
were written (filled by the ``export_enqueue`` trigger, :mod:`.migrations`, in each batch's own
transaction), read by the export process and emptied as the collector accepts them."""

from __future__ import annotations

import sqlite3

from ..rows import COLUMNS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_BATCH = f"""SELECT o.seq, {", ".join("t." + c for c in COLUMNS)}
    FROM export_outbox o LEFT JOIN traces t ON t.id = o.trace_id
    WHERE o.seq > ? ORDER BY o.seq LIMIT ?"""


def set_enabled(conn: sqlite3.Connection, enabled: bool) -> int:
    """Switch the outbox on or off. Off also empties it: returns how many traces were waiting."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if enabled:
            conn.execute("INSERT OR IGNORE INTO export_state (one) VALUES (1)")
            waiting = 0
        else:
            conn.execute("DELETE FROM export_state")
            waiting = conn.execute("DELETE FROM export_outbox").rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(waiting, 0)


def batch(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, dict[str, Any] | None]]:
    """Up to ``limit`` waiting traces after ``after`` (a seq), oldest first: (seq, the trace's row,
    or ``None`` if it is gone -- deleted by retention before it could be sent)."""
    out: list[tuple[int, dict[str, Any] | None]] = []
    for seq, *values in conn.execute(_BATCH, (after, limit)):
        out.append((seq, None if values[0] is None else dict(zip(COLUMNS, values))))
    return out


def done(conn: sqlite3.Connection, upto: int) -> None:
    """The traces up to ``upto`` (a seq) are sent (or will never be)."""
    conn.execute("DELETE FROM export_outbox WHERE seq <= ?", (upto,))


def size(conn: sqlite3.Connection) -> int:
    """How many traces wait (the seqs are consecutive: deleted from the oldest end only)."""
    row = conn.execute("SELECT min(seq), max(seq) FROM export_outbox").fetchone()
    return 0 if row[0] is None else int(row[1]) - int(row[0]) + 1
