"""Noticing, while the proxy waits for the upstream, that the client has gone away."""

from __future__ import annotations

import asyncio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping
    from typing import Any

    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

#: Seconds before the watcher starts. Answers faster than this pay for one timer, not a task; a
#: client that leaves earlier is noticed at this point.
ARM_AFTER = 0.1


class DisconnectWatch:
    """Cancels the current task when the client disconnects (``gone`` is then True), so the
    upstream request it is waiting for is closed at once. :meth:`stop` before reading ``receive``
    elsewhere or answering."""

    __slots__ = ("_handle", "_receive", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive, delay: float = ARM_AFTER) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[None] | None = None
        self.gone = False
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(delay, self._arm)

    def _arm(self) -> None:
        self._handle = None
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
