"""A trace writer that gives the CPU to the request path first.

The proxy's trace writer child works in bursts of a few milliseconds. Where every core has
something to run -- a small container, or the proxy sharing its host with its clients or an
upstream -- the kernel gives such a burst the same share as the proxy's event loop, and a request
that wakes up meanwhile waits for it: the writer's batches put a step of 3 to 5 ms into the
proxy's sequential p99 (bench/README.md, "The tail"). Linux's
``SCHED_IDLE`` policy runs a process only on a core nothing else wants, and takes the core back
the moment something else does, so the writer child lowers itself to it.

A whole process, not a thread of one: a thread under ``SCHED_IDLE`` that the kernel stops while it
holds its interpreter's GIL stops every other thread of that interpreter with it.

On a host with no spare core at all such a process gets next to nothing, and an unprivileged
process cannot leave ``SCHED_IDLE`` again (that needs ``RLIMIT_NICE`` headroom). So the proxy
watches it: a batch not answered within :data:`STARVED_AFTER` replaces the writer by one at normal
priority for :data:`CATCH_UP` seconds (:meth:`.writer.TraceWriter._write_in_process`).

The OTLP exporter's child is not lowered: its health counters would go stale on a busy host.
"""

from __future__ import annotations

import os

#: A batch the idle writer has not answered after this many seconds: the host has no spare CPU.
STARVED_AFTER = 0.25
#: How long the writer then works at normal priority before it tries the idle one again.
CATCH_UP = 60.0


def lower_priority() -> bool:
    """Put the calling process (its calling thread, and the threads it starts after) under
    ``SCHED_IDLE``; ``False`` where the platform has no such policy or refuses it."""
    setter = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_IDLE", None)
    if setter is None or policy is None:
        return False
    try:
        setter(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True
