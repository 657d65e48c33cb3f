"""The ``prysmai`` logger, and logging a problem of our own once rather than on every request."""

from __future__ import annotations

_seen: set[str] = set()


def log_once(key: str, message: str, *, exc_info: bool = False) -> None:
    """Log ``message`` as a warning on the ``prysmai`` logger the first time ``key`` is seen."""
    if key in _seen:
        return
    _seen.add(key)
    import logging  # imported on first use: it costs milliseconds at interpreter start-up

    logging.getLogger("prysmai").warning(message, exc_info=exc_info)
