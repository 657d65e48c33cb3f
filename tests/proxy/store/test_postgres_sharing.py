"""The limits with other replicas' counts (server/limits.py), the dashboard's sessions in shared
mode (web/auth.py) and the board they are exchanged on, against a real PostgreSQL
(store/postgres/replicas.py)."""

from __future__ import annotations

import socket
import time
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from prysmai._proxy.config.projects import Limits as ProjectLimits
from prysmai._proxy.config.projects import Project
from prysmai._proxy.server.limits import Limits, month_start
from prysmai._proxy.server.sharing import Sharing
from prysmai._proxy.store.postgres.engine import PostgresEngine
from prysmai._proxy.store.postgres.replicas import ReplicaBoard, Session
from prysmai._proxy.web.auth import SHARING_GRACE, Sessions

#: Now, in whole seconds (the sessions' expiries are checked against the clock when they end).
NOW = float(int(time.time()))


def project(rpm: int | None = None, budget: float | None = None) -> Project:
    return Project("p", (), None, ProjectLimits(rpm, budget))


def in_window(mine: list[float], others: list[int], shared_at: float, t: float) -> int:
    """What the window holds at ``t``, counted from scratch: this replica's requests younger than
    60 s, and the others' that leave after ``t`` (``others[k]`` leave at ``shared_at + k + 1``)."""
    return sum(1 for m in mine if m > t - 60) + sum(n for k, n in enumerate(others) if shared_at + k + 1 > t)


def test_the_others_requests_count_until_they_leave_the_window() -> None:
    limits = Limits()
    limits.share(limits.month(), {"p": [0] * 5 + [6] + [0] * 54}, {}, None, {}, at=NOW)
    p = project(rpm=10)
    assert [limits.check(p, NOW + i * 0.5) for i in range(4)] == [None] * 4
    refused = limits.check(p, NOW + 2.0)
    assert refused is not None and refused.code == "project_rate_limit_exceeded"
    assert dict(refused.headers)[b"retry-after"] == b"4"  # the others' 6 leave at NOW + 6
    assert limits.check(p, NOW + 5.9) is not None
    assert limits.check(p, NOW + 6.0) is None
    # Alone (nothing shared), the same project gets its whole minute.
    alone = Limits()
    assert [alone.check(p, NOW + i) for i in range(10)] == [None] * 10


@settings(max_examples=300, deadline=None)
@given(
    ages=st.lists(st.floats(0, 59.9), max_size=40),
    others=st.lists(st.integers(0, 5), min_size=60, max_size=60),
    lag=st.floats(0, 5),
    rpm=st.integers(1, 80),
)
def test_a_request_is_admitted_exactly_while_the_shared_window_has_room(
    ages: list[float], others: list[int], lag: float, rpm: int
) -> None:
    limits = Limits()
    fill = project(rpm=10_000)
    mine = sorted(NOW - a for a in ages)
    for t in mine:
        assert limits.check(fill, t) is None
    shared_at = NOW - lag
    limits.share(limits.month(), {"p": list(others)}, {}, None, {}, at=shared_at)
    held = in_window(mine, others, shared_at, NOW)
    refused = limits.check(project(rpm=rpm), NOW)
    assert (refused is not None) == (held >= rpm)
    if refused is not None:
        wait = int(dict(refused.headers)[b"retry-after"])
        assert in_window(mine, others, shared_at, NOW + wait) < rpm  # room again by then
        if wait > 1:
            assert in_window(mine, others, shared_at, NOW + wait - 1) >= rpm  # and not a second sooner


def test_own_rates_count_the_minute_by_age() -> None:
    limits = Limits()
    p = project(rpm=100)
    for t in (NOW - 70, NOW - 59.5, NOW - 0.2, NOW - 0.1, NOW - 3.5):
        limits.check(p, t)
    counts = limits.own_rates(NOW)["p"]
    assert len(counts) == 60 and counts[0] == 2 and counts[3] == 1 and counts[59] == 1 and sum(counts) == 4


def test_the_budget_counts_the_others_and_the_store_without_counting_twice() -> None:
    limits = Limits()
    month = limits.month()
    limits.add_spend("p", 3.0, month + 1)
    p = project(budget=10)
    # Others counted 4: 7 in all.
    limits.share(month, {}, {"p": 4.0}, {"p": 5.0}, {"p": 3.0})
    assert limits.spent("p") == 7.0 and limits.check(p) is None
    # The store holds more than every replica counted (traces copied in): the store's figure.
    limits.share(month, {}, {"p": 4.0}, {"p": 12.0}, {"p": 3.0})
    assert limits.spent("p") == 12.0
    refused = limits.check(p)
    assert refused is not None and refused.code == "project_budget_exceeded"
    # The store not read this time: its last figure holds.
    limits.share(month, {}, {"p": 4.0}, None, {"p": 3.0})
    assert limits.spent("p") == 12.0
    # Another month's counts are not this month's.
    limits.share(month - 86400 * 31, {}, {"p": 100.0}, None, {})
    assert limits.spent("p") == 12.0
    assert month == month_start(month + 5)


