"""A second deployment on the same input topics, with another group id and the same predictions topic, is said at
its start: each group reads every record, so every window is published twice (an outside operator's accident
published 988 windows twice in 40 s, from two models, without a word)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from servicekit import Running, admin_session, service_settings, serving, synthetic

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.other_groups import other_services, watch_other_services


def test_a_checkpoint_names_its_predictions_topic_and_reads_back_without_one() -> None:
    text = Checkpoint(7, {"cam": 2_000_000_000}, output="site.predictions").encode(500_000_000)
    assert Checkpoint.decode(text).output == "site.predictions"  # type: ignore[union-attr]
    assert Checkpoint.decode(Checkpoint(7, {"cam": 0}).encode(500_000_000)).output is None  # type: ignore[union-attr]
    assert Checkpoint.output_of(text) == "site.predictions"
    # Another application's commit metadata names nothing, and is no reason for a warning.
    assert [Checkpoint.output_of(m) for m in (None, "", "offset 7", '{"o": "x"}', '{"v": 1, "o": 3}')] == [None] * 5


def test_kafka_a_second_group_publishing_to_the_same_predictions_is_warned_of_at_its_start(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    second = first.model_copy(update={"group_id": f"{topic_prefix}-second"})
    records = list(synthetic(streams=2, seconds=4, seed=3).records())

    async def scenario() -> tuple[list[str], list[str], list[str], list[str]]:
        async with serving(first, records) as (_running, reader):
            await reader.until(lambda r: len(r.records) >= 4)
            await asyncio.sleep(1.0)  # committed, with its checkpoints (every 200 ms)
            async with admin_session(kafka_bootstrap) as admin:
                inputs = [first.video_topic, first.audio_topic, first.text_topic]
                elsewhere = await other_services(admin, inputs, second.group_id, f"{topic_prefix}.trial")
                itself = await other_services(admin, inputs, first.group_id, first.predictions_topic)
                # A service already running looks again now and then: the first group is named once, not at
                # every look (the one started first was never told of the second).
                with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.service.other_groups"):
                    watching = asyncio.create_task(watch_other_services(
                        admin, inputs, second.group_id, first.predictions_topic, named=[], every_s=0.2))
                    await asyncio.sleep(1.5)
                    watching.cancel()
                    await asyncio.gather(watching, return_exceptions=True)
                looked_again = [r.getMessage() for r in caplog.records if r.name.endswith("other_groups")]
                caplog.clear()
            with caplog.at_level(logging.WARNING, logger="fusionstream.consumers.service.other_groups"):
                async with Running(second, instance_id="second") as service:
                    deadline = time.monotonic() + 60
                    while service._state != "running" and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
            warned = [r.getMessage() for r in caplog.records if r.name.endswith("other_groups")]
            return warned, elsewhere, itself, looked_again

    warned, elsewhere, itself, looked_again = asyncio.run(scenario())
    assert len(looked_again) == 1 and f"consumer group {topic_prefix}-service, another" in looked_again[0]
    assert len(warned) == 1 and f"consumer group {topic_prefix}-service, another fusionstream service" in warned[0]
    assert f"published to {topic_prefix}.predictions too: if it still runs" in warned[0], warned
    assert elsewhere == [] and itself == [], "a group publishing elsewhere, or its own, is not named"
