"""Retention on SQLite: old traces deleted in small batches, the rollups kept equal to what is
left, and the freed pages handed back.

Each batch is one short write transaction (the writer waits at most that long for the lock;
readers, on WAL snapshots, not at all). The rollups' delete trigger (:mod:`.rollups`) subtracts
every deleted row from them in the same transaction; rollup rows left at zero for periods that
are gone are then deleted, so the rollup tables stop growing too. A store created with
``auto_vacuum = INCREMENTAL`` (schema 4 and later, :mod:`.migrations`) gives the freed pages back
to the disk (:func:`reclaim`); an older one keeps them on its free list and writes new traces into
them, so under steady traffic its file stops growing all the same.
"""

from __future__ import annotations

import sqlite3

from ..rollups import ALL_HIST, ALL_TOTALS, HIST_LEVELS, KEY_ALL_ROLLUPS, KEY_PERIOD, KEY_ROLLUPS, REBUILD_ALL_HIST
from ..scores import forget_orphans

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def delete_expired(
    conn: sqlite3.Connection, project: str | None, before: float, exclude: Sequence[str], limit: int
) -> int:
    """Delete up to ``limit`` of the oldest traces created before ``before`` (unix seconds): of
    ``project``, or with ``project=None`` of every project not in ``exclude``. One transaction;
    returns how many were deleted."""
    if project is not None:
        pick = "SELECT rowid FROM traces INDEXED BY traces_project WHERE project = ? AND created_at < ?"
        params: list[object] = [project, before]
    else:
        marks = ", ".join("?" * len(exclude))
        pick = "SELECT rowid FROM traces INDEXED BY traces_agg WHERE created_at < ?"
        params = [before]
        if exclude:
            pick += f" AND project NOT IN ({marks})"
            params += list(exclude)
    conn.execute("BEGIN IMMEDIATE")
    try:
        deleted = conn.execute(
            f"DELETE FROM traces WHERE rowid IN ({pick} ORDER BY created_at LIMIT ?)", [*params, limit]
        ).rowcount
        if deleted:
            _drop_empty_rollups(conn, before)
            forget_orphans(conn, before)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(deleted, 0)


def _drop_empty_rollups(conn: sqlite3.Connection, before: float) -> None:
    """Rollup rows that the delete trigger brought to zero, in periods that ended before
    ``before`` (a period still partly kept may hold rows again)."""
    conn.execute("DELETE FROM rollup_hour WHERE hour < ? AND requests <= 0", (int(before // 3600) * 3600,))
    emptied = 0
    for table, (seconds, _) in HIST_LEVELS.items():
        gone = conn.execute(f"DELETE FROM {table} WHERE period < ? AND n <= 0", (int(before // seconds) * seconds,))
        emptied += gone.rowcount if table == "rollup_hist_day" else 0
    for table in KEY_ROLLUPS.values():
        conn.execute(
            f"DELETE FROM {table} WHERE period < ? AND requests <= 0", (int(before // KEY_PERIOD) * KEY_PERIOD,)
        )
    # The all-time rollups' rows brought to zero (a key seen again gets its row back).
    for table in (*KEY_ALL_ROLLUPS.values(), ALL_TOTALS):
        conn.execute(f"DELETE FROM {table} WHERE requests <= 0")
    conn.execute(f"DELETE FROM {ALL_HIST} WHERE n <= 0")
    if emptied > 0:  # whole days of a daily histogram gone: their bounds go from the all-time one too
        for statement in REBUILD_ALL_HIST:
            conn.execute(statement)


def incremental(conn: sqlite3.Connection) -> bool:
    """Whether the store gives freed pages back to the disk (``auto_vacuum = INCREMENTAL``)."""
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2


def reclaim(conn: sqlite3.Connection) -> int:
    """Hand the free pages back to the disk (an incremental store); how many there were."""
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if free and incremental(conn):
        conn.execute("PRAGMA incremental_vacuum").fetchall()
    return free
