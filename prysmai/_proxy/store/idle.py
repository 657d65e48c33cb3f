"""The proxy's child processes at a low CPU priority, and how long the proxy waits for them.

Building and storing a batch's rows costs the writer's child a burst of a few milliseconds of CPU. Where every
core has something to run -- a small container, or the proxy sharing its host with its clients or
an upstream -- the kernel gives such a burst the same share as the proxy's event loop, and a
request that wakes up meanwhile waits for it: the bursts were the proxy's sequential p99
(bench/README.md, "The tail"). Linux's ``SCHED_IDLE`` policy runs a process only on a core
nothing else wants and takes the core back the moment something else does, so the child lowers
itself to it.

A whole process, not a thread: a thread under ``SCHED_IDLE`` that the kernel stops while it holds
its interpreter's GIL stops every other thread of that interpreter with it.

On a host with no spare core at all such a process gets next to nothing, and an unprivileged
process cannot leave ``SCHED_IDLE`` again. So the proxy bounds its wait: a batch the child has not
answered within :data:`STARVED_AFTER` seconds is stored by the proxy's writer thread instead, the
child is killed, and the thread keeps storing for :data:`CATCH_UP` seconds before a new child is
started. A killed child may hold the store's write lock until it has exited: the thread waits for
that, and stores only what the child had not committed (:mod:`.writerproc`).
"""

from __future__ import annotations

import os

#: A batch the idle child has not answered after this many seconds: the host has no spare CPU.
STARVED_AFTER = 0.25
#: How long the proxy's writer thread then builds the rows itself before it tries a child again.
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


def set_priority(name: str) -> bool:
    """Put the calling process at the priority ``name`` (``--export-priority``): ``idle`` is
    ``SCHED_IDLE`` (:func:`lower_priority`), ``low`` the lowest nice value (19: a share of the CPU
    that is small but never nothing), ``normal`` leaves it as it is. ``False`` where the platform
    has no such priority or refuses it."""
    if name == "idle":
        return lower_priority()
    if name == "low":
        try:
            os.nice(19)  # (a nice value is capped at 19)
        except (AttributeError, OSError):
            return False
    return True
