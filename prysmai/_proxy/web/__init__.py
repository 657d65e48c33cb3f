"""The dashboard the proxy serves at ``/`` (and ``prysmai ui`` alone): see :mod:`.app`."""

from __future__ import annotations

from ..store import queries
from .app import Dashboard

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config.pricing import PriceTable
    from ..config.projects import Tenancy


def make_dashboard(
    db_path: str, tenancy: Callable[[], Tenancy], prices: PriceTable | None = None, *, read_only: bool = False
) -> Dashboard:
    """The dashboard over the store at ``db_path``, reading through its own read-only runner.
    (Whoever opens the store -- the proxy's writer, ``prysmai ui`` -- brings its schema up to date.)"""
    runner = queries.ReadRunner(db_path, migrate=False)
    return Dashboard(db_path, tenancy, runner, prices=prices, read_only=read_only)


__all__ = ["Dashboard", "make_dashboard"]
