"""The trace store: where traces are written and read.

:class:`Store` (the facade) owns an engine, a writer and a read runner. Beneath it: the captured
exchange and its row (:mod:`.capture`, :mod:`.rows`), the writer thread and process
(:mod:`.writer`, :mod:`.writerproc`), the one query layer (:mod:`.queries`) and its runner
(:mod:`.reader`), the engine interface (:mod:`.engine`) and the SQLite engine (:mod:`.sqlite`).
"""

from __future__ import annotations

from .engine import QueryTimeout, StoreError, StoreUnavailable
from .facade import Store, engine_for
from .queries import ParamError, TraceFilter

__all__ = ["ParamError", "QueryTimeout", "Store", "StoreError", "StoreUnavailable", "TraceFilter", "engine_for"]
