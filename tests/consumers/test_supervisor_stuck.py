"""The supervisor's hand on stuck workers, without a broker: which one it kills as stuck, and a stop that hangs.

Against the broker, tests/consumers/test_supervisor.py freezes a worker for real (SIGSTOP).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from fusionstream.consumers.settings import Settings


class _FakeProc:
    pid, returncode = 4242, None


class _FakeWorker:
    def __init__(self, started: float) -> None:
        self.proc, self.started, self.killed, self.signals = _FakeProc(), started, False, []
        self.stuck_since: float | None = None

    def signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_only_a_worker_that_is_frozen_or_will_not_exit_is_killed_as_stuck() -> None:
    """Killed: served, then unanswered (SIGSTOP) or stopping/stopped without exiting, for 20 s on end. Left alone:
    one unhealthy but answering (waiting for partitions, the broker away: a restart mends nothing), one stuck for
    less (timed from when it got stuck, not from its last healthy answer), one that never served since its
    start (its start-up is the backoff's business)."""
    from fusionstream.consumers.service.hostview import NOT_ANSWERING
    from fusionstream.consumers.service.supervisor import Supervisor

    supervisor = Supervisor(Settings(), workers=1, stuck_after_s=20.0)
    now = 1000.0
    cases = {  # states reported (each for its seconds, in turn), started at: killed?
        "frozen": ([(NOT_ANSWERING, 25.0)], 100.0, True),
        "stopped, not exiting": ([("stopped", 25.0)], 100.0, True),
        "stopping, not exiting": ([("stopping", 21.0)], 100.0, True),
        "answering, no partitions": ([("running", 60.0)], 100.0, False),
        "frozen for less": ([(NOT_ANSWERING, 10.0)], 100.0, False),
        "a stalled engine, then one poll unanswered": ([("running", 60.0), (NOT_ANSWERING, 2.0)], 100.0, False),
        "stopped after a while unhealthy": ([("running", 60.0), ("stopped", 5.0)], 100.0, False),
        "never served since its start": ([(NOT_ANSWERING, 60.0)], 995.0, False),
    }
    for name, (states, started, killed) in cases.items():
        view, worker = supervisor.views[0], _FakeWorker(started)
        supervisor._workers[0] = worker  # type: ignore[assignment]
        when = now - sum(seconds for _, seconds in states)
        view.healthy, view.healthy_at = False, when  # its last healthy answer: before all of these
        for state, seconds in states:
            view.detail = {"status": "unavailable", "state": state}
            for tick in range(int(seconds * 2) + 1):  # polled every 0.5 s
                supervisor._kill_if_stuck(view, when + tick * 0.5)
            when += seconds
        assert (worker.signals == [signal.SIGKILL]) is killed, name


def test_a_worker_that_will_not_stop_is_killed_after_the_stop_timeout() -> None:
    """SIGTERM to the host did not finish in 60 s for a client (a worker hung in its cleanup)."""
    from fusionstream.consumers.service.supervisor import Supervisor, _Worker

    ignores_sigterm = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
        "time.sleep(60)"

    async def scenario() -> tuple[int | None, float]:
        supervisor = Supervisor(Settings(), workers=1, stop_timeout_s=0.5)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ignores_sigterm,
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        await proc.stdout.readline()  # its handler is in place
        supervisor._workers[0] = _Worker(proc, asyncio.StreamReader())
        started = time.monotonic()
        await supervisor._shutdown(set())
        return proc.returncode, time.monotonic() - started

    code, took = asyncio.run(scenario())
    assert code == -signal.SIGKILL and took < 5
