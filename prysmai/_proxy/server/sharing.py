"""What a proxy shares with the other replicas on its PostgreSQL database, on a thread of its own.

Every :data:`INTERVAL` seconds the thread publishes this replica's counts (its requests of the last
minute and spend of the month, per project: :class:`~.limits.Limits`) and the dashboard sessions it
issued or ended (:class:`~..web.auth.Sessions`), and reads what the others published, in one
transaction (:class:`~..store.postgres.replicas.ReplicaBoard`). The request path never waits on
it: the limits and the sessions read what the thread last handed them. While the database cannot
be reached, the proxy goes on with its own counts (the log says so once, and once when it is back;
``/api/v1/health`` says ``degraded``), and the next exchange catches up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time

from ..store.postgres.replicas import ReplicaBoard, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from ..store.postgres.engine import PostgresEngine
    from ..web.auth import SessionEvent, Sessions
    from .limits import Limits

log = logging.getLogger("prysmai.proxy")

#: Seconds between two exchanges: what a replica admits unseen by the others is what the replicas
#: admit in about two of them (plus a round trip to the database).
INTERVAL = 0.5
#: Exchanges between two reads of the month's spend from the store's rollups.
STORED_EVERY = 10
#: Session events kept for the database while it cannot be reached.
MAX_UNSENT = 10_000
#: Seconds without an exchange after which the sharing is reported stale (a database that accepts
#: but does not answer raises nothing for a long while).
STALE = 5.0


def replica_name(outbox: str) -> str:
    """A replica's name on the board, the same across its restarts: its host and its outbox file
    (each replica has its own)."""
    where = f"{socket.gethostname()}:{os.path.realpath(outbox)}"
    return socket.gethostname()[:40] + "-" + hashlib.sha256(where.encode()).hexdigest()[:12]


class Sharing:
    """The sharing thread of one proxy: its ``limits`` and ``sessions`` with the other replicas on
    ``engine``'s database, under the name ``replica``. ``loop``: the proxy's event loop, where what
    was read is handed over (the request path's objects are changed on the loop only)."""

    def __init__(
        self,
        engine: PostgresEngine,
        replica: str,
        limits: Limits,
        sessions: Sessions,
        interval: float = INTERVAL,
        stale: float = STALE,
    ) -> None:
        self.board = ReplicaBoard(engine, replica)
        self.limits = limits
        self.sessions = sessions
        self.interval = interval
        self.stale = stale
        self._started = time.monotonic()
        self.exchanges = 0
        self.failures = 0
        self.last_exchange: float | None = None
        self._outage: str | None = None
        self._own_base_read = False
        self._unsent: list[SessionEvent] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Sharing({self.board!r}, every {self.interval:g} s)"

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Start the thread (its first exchange adopts the database's signing secret)."""
        self._loop = loop
        self._started = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prysmai-sharing", daemon=True)
        self._thread.start()

    def first_exchange(self, timeout: float) -> bool:
        """Wait until the first exchange is done (``False`` after ``timeout``, the database down)."""
        deadline = time.monotonic() + timeout
        while self.exchanges == 0 and time.monotonic() < deadline and self._outage is None:
            time.sleep(0.02)
        return self.exchanges > 0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, after one last exchange (what was issued or counted last is shared)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.board.close()

    def trouble(self) -> str | None:
        """Why the limits and log-ins are not shared now, or ``None``."""
        if self._outage is not None:
            return self._outage
        since = time.monotonic() - (self._started if self.last_exchange is None else self.last_exchange)
        if since > self.stale:
            return (
                f"limits and log-ins were last shared with the other replicas {since:.0f} s ago "
                f"({self.board.engine.location} does not answer)"
            )
        return None

    def status(self) -> dict[str, Any]:
        """For ``/api/v1/health``: the exchanges done and failed, and the age of the last one."""
        last = None if self.last_exchange is None else round(time.monotonic() - self.last_exchange, 3)
        return {
            "replica": self.board.replica,
            "exchanges": self.exchanges,
            "failures": self.failures,
            "last_exchange_s": last,
            "error": self.trouble(),
        }

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self._exchange()
            except Exception as exc:
                self.board.close()
                self.failures += 1
                self._fail(exc)
            if self._stop.is_set():
                return
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _exchange(self) -> None:
        if not self.sessions.shared:
            secret = self.board.session_secret()
            self._call(self.sessions.share, secret)
        month = int(self.limits.month())
        if not self._own_base_read:  # what this replica counted before a restart, this month
            base = self.board.own_spend(month)
            for project, usd in base.items():
                self.limits.add_spend(project, usd, float(month))
            self._own_base_read = True
        # What waits while the database is down is bounded: the newest sessions' news are kept
        # (an issue not shared is still accepted elsewhere within its grace; an end must get out).
        self._unsent = (self._unsent + self.sessions.take_events())[-MAX_UNSENT:]
        rates = self.limits.own_rates()
        own = self.limits.own_spend()
        at = time.monotonic()
        shared = self.board.exchange(
            month,
            rates,
            own,
            [Session(*event) for event in self._unsent],
            read_stored=self.exchanges % STORED_EVERY == 0,
        )
        self._unsent = []
        self._call(self.limits.share, float(month), shared.rates, shared.spend, shared.stored, own, at)
        if shared.sessions:
            events = [(s.id, s.key_id, s.expires, s.ended) for s in shared.sessions]
            self._call(self.sessions.learn, events)
        self.exchanges += 1
        self.last_exchange = time.monotonic()
        if self._outage is not None:
            log.warning("limits and log-ins are shared with the other replicas again (%s)", self.board.engine.location)
            self._outage = None

    def _call(self, fn: Any, *args: Any) -> None:
        """``fn(*args)`` on the proxy's event loop (or here, without one)."""
        if self._loop is None or self._loop.is_closed():
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _fail(self, exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._outage is None:
            log.error(
                "cannot share limits and log-ins with the other replicas through %s (%s): each counts its own "
                "requests and spend, on top of the last shared counts, until it is back",
                self.board.engine.location,
                reason,
            )
        self._outage = f"limits and log-ins are not shared with the other replicas now ({reason})"
