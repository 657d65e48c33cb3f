"""The dashboard the proxy serves at ``/`` (and ``prysmai ui`` alone): pages over the read API.

:mod:`.app` is the ASGI application (pages, log-in, the read API by session), :mod:`.auth` the
session cookies, :mod:`.standalone` ``prysmai ui``; ``static/`` holds the pages' HTML, CSS and
JavaScript modules.
"""

from __future__ import annotations

from .app import Dashboard

__all__ = ["Dashboard"]
