"""``from prysmai.client import monitor, PrysmClient``: the import path of prysmai 0.1, kept for its users.

The same objects as ``prysmai.monitor`` and ``prysmai.PrysmClient``; new code imports from ``prysmai``.
"""

from __future__ import annotations

from ._monitor import PrysmClient, monitor

__all__ = ["PrysmClient", "monitor"]