# -- sessions ------------------------------------------------------------------------------------------
SECRET = b"s" * 32


def test_a_session_of_another_replica_holds_on_its_signature_briefly_then_once_shared() -> None:
    a, b = Sessions(), Sessions()
    a.share(SECRET)
    b.share(SECRET)
    cookie = a.issue("key_x", now=NOW)
    assert b.check(cookie, now=NOW + 1) == "key_x"  # just issued elsewhere: on its signature
    assert b.check(cookie, now=NOW + SHARING_GRACE + 1) is None  # not heard of since: refused
    events = a.take_events()
    assert [(e[1], e[3]) for e in events] == [("key_x", False)] and a.take_events() == []
    b.learn(events, now=NOW + 1)
    assert b.check(cookie, now=NOW + 100) == "key_x"
    a.end(cookie)
    ended = a.take_events()
    assert [(e[0], e[3]) for e in ended] == [(events[0][0], True)]
    b.learn(ended, now=NOW + 101)
    assert b.check(cookie, now=NOW + 102) is None
    # Ended within its grace: refused there too (an end is remembered as one).
    fresh = a.issue("key_x", now=NOW + 200)
    a.end(fresh)
    b.learn(a.take_events(), now=NOW + 200)
    assert b.check(fresh, now=NOW + 201) is None
    # A replica that shares nothing accepts only the sessions it issued.
    alone = Sessions(secret=SECRET)
    assert alone.check(a.issue("key_x", now=NOW + 300), now=NOW + 300) is None


def test_adopting_the_shared_secret_ends_the_sessions_signed_before() -> None:
    sessions = Sessions()
    before = sessions.issue("key_x")
    assert sessions.check(before) == "key_x"
    sessions.share(SECRET)
    assert sessions.check(before) is None
    assert sessions.check(sessions.issue("key_x")) == "key_x"


# -- the board, on a real PostgreSQL ---------------------------------------------------------------------
def test_replicas_exchange_counts_spend_sessions_and_one_secret(pg_url: str) -> None:
    engine = PostgresEngine(pg_url)
    a, b = ReplicaBoard(engine, "a"), ReplicaBoard(engine, "b")
    try:
        assert a.session_secret() == b.session_secret() and len(a.session_secret()) == 32
        month = int(month_start(NOW))
        counts = [0] * 60
        counts[0], counts[10], counts[59] = 2, 3, 1
        session = Session("s1", "key_x", NOW + 10**9)
        a.exchange(month, {"p": counts}, {"p": 1.5}, [session], read_stored=False)
        seen = b.exchange(month, {"q": [1] + [0] * 59}, {"p": 0.5}, [], read_stored=True)
        # A's counts, by when they leave: aged 0 -> within 60 s; 10 -> 50; 59 -> 1 (or a bit less).
        leaving = seen.rates["p"]
        assert sum(leaving) == 6 and leaving[59] + leaving[58] == 2 and leaving[49] + leaving[48] == 3
        assert seen.spend == {"p": 1.5} and seen.stored == {}
        assert [(s.id, s.ended) for s in seen.sessions] == [("s1", False)]
        ended = a.exchange(month, {}, {"p": 2.0}, [Session("s1", "key_x", NOW + 10**9, True)], read_stored=False)
        assert ended.rates == {"q": [0] * 59 + [1]}  # B's one request, aged 0: leaves within 60 s
        again = b.exchange(month, {}, {"p": 0.5}, [], read_stored=False)
        assert "p" not in again.rates  # A publishes no request of the minute any more
        assert again.spend == {"p": 2.0}
        assert [(s.id, s.ended) for s in again.sessions] == [("s1", True)]
        assert a.own_spend(month) == {"p": 2.0} and b.own_spend(month) == {"p": 0.5}
    finally:
        a.close()
        b.close()
    with psycopg.connect(pg_url) as conn:  # what was shared holds no key, only its id
        rows: list[Any] = conn.execute("SELECT id, key_id FROM prysmai_sessions").fetchall()
    assert rows == [("s1", "key_x")]


def test_a_database_that_accepts_but_never_answers_is_reported_and_the_limits_go_on(tmp_path: Any) -> None:
    """A listening socket that never answers (the kernel completes the handshake): no exchange
    fails for a while, yet health must say the sharing is stale; the limits keep answering."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    limits, sessions = Limits(), Sessions()
    sharing = Sharing(PostgresEngine(f"postgresql://u:pw@127.0.0.1:{port}/db"), "r", limits, sessions, stale=0.5)
    try:
        sharing.start(None)
        assert sharing.trouble() is None
        deadline = time.monotonic() + 5  # sooner than the connection's own timeout (10 s)
        while sharing.trouble() is None:
            assert time.monotonic() < deadline, "a silent database is never reported"
            time.sleep(0.05)
        trouble = sharing.trouble()
        assert trouble is not None and "does not answer" in trouble and "pw" not in trouble
        assert sharing.status()["error"] == trouble and sharing.exchanges == 0
        assert [limits.check(project(rpm=2)) is None for _ in range(3)] == [True, True, False]
    finally:
        silent.close()  # the stuck connection is reset: the thread fails and stops
        sharing.stop()
