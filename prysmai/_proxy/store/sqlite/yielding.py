"""The writer's SQLite work handed back to the scheduler in small slices.

Inserting a batch of traces is SQLite's work: the rows, the indexes of ``traces``, the rollups
folded in the same transaction and the search index of the bodies. It runs on the proxy's
writer thread with the GIL released, but in the proxy's own process, as one burst of CPU per
statement: about 50 us a row for the small exchanges of bench/proxy_overhead.py, 600-800 us for
exchanges shaped as OpenAI writes them (mostly the search index), so a few milliseconds a batch.
A task that wakes meanwhile on the core the burst runs on -- the event loop with a request, or the
client or upstream it waits for -- waits for the burst; that was the proxy's sequential added p99
(bench/README.md, "The tail").

SQLite calls a progress handler every :data:`INSTRUCTIONS` steps of its virtual machine (some
tens of microseconds of work). The writer's handler gives up its core (``sched_yield``): a task
waiting for that core runs first, and when none is, the writer carries on at once. The handler is
Python, so it takes the GIL to run: the writer's work also pauses while the event loop runs
Python, instead of running beside it. It returns 0, so a statement is never stopped, and what is
stored is what would be stored without it.

Not sliced: one step of the machine that is long by itself (the search index of a very large body,
the search index's pending words flushed at commit).
"""

from __future__ import annotations

import contextlib
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator

#: Steps of SQLite's virtual machine between two offers of the core (about 50 us of the writer's
#: work at the store's schema; a call of the handler costs about a microsecond).
INSTRUCTIONS = 2000

#: ``sched_yield`` where the platform has it (it releases the GIL); elsewhere a zero sleep, which
#: releases the GIL and, on Windows, gives up the rest of the time slice.
_give_up_core = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def _give_way() -> int:
    try:
        _give_up_core()
    except OSError:  # never stop the statement for it
        pass
    return 0


@contextlib.contextmanager
def yielding(conn: sqlite3.Connection) -> Iterator[None]:
    """Within the block, ``conn``'s statements give up their core every :data:`INSTRUCTIONS`
    steps (see above); the connection's progress handler is cleared after."""
    conn.set_progress_handler(_give_way, INSTRUCTIONS)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)
