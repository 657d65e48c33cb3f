"""``from prysmai.context import prysm_context, PrysmContext``: the import path of prysmai 0.1, kept for its users.

The same objects as ``prysmai.prysm_context`` and ``prysmai.PrysmContext``; new code imports from ``prysmai``.
"""

from __future__ import annotations

from ._context import PrysmContext, prysm_context

__all__ = ["PrysmContext", "prysm_context"]
