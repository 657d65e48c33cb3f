"""When to re-read the config file: on SIGHUP, and when the file changes.

The file is checked once a second (its size, modification time and inode, so an editor that
writes a new file and renames it over the old one is noticed as well as one that rewrites it in
place), against the identity of the file the current config was read from: a change made while
the proxy was starting -- after the file was read, before the watch began -- is noticed at the
first check. SIGHUP is for the moments a second is too long, or where a secret the file names (an
environment variable cannot change, but a credential file can) changed without the file itself.

A reload reads the file, and every credential file it names, in a worker thread under a time
limit (:data:`READ_TIMEOUT`): a credential file on a hung network mount must not stop the event
loop that serves every project. A read that fails or takes too long is logged and the config in
use stays.

SIGHUP's default action stops a process. :func:`catch_sighup` is installed before the proxy
announces anything: a SIGHUP from then on is never fatal, and one that arrives before the watch
has started (``systemctl reload`` right after ``start``) is remembered and acted on when it starts.
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
    from types import FrameType
    from typing import Any

    from .projects import Tenancy

    Stamp = tuple[int, int, int]

log = logging.getLogger("prysmai.proxy")

POLL_SECONDS = 1.0
#: Longest a reload may take to read the config file and the credential files it names.
READ_TIMEOUT = 5.0
_SIGHUP = getattr(signal, "SIGHUP", None)


def identity(st: os.stat_result) -> Stamp:
    """A file's identity for the watch: modification time, size and inode."""
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stamp(path: str) -> Stamp | None:
    try:
        return identity(os.stat(path))
    except OSError:
        return None  # gone for a moment (an editor replacing it): keep the config we have


# -- SIGHUP before the watch ---------------------------------------------------------------------------
_pending = [False]


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending[0] = True


def catch_sighup() -> Callable[[], None]:
    """From now on, a SIGHUP is remembered instead of stopping the process, until a
    :class:`ConfigWatch` takes it over (and acts on one remembered). Returns the function that
    puts the previous handler back. Main thread only (elsewhere: nothing to do)."""
    if _SIGHUP is None:
        return lambda: None
    try:
        previous = signal.signal(_SIGHUP, _remember)
    except ValueError:  # not the main thread: signals are not ours to handle
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(ValueError):
            signal.signal(_SIGHUP, previous)

    return restore


class ConfigWatch:
    """Reloads the config file at ``path`` on SIGHUP and when it changes: ``load()`` (in a worker
    thread) reads it, ``apply(tenancy)`` (on the event loop) puts it in use. ``baseline``: the
    identity of the file the config in use was read from (``Tenancy.stamp``).

    Without a file (``path=None``: keys and upstream from the command line) SIGHUP is still
    caught, so that ``systemctl reload`` or a stray ``kill -HUP`` does not stop the proxy (the
    signal's default action): it is logged as having nothing to reload."""

    def __init__(
        self,
        path: str | None,
        load: Callable[[], Tenancy] | None = None,
        apply: Callable[[Tenancy], None] | None = None,
        *,
        baseline: Stamp | None = None,
        poll_seconds: float = POLL_SECONDS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.path = path
        self._load = load
        self._apply = apply
        self._poll_seconds = poll_seconds
        self._read_timeout = read_timeout
        self._stamp = baseline if baseline is not None else (_stamp(path) if path else None)
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._reading = False  # a read is under way (or stuck past its time limit)
        self._sighup = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.path:
            self._task = loop.create_task(self._poll())
        if _SIGHUP is not None:
            try:
                loop.add_signal_handler(_SIGHUP, self._on_sighup)
                self._sighup = True
            except (RuntimeError, ValueError):  # not the main thread (an embedded proxy): poll only
                pass
        if self._sighup and _pending[0]:  # one came while the proxy was starting
            _pending[0] = False
            loop.call_soon(self._on_sighup)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for check in self._checks:
            check.cancel()
        if self._sighup and _SIGHUP is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(_SIGHUP)
                signal.signal(_SIGHUP, _remember)  # (removing it put back the fatal default)
            self._sighup = False

    def _on_sighup(self) -> None:
        if not self.path or self._load is None:
            log.info("SIGHUP: nothing to reload (no --config); keys and upstream change with a restart")
            return
        log.info("SIGHUP: reloading %s", self.path)
        check = asyncio.get_running_loop().create_task(self._check(forced=True))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self._check(forced=False)
            except Exception:  # never let the watch die: the next change is tried again
                log.exception("reloading %s failed", self.path)

    async def _check(self, forced: bool) -> None:
        """Read the file if it changed (or ``forced``) off the event loop, and use it."""
        if self._reading:
            if forced:
                log.warning(
                    "SIGHUP: the previous read of %s has not finished; still using the current config", self.path
                )
            return
        self._reading = True
        job = asyncio.ensure_future(asyncio.to_thread(self._read, forced))
        try:
            done = await asyncio.wait_for(asyncio.shield(job), self._read_timeout)
        except asyncio.TimeoutError:
            log.error(
                "config reload refused, still using the previous config: reading %s (or a credential file it "
                "names) took more than %g s (a hung network mount?)",
                self.path,
                self._read_timeout,
            )
            job.add_done_callback(self._read_ended)  # the thread cannot be stopped: wait for it
            return
        self._reading = False
        if done is None:
            return
        stamp, loaded = done
        self._stamp = stamp  # a file refused is not read again until it changes
        if isinstance(loaded, BaseException):
            log.error("config reload refused, still using the previous config: %s", loaded)
        elif self._apply is not None:
            self._apply(loaded)

    def _read_ended(self, job: asyncio.Future[Any]) -> None:
        self._reading = False
        if not job.cancelled():
            job.exception()  # (retrieved: a late failure was already reported as the timeout)

    def _read(self, forced: bool) -> tuple[Stamp | None, Tenancy | BaseException] | None:
        """(the file's identity, its config or why it was refused); ``None``: unchanged. In a
        worker thread."""
        assert self.path is not None and self._load is not None
        stamp = _stamp(self.path)
        if not forced and (stamp is None or stamp == self._stamp):
            return None
        if not forced:
            log.info("%s changed: reloading it", self.path)
        try:
            tenancy = self._load()
        except (ValueError, OSError) as exc:  # ConfigError (file:line, never a key), unreadable file
            return stamp, exc
        return (tenancy.stamp or stamp), tenancy
