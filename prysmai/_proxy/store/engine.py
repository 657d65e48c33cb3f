"""What a database engine gives the trace store: the one small interface beneath the store
facade (:class:`~.facade.Store`) and the query layer (:mod:`.queries`).

An engine knows where its database is and how to open it (created and migrated for the writer,
read-only for readers), how to insert a batch of rows, how to stop a read that runs past its
time limit, and the few SQL expressions that are not standard (its :class:`Dialect`). Everything
else -- filters, aggregates over the rollups, pagination -- is written once, in :mod:`.queries`,
against a DB-API connection. SQLite is the engine today (:mod:`.sqlite`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class StoreError(RuntimeError):
    """The store cannot be opened (bad path, newer schema, not a database)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (a shared database that is down or restarting)."""


class QueryTimeout(TimeoutError):
    """A read query ran past its time limit and was interrupted."""


class Cursor(Protocol):
    """What the query layer reads from a DB-API cursor."""

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A DB-API connection as the query layer uses it: ``execute`` with a parameter list."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...


class Dialect(Protocol):
    """The SQL that differs between engines, as the query layer needs it."""

    def bucket(self, column: str) -> str:
        """The histogram bucket of ``column`` (see :mod:`.rollups`); of a NULL, some bucket or NULL
        (a count of the column then skips it)."""
        ...

    def meta_equals(self, key: str, value: str) -> tuple[str, list[Any]]:
        """A condition: metadata member ``key`` (taken literally), as text, equals ``value``."""
        ...

    def starts_with(self, column: str, prefix: str) -> tuple[str, list[Any]]:
        """A condition: ``column`` starts with ``prefix`` (taken literally), ignoring the case of
        ASCII letters."""
        ...

    def text_search(self, conn: Any, text: str) -> tuple[str, list[Any]]:
        """A condition on ``traces``: its request or response body holds ``text`` -- through the
        engine's search index when the store has one (the words of ``text``, the last one as a
        prefix), else as a substring, ignoring the case of ASCII letters."""
        ...

    def row_order(self) -> str:
        """A column numbering the rows in the order they were written (SQLite's ``rowid``)."""
        ...

    def traces_bound(self, conn: Any) -> int:
        """About how many traces the store holds, cheaply (not a count): what the query layer
        weighs one plan against another with."""
        ...

    def sorted_by(self, table: str, column: str) -> str:
        """``table`` as a FROM item read through the index of the sort column ``column``."""
        ...

    def time_first(self, table: str) -> str:
        """``table`` as a FROM item read through its time-ordered index, where the engine's
        planner needs telling."""
        ...

    def period(self, expression: str, width: int) -> str:
        """The whole number of ``width``-second periods in ``expression`` (a unix time), rounded
        down."""
        ...

    def count_sum(self, column: str) -> str:
        """The sum of the counts in the whole-number column ``column``, as an integer the driver
        reads at its native speed."""
        ...

    def unindexed(self, column: str) -> str:
        """``column`` in a condition the planner must not answer through the column's own index,
        where the engine's planner needs telling."""
        ...

    def hourly_keys(self) -> bool:
        """Whether the store keeps the per-key rollups by hour (:data:`~.rollups.KEY_HOUR_ROLLUPS`)
        beside the per-day ones: a range's partial days are then read from them."""
        ...

    def quarter_hours(self) -> bool:
        """Whether the store keeps the rollups by quarter hour (:data:`~.rollups.QUARTER_TOTALS`,
        :data:`~.rollups.QUARTER_HIST`): a series of 15-minute buckets, and the whole quarters of
        a range's partial hours, are then read from them."""
        ...


class Engine(Protocol):
    """One database the store lives in."""

    @property
    def location(self) -> str:
        """A name for messages: the path, or a URL without its password."""
        ...

    @property
    def dialect(self) -> Dialect: ...

    def open_for_writing(self) -> Any:
        """A connection to write with: the database created if needed and migrated to the
        current schema. Raises :class:`StoreError`."""
        ...

    def migrate_existing(self) -> bool:
        """Bring an existing store to the current schema (and fold rows the writer did not);
        ``False`` if there is no store there. Raises :class:`StoreError`."""
        ...

    def read_connection(self) -> Connection:
        """A new read-only connection."""
        ...

    def time_limited(self, conn: Any, seconds: float | None) -> contextlib.AbstractContextManager[None]:
        """Run the block in one read transaction on ``conn`` (one consistent snapshot), stopped
        with :class:`QueryTimeout` once ``seconds`` have passed (``None``: no limit)."""
        ...

    def edit_connection(self) -> Connection:
        """A new connection for the store's edits (scores; :mod:`.edits`), which are written
        beside the trace writer, not through it."""
        ...

    def editing(self, conn: Any) -> contextlib.AbstractContextManager[None]:
        """Run the block in one short write transaction on ``conn`` (an edit connection),
        committed at its end, rolled back if it raises."""
        ...

    def insert_rows(self, conn: Any, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int, int]:
        """Insert trace rows (:data:`~.rows.COLUMNS` order) in one transaction, the rollups
        folded in it: (written, repaired, failed). A row the database refuses is repaired or
        skipped; the others are written."""
        ...

    # -- retention (store/retention.py runs it) --------------------------------------------------
    def stored_costs(self, conn: Any, ids: Sequence[str]) -> dict[str, float | None]:
        """Which of ``ids`` are in the store already, with their cost: the writer's journal,
        recovered at start-up, stores only the others, as does the writer thread with a batch its
        child process may have stored before it was killed."""
        ...

    def delete_expired(self, conn: Any, project: str | None, before: float, exclude: Sequence[str], limit: int) -> int:
        """Delete up to ``limit`` of the oldest traces created before ``before`` (unix seconds)
        of ``project`` (``None``: of every project not in ``exclude``), in one short write
        transaction that keeps the rollups equal to what is left; how many were deleted."""
        ...

    def reclaim(self, conn: Any) -> tuple[int, bool]:
        """Give the space freed by deletes back to the disk where the engine can: (free pages
        found, whether they were given back)."""
        ...

    # -- the export outbox (export/ reads it) ----------------------------------------------------
    def set_export(self, conn: Any, enabled: bool) -> int:
        """Fill the outbox with every trace written from now on, or stop (and empty it: how many
        traces were waiting)."""
        ...

    def export_batch(self, conn: Any, after: int, limit: int) -> list[tuple[int, dict[str, Any] | None]]:
        """Up to ``limit`` waiting traces after the position ``after``, in the order written:
        (position, the row by column name, or ``None`` for a trace deleted meanwhile)."""
        ...

    def export_done(self, conn: Any, upto: int) -> None:
        """Everything up to the position ``upto`` is sent."""
        ...

    def export_waiting(self, conn: Any) -> int:
        """How many traces wait to be sent."""
        ...


_DIALECTS: dict[type, Dialect] = {}


def register_dialect(connection_type: type, dialect: Dialect) -> None:
    """Make ``dialect`` the one the query layer uses on connections of ``connection_type``."""
    _DIALECTS[connection_type] = dialect


def dialect_of(conn: Any) -> Dialect:
    """The dialect of ``conn``'s engine (registered by the engine's module)."""
    try:
        return _DIALECTS[type(conn)]
    except KeyError:
        raise TypeError(f"no store engine is registered for {type(conn).__name__} connections") from None
