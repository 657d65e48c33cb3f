"""What the proxies on one PostgreSQL database share besides the traces: the dashboard's signing
secret and sessions, and the counts behind each project's limits.

Each replica writes its own rows (its requests of the last minute as 60 per-second counts, its
spend of the month) and reads everybody else's, in one short transaction a sharing interval
(:class:`ReplicaBoard.exchange`). Ages are measured on the database's clock, so replicas whose
clocks differ still agree on how old a count is. Nothing here is on a request path: the proxy's
sharing thread (:mod:`...server.sharing`) calls it.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from dataclasses import dataclass, field

from ..queries import month_spend
from .engine import PostgresConnection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    import psycopg

    from .engine import PostgresEngine

#: The rate limit's window, and the per-second counts each replica publishes of it.
WINDOW = 60
#: How far back each pull of the sessions' changes looks again (a change committed late, by a
#: transaction that began before the previous pull, is still seen).
OVERLAP = 5.0
_SECRET = "session_secret"


@dataclass
class Session:
    """A dashboard session as the replicas share it: its id, the id of the key that opened it,
    its expiry (unix seconds) and whether it was ended (logged out)."""

    id: str
    key_id: str
    expires: float
    ended: bool = False


@dataclass
class Shared:
    """What the other replicas counted, as of one exchange.

    ``rates``: per project, their admissions of the last minute by when each leaves the window:
    ``rates[p][k]`` leave within ``k + 1`` seconds of the exchange (rounded up: never sooner than
    they do). ``spend``: per project, the USD they counted this month. ``stored``: per project,
    this month's spend in the store's rollups (every replica's shipped traces, and any copied in),
    or ``None`` when not read this time. ``sessions``: sessions issued or ended lately."""

    rates: dict[str, list[int]] = field(default_factory=dict)
    spend: dict[str, float] = field(default_factory=dict)
    stored: dict[str, float] | None = None
    sessions: list[Session] = field(default_factory=list)


class ReplicaBoard:
    """The shared rows of the database of ``engine``, for the replica named ``replica`` (stable
    across its restarts: its host and outbox). Used by one thread; its connection is opened on
    first use (migrating the schema, under the engine's lock) and again after a failure."""

    def __init__(self, engine: PostgresEngine, replica: str) -> None:
        self.engine = engine
        self.replica = replica
        self._conn: psycopg.Connection[Any] | None = None
        #: The database time (unix seconds) of the latest session change seen.
        self._seen = 0.0

    def __repr__(self) -> str:
        return f"ReplicaBoard({self.engine.location!r}, replica={self.replica!r})"

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.engine.open_for_writing()
        return self._conn

    def close(self) -> None:
        """Drop the connection (after a failure: the next call opens another)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a connection that is already gone
                self._conn.close()
            self._conn = None

    def session_secret(self) -> bytes:
        """The dashboard's signing secret of this database: made once, by whichever replica asks
        first (32 random bytes), and the same for every replica after."""
        conn = self._connection()
        with conn.transaction():
            conn.execute(
                "INSERT INTO prysmai_settings (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                [_SECRET, secrets.token_bytes(32)],
            )
            row = conn.execute("SELECT value FROM prysmai_settings WHERE name = %s", [_SECRET]).fetchone()
        assert row is not None
        return bytes(row[0])

    def own_spend(self, month: int) -> dict[str, float]:
        """What this replica counted in ``month`` (unix seconds of its start) before it started."""
        rows = self._connection().execute(
            "SELECT project, usd FROM prysmai_spend WHERE replica = %s AND month = %s", [self.replica, month]
        )
        return {project: float(usd) for project, usd in rows}

    def exchange(
        self,
        month: int,
        rates: Mapping[str, Sequence[int]],
        spend: Mapping[str, float],
        sessions: Sequence[Session],
        *,
        read_stored: bool,
    ) -> Shared:
        """Publish this replica's counts -- ``rates``: per project, its admissions by age in whole
        seconds (``rates[p][i]``: between ``i`` and ``i + 1`` seconds old); ``spend``: per
        project, its USD of ``month`` -- and its sessions issued or ended since the last exchange;
        read everybody else's. ``read_stored``: also read the month's spend from the rollups."""
        conn = self._connection()
        shared = Shared()
        with conn.transaction():
            conn.execute(
                "DELETE FROM prysmai_rates WHERE replica = %s AND NOT (project = ANY(%s))", [self.replica, list(rates)]
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO prysmai_rates (replica, project, counts, updated_at) VALUES (%s, %s, %s, now()) "
                    "ON CONFLICT (replica, project) DO UPDATE SET counts = excluded.counts, updated_at = now()",
                    [(self.replica, p, list(c)) for p, c in rates.items()],
                )
                cur.executemany(
                    "INSERT INTO prysmai_spend (replica, project, month, usd) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (replica, project, month) DO UPDATE SET usd = excluded.usd",
                    [(self.replica, p, month, usd) for p, usd in spend.items()],
                )
                cur.executemany(
                    "INSERT INTO prysmai_sessions (id, key_id, expires, ended) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET ended = prysmai_sessions.ended OR excluded.ended, "
                    "changed_at = clock_timestamp() WHERE excluded.ended AND NOT prysmai_sessions.ended",
                    [(s.id, s.key_id, s.expires, s.ended) for s in sessions],
                )
            found = conn.execute(
                "SELECT project, counts, extract(epoch FROM now() - updated_at)::float8 FROM prysmai_rates "
                "WHERE replica <> %s AND updated_at > now() - make_interval(secs => %s)",
                [self.replica, WINDOW + 1],
            )
            for project, counts, lag in found:
                _add_leaving(shared.rates.setdefault(project, [0] * WINDOW), counts, float(lag))
            found = conn.execute(
                "SELECT project, sum(usd) FROM prysmai_spend WHERE month = %s AND replica <> %s GROUP BY project",
                [month, self.replica],
            )
            shared.spend = {project: float(usd or 0.0) for project, usd in found}
            # The sessions changed since the last look (again a few seconds back, see OVERLAP), or
            # on the first look every session that has not expired.
            found = conn.execute(
                "SELECT id, key_id, expires, ended, extract(epoch FROM changed_at)::float8 FROM prysmai_sessions "
                "WHERE changed_at > to_timestamp(%s) AND expires > extract(epoch FROM now())",
                [max(0.0, self._seen - OVERLAP)],
            )
            for sid, key_id, expires, ended, changed in found:
                shared.sessions.append(Session(sid, key_id, float(expires), bool(ended)))
                self._seen = max(self._seen, float(changed))
            if read_stored:
                shared.stored = month_spend(PostgresConnection(conn), month)
                # Housekeeping, now and then: sessions long expired, spend of months gone, the
                # minutes of replicas gone for an hour.
                conn.execute("DELETE FROM prysmai_sessions WHERE expires < extract(epoch FROM now()) - 60")
                conn.execute("DELETE FROM prysmai_spend WHERE month < %s", [month])
                conn.execute("DELETE FROM prysmai_rates WHERE updated_at < now() - interval '1 hour'")
        return shared


def _add_leaving(into: list[int], counts: Sequence[int], lag: float) -> None:
    """Add one replica's per-second counts (by age at publication, published ``lag`` seconds ago)
    to ``into``, by when they leave the window from now, rounded up."""
    for age, n in enumerate(counts[:WINDOW]):
        if not n:
            continue
        left = WINDOW - age - lag  # the youngest of the second's requests leave then
        if left > 0:
            into[min(WINDOW, math.ceil(left)) - 1] += int(n)
