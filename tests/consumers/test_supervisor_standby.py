"""The standby of `serve --workers`: one that dies is said and replaced, so the next crash finds one warm.

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
