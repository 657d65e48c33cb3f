"""Fork safety: a child forked while other threads are inside ``instrument()`` or ``prysm_context.set()``
never inherits one of prysmai's locks held, and can use prysmai at once.

Each test runs a script in a fresh interpreter (forking a multi-threaded pytest worker would test the
worker, not prysmai). Every child arms ``alarm()``: a child stuck on a lock is killed by SIGALRM and
counted as hung, so the test ends even when the bug is there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="POSIX only: os.fork")

PRELUDE = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    import openai
    import prysmai
    from prysmai import prysm_context

    KEY = "sk-prysm-test-0123456789"
    URL = "http://127.0.0.1:9/api/v1"
    stop = threading.Event()

    def hammer(n):
        i = 0
        while not stop.is_set():
            prysmai.instrument(prysm_key=KEY, base_url=URL)
            prysm_context.set(user_id=f"t{n}-{i}", metadata={"i": i})
            with prysm_context(session_id="s"):
                prysmai.uninstrument()
            i += 1

    # Load prysmai's modules before any thread runs: a fork in the middle of a first import leaves the
    # child waiting on that module's import lock, a hazard of fork() with threads that no library's
    # own locks can prevent (an application that forks must not import concurrently).
    prysmai.instrument(prysm_key=KEY, base_url=URL)
    prysmai.is_instrumented()
    prysmai.uninstrument()

    threads = [threading.Thread(target=hammer, args=(n,), daemon=True) for n in range(2)]
    for thread in threads:
        thread.start()

    def child_body():
        import faulthandler
        faulthandler.dump_traceback_later(25, exit=False)  # where a stuck child is stuck, on stderr
        signal.alarm(30)  # default action: the process dies, even blocked on a lock (generous: a loaded CI box)
        prysm_context.set(user_id="child")
        with prysm_context(session_id="c"):
            assert prysm_context.get().user_id == "child"
        prysmai.instrument(prysm_key=KEY, base_url=URL)
        assert prysmai.is_instrumented()
        prysmai.uninstrument()
        assert not prysmai.is_instrumented()
    """
)


def run(script: str) -> tuple[dict[str, int], str]:
    """The counts the script prints, and its stderr (tracebacks of stuck children)."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, done.stderr[-6000:]


def test_200_forks_while_threads_hammer_instrument_and_set() -> None:
    counts, stderr = run(
        """
        counts = {"ok": 0, "hung": 0, "failed": 0}
        for batch in range(20):  # 10 children at a time: a loaded machine must not pass for a hang
            pids = []
            for _ in range(10):
                pid = os.fork()
                if pid == 0:
                    try:
                        child_body()
                    except BaseException:
                        os._exit(3)
                    os._exit(0)
                pids.append(pid)
            for pid in pids:
                _, status = os.waitpid(pid, 0)
                if os.WIFSIGNALED(status):
                    # SIGALRM: still running after 30 s, stuck; any other signal: it crashed.
                    sig = os.WTERMSIG(status)
                    outcome = "hung" if sig == signal.SIGALRM else f"signal {sig}"
                    counts[outcome] = counts.get(outcome, 0) + 1
                elif os.WEXITSTATUS(status) == 0:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
            if counts["ok"] != sum(counts.values()):
                break  # the bug is shown; more batches would only take longer
        stop.set()
        print(json.dumps(counts))
        """
    )
    assert counts == {"ok": 200, "hung": 0, "failed": 0}, stderr


def test_multiprocessing_fork_start_method_while_threads_hammer() -> None:
    counts, stderr = run(
        """
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        processes = [ctx.Process(target=child_body) for _ in range(20)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        stop.set()
        codes = [process.exitcode for process in processes]
        print(json.dumps({"ok": codes.count(0), "other": len(codes) - codes.count(0)}))
        """
    )
    assert counts == {"ok": 20, "other": 0}, stderr
