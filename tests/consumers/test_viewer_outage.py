"""The viewer through a broker outage: it rides it out (a traceback a second in, before), and its /healthz says
the broker is away while it is (it said "ok" and nothing else)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fusionstream.consumers.settings import Settings
from fusionstream.consumers.viewer.state import ViewerState


def test_the_viewer_rides_out_a_broker_that_stops_answering(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Listing the topics (every few seconds) raised KafkaError once the broker went away, and the viewer
    died with a traceback a second into an outage while tail and subscribe() rode it out."""
    from aiokafka.errors import KafkaError

    from fusionstream.consumers.viewer import feed as feed_module

    class AwayThenBack:
        calls = 0

        async def topics(self) -> set[str]:
            AwayThenBack.calls += 1
            if AwayThenBack.calls <= 3:
                raise KafkaError("Unable to get cluster metadata over all known brokers")
            return {"fs.predictions"}

        async def getmany(self, **_: Any) -> dict:
            await asyncio.sleep(0.01)
            return {}

        def subscribe(self, topics: list[str]) -> None: ...

        def assignment(self) -> set:
            return set()

    monkeypatch.setattr(feed_module, "_TOPICS_EVERY_S", 0.0)
    feed = feed_module.KafkaFeed(Settings.load(), ViewerState(sync=False))
    feed._consumer = AwayThenBack()  # type: ignore[assignment]
    feed._subscribed = frozenset({"fs.video"})

    said_by_health: list[str] = []

    async def run_a_while() -> None:
        task = asyncio.create_task(feed.run())
        while AwayThenBack.calls < 5:
            assert not task.done(), task
            said_by_health.append(feed.broker(time.monotonic()))
            await asyncio.sleep(0.01)
        feed.stop()
        await task

    with caplog.at_level("INFO", logger="fusionstream.consumers.viewer.feed"):
        asyncio.run(asyncio.wait_for(run_a_while(), 20))
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot list the topics" in m for m in said) == 1, said  # once per outage
    assert any("the broker answers again" in m for m in said) and feed._subscribed == {"fs.predictions"}
    # /healthz said "ok" and nothing of the outage; it says it now, and that it ended.
    assert any(s.startswith("not answering for ") for s in said_by_health), said_by_health
    assert feed.broker(time.monotonic()) == "answering"
