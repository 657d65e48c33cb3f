"""The SQLite engine (the embedded default): :class:`~.engine.SQLiteEngine`, its schema and
migrations, and the rollups it folds in each write transaction."""

from __future__ import annotations

from .engine import SQLiteEngine, connect, insert_rows, repair_row
from .migrations import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SQLiteEngine", "connect", "insert_rows", "repair_row"]
