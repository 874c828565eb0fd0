"""The standby of `serve --workers`: one that dies is said and replaced, so the next crash finds one warm; and a
worker that refuses after serving is backed off, not restarted at once.

From an outside operator: a standby killed while every worker served left ``"standby": "none"`` on /healthz,
with no log line, until a worker died; that worker's replacement was then a cold start (1.36 s against
0.12-0.41 s with a warm standby).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

from fusionstream.consumers.settings import Settings


def test_a_dead_standby_is_said_and_replaced_after_a_pause(caplog: pytest.LogCaptureFixture,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from fusionstream.consumers.service import supervisor as module

    async def scenario() -> tuple[list[bool], float, list[str]]:
        supervisor = module.Supervisor(Settings(), workers=1)
        dies = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; print('fusionstream: error: [standby] out of memory', file=sys.stderr)",
            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        supervisor._spare = module._Worker(dies, asyncio.StreamReader())
        await dies.wait()
        assert supervisor.health()[1]["standby"] == "none"
        for view in supervisor.views:
            view.healthy = True
        await supervisor._replace_dead_standby(100.0)
        due = [supervisor._standby_due(t) for t in (100.0, 103.9, 104.0)]
        return due, supervisor._standby_after - 100.0, [r.getMessage() for r in caplog.records]

    with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.service.supervisor"):
        due, retry_after, lines = asyncio.run(scenario())
    assert retry_after == pytest.approx(4.0), retry_after  # it never got warm: the pause doubles
    assert due == [False, False, True], "replaced once the pause is over (it stayed none before the fix)"
    assert any("the standby (pid" in line and "starting another in 4 s" in line for line in lines), lines
    assert "fusionstream: error: [standby] out of memory" in capsys.readouterr().err, "why it died is passed on"


def _exits(code: int, error: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; print({error!r}, file=sys.stderr); sys.exit({code})"]


@pytest.mark.parametrize(("code", "backed_off"), [(3, True), (1, False)])
def test_a_refusal_after_serving_is_backed_off_where_a_crash_is_restarted_at_once(
    code: int, backed_off: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that served, then refused (exit 3: an ACL denying the predictions topic, found at the first
    publish), was restarted at once, 27 times in 100 s; a crash after a stable run still is."""
    import time

    from fusionstream.consumers.service import supervisor as module
    from fusionstream.consumers.service.worker import REFUSED_STATUS

    assert REFUSED_STATUS == 3

    async def scenario() -> tuple[str, float | None]:
        supervisor = module.Supervisor(Settings(), workers=1, stable_s=1.0)
        view = supervisor.views[0]
        proc = await asyncio.create_subprocess_exec(
            *_exits(code, "fusionstream: error: [fs-0] not authorised to write topic fs.predictions"),
            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        worker = module._Worker(proc, asyncio.StreamReader())
        worker.started = time.monotonic() - 30.0  # it ran 30 s
        view.healthy_at = time.monotonic() - 20.0  # and served
        supervisor._workers[0] = worker
        replaced_at: list[float] = []

        async def replacement() -> module._Worker:  # instead of a real worker: stop there
            replaced_at.append(time.monotonic())
            supervisor.stop()
            idle = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass", stdin=subprocess.PIPE)
            return module._Worker(idle, asyncio.StreamReader())

        supervisor._replacement = replacement  # type: ignore[method-assign]
        watching = asyncio.create_task(supervisor._watch(view))
        exited_at = time.monotonic()
        await proc.wait()
        await asyncio.sleep(0.3 if backed_off else 0.0)
        if backed_off:
            supervisor.stop()  # within the backoff: it is never replaced
        await asyncio.wait_for(watching, 10)
        return view.state, (replaced_at[0] - exited_at) if replaced_at else None

    with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.service.supervisor"):
        state, replaced_after = asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "exited with status" in r.getMessage()]
    assert state == "stopped" and len(lines) == 1, lines
    if backed_off:
        assert lines[0].endswith("restarting in 0.5 s") and replaced_after is None, (lines, replaced_after)
    else:
        assert lines[0].endswith("restarting") and replaced_after is not None and replaced_after < 5.0, lines


def test_a_host_that_served_never_gives_up_on_a_worker_whose_restarts_fail(caplog: pytest.LogCaptureFixture) -> None:
    """An outside operator cut the model a `--workers 2` host served to half its size while one worker restarted:
    after 5 failed starts in 37 s the supervisor stopped the whole host, the healthy worker with it. Once the host
    has served, a worker's failed starts are retried with backoff for as long as it runs."""
    import time

    from fusionstream.consumers.service import supervisor as module

    refuses = ("import sys; sys.stdin.readline(); print('fusionstream: error: [standby] fusion.onnx is not a "
               "loadable ONNX graph', file=sys.stderr); sys.exit(3)")

    async def scenario() -> tuple[int, str | None, str]:
        supervisor = module.Supervisor(Settings(), workers=2, max_failed_starts=2)
        view = supervisor.views[1]
        supervisor.views[0].healthy_at = time.monotonic() - 60.0  # the host has served
        started = 0

        async def replacement() -> module._Worker:
            nonlocal started
            started += 1
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", refuses, stdin=subprocess.PIPE,
                                                        stderr=subprocess.PIPE)
            return module._Worker(proc, asyncio.StreamReader())

        supervisor._replacement = replacement  # type: ignore[method-assign]
        supervisor._workers[1] = await replacement()
        watching = asyncio.create_task(supervisor._watch(view))
        supervisor._workers[1].assign(view)
        deadline = time.monotonic() + 30
        while started < 4 and time.monotonic() < deadline and not watching.done():
            await asyncio.sleep(0.1)
        supervisor.stop()
        await asyncio.wait_for(watching, 40)
        return started, supervisor._fatal, view.state

    with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.service.supervisor"):
        started, fatal, state = asyncio.run(scenario())
    assert fatal is None and started >= 4, (started, fatal)  # it stopped the host after 2 before the fix
    assert state == "stopped"
    delays = [r.getMessage().rsplit("restarting in ", 1)[-1] for r in caplog.records
              if "restarting in" in r.getMessage()]
    assert delays[:3] == ["0.5 s", "1.0 s", "2.0 s"], delays
