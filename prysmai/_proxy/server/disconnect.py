"""Noticing, while the proxy waits for the upstream, that the client has gone away, through
ASGI's ``receive``: where the server does not pass the proxy a :class:`~.guard.ClientConnection`
(uvicorn without httptools). Where it does, the connection tells the proxy at once, with no task."""

from __future__ import annotations

import asyncio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping
    from typing import Any

    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

#: Seconds before a request's watcher starts (up to half as long again: the sweep's period).
#: Answers faster than this pay for a set insertion, not a task or a timer; a client that leaves
#: earlier is noticed at this point.
ARM_AFTER = 0.1


class DisconnectWatch:
    """Cancels the current task when the client disconnects (``gone`` is then True), so the
    upstream request it is waiting for is closed at once. :meth:`stop` before reading ``receive``
    elsewhere or answering."""

    __slots__ = ("_receive", "_since", "_task", "_watcher", "_watches", "gone")

    def __init__(self, receive: Receive, watches: DisconnectWatches, since: float) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[None] | None = None
        self._watches: DisconnectWatches | None = watches
        self._since = since
        self.gone = False

    def _arm(self) -> None:
        self._watches = None
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._watches is not None:
            self._watches.pending.discard(self)
            self._watches = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


class DisconnectWatches:
    """The watches of one event loop's requests. One timer sweeps them every ``delay / 2`` and
    arms those older than ``delay``: a timer per request cost more than the rest of the watch
    (uvloop timers are libuv handles, created and closed each time). The timer runs while
    requests keep coming -- some pending, or one started since the last sweep -- so a steady
    stream of short requests (each over before a sweep) does not create one every other
    request; an idle proxy has none."""

    __slots__ = ("_delay", "_loop", "_started", "_timer", "pending")

    def __init__(self, delay: float = ARM_AFTER) -> None:
        self._delay = delay
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.pending: set[DisconnectWatch] = set()

    def start(self, receive: Receive) -> DisconnectWatch:
        """A watch for the current task, armed once the request has waited ``delay``."""
        loop = asyncio.get_running_loop()
        watch = DisconnectWatch(receive, self, loop.time())
        self.pending.add(watch)
        self._started = True
        if self._timer is None or self._loop is not loop:  # (a sweep of a closed loop never runs)
            self._loop = loop
            self._timer = loop.call_later(self._delay / 2, self._sweep, loop)
        return watch

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        self._timer = None
        due = loop.time() - self._delay
        for watch in [w for w in self.pending if w._since <= due]:
            self.pending.discard(watch)
            watch._arm()
        if self.pending or self._started:
            self._started = False
            self._timer = loop.call_later(self._delay / 2, self._sweep, loop)
