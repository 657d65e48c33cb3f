"""The circuit breaker's state machine, under concurrent callers."""

from __future__ import annotations

import threading
import time

from prysmai._breaker import CLOSED, DIRECT, HALF_OPEN, OPEN, PROBE, PROXY, Breaker


def test_one_probe_per_cooldown_among_concurrent_callers() -> None:
    breaker = Breaker("http://proxy/api/v1", cooldown=0.05)
    assert breaker.route(True) == PROXY
    breaker.hop_failed(PROXY, "ConnectError: refused", True)
    assert breaker.state == OPEN
    assert {breaker.route(True) for _ in range(100)} == {DIRECT}  # cooling down
    time.sleep(0.06)
    routes: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def caller() -> None:
        start.wait()
        for _ in range(50):
            r = breaker.route(True)
            with lock:
                routes.append(r)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert routes.count(PROBE) == 1 and routes.count(DIRECT) == 799
    assert breaker.state == HALF_OPEN
    breaker.hop_failed(PROBE, "ConnectError: refused", True)  # the probe failed: a new cool-down
    assert breaker.state == OPEN and breaker.route(True) == DIRECT
    time.sleep(0.06)
    assert breaker.route(True) == PROBE
    breaker.answered(PROBE)  # the proxy is back
    assert breaker.state == CLOSED and breaker.route(True) == PROXY
    assert breaker.snapshot() == (CLOSED, 1, 0, 0)


def test_in_flight_requests_do_not_flip_the_breaker() -> None:
    breaker = Breaker("http://proxy/api/v1", cooldown=10)
    breaker.hop_failed(PROXY, "ConnectError", True)
    breaker.answered(PROXY)  # a request sent before the failure got its answer: still open
    assert breaker.state == OPEN
    breaker.hop_failed(PROXY, "ConnectError", True)  # another one from before: nothing new
    assert breaker.state == OPEN


def test_without_fallback_every_request_tries_the_proxy_and_an_answer_closes() -> None:
    breaker = Breaker("http://proxy/api/v1", cooldown=10)
    breaker.hop_failed(PROXY, "ConnectError", False)
    assert breaker.route(False) == PROBE  # never DIRECT: nowhere else to go
    breaker.answered(PROBE)
    assert breaker.state == CLOSED


def test_a_probe_that_ends_without_an_answer_lets_the_next_request_probe() -> None:
    breaker = Breaker("http://proxy/api/v1", cooldown=0)
    breaker.hop_failed(PROXY, "ConnectError", True)
    assert breaker.route(True) == PROBE
    assert breaker.route(True) == DIRECT  # one probe at a time
    breaker.released(PROBE)  # cancelled, say
    assert breaker.route(True) == PROBE
