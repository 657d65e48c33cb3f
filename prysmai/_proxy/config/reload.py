"""When to re-read the config file: on SIGHUP, and when the file changes.

The file is checked once a second (its size, modification time and inode, so an editor that
writes a new file and renames it over the old one is noticed as well as one that rewrites it in
place). SIGHUP is for the moments a second is too long, or where a secret the file names (an
environment variable cannot change, but a credential file can) changed without the file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("prysmai.proxy")

POLL_SECONDS = 1.0


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone for a moment (an editor replacing it): keep the config we have
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigWatch:
    """Calls ``reload`` (on the event loop) on SIGHUP and when the file at ``path`` changes.

    Without a file (``path=None``: keys and upstream from the command line) SIGHUP is still
    caught, so that ``systemctl reload`` or a stray ``kill -HUP`` does not stop the proxy (the
    signal's default action): it is logged as having nothing to reload."""

    def __init__(
        self, path: str | None, reload: Callable[[], None] | None = None, poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.path = path
        self._reload = reload
        self._poll_seconds = poll_seconds
        self._stamp = _stamp(path) if path else None
        self._task: asyncio.Task[None] | None = None
        self._sighup = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.path:
            self._task = loop.create_task(self._poll())
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is not None:
            try:
                loop.add_signal_handler(sighup, self._on_sighup)
                self._sighup = True
            except (RuntimeError, ValueError):  # not the main thread (an embedded proxy): poll only
                pass

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False

    def _on_sighup(self) -> None:
        if not self.path or self._reload is None:
            log.info("SIGHUP: nothing to reload (no --config); keys and upstream change with a restart")
            return
        log.info("SIGHUP: reloading %s", self.path)
        self._stamp = _stamp(self.path)
        self._reload()

    async def _poll(self) -> None:
        assert self.path is not None and self._reload is not None
        while True:
            await asyncio.sleep(self._poll_seconds)
            stamp = _stamp(self.path)
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                log.info("%s changed: reloading it", self.path)
                try:
                    self._reload()
                except Exception:  # never let the watch die: the next change is tried again
                    log.exception("reloading %s failed", self.path)
