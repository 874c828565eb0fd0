"""A commit given up on (``commit_within``) whose request fails later: one line, not an asyncio traceback.

Seen by an outside subscriber developer: the broker paused for 15 s, the service's commit timed out, and when
the broker came back aiokafka's shielded commit request failed with ``UnknownMemberIdError``, which nothing
awaited: "ERROR asyncio: Task exception was never retrieved" and a traceback, after the documented WARNING.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from aiokafka.errors import UnknownMemberIdError

from fusionstream.consumers.kafka import clients


def test_a_commit_request_failing_after_it_was_given_up_on_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clients._quiet_orphaned_commits(asyncio.get_running_loop())

        async def _do_commit_offsets() -> None:  # the name of aiokafka's shielded request
            raise UnknownMemberIdError("the group moved on")

        async def something_else() -> None:
            raise ValueError("a real bug")

        for coro in (_do_commit_offsets(), something_else()):
            task = asyncio.ensure_future(coro)
            await asyncio.sleep(0.01)
            del task
            gc.collect()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    given_up = "a commit given up on ended later: [Error 25] UnknownMemberIdError: the group moved on"
    assert (logging.INFO, given_up) in lines
    errors = [message for level, message in lines if level >= logging.ERROR]
    assert len(errors) == 1 and "never retrieved" in errors[0]  # anything else is still reported as before


def test_a_handler_of_the_application_is_kept() -> None:
    async def main() -> object:
        loop = asyncio.get_running_loop()
        mine = lambda loop, context: None  # noqa: E731
        loop.set_exception_handler(mine)
        clients._quiet_orphaned_commits(loop)
        return loop.get_exception_handler() is mine

    assert asyncio.run(main())
