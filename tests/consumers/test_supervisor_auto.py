"""``serve --workers auto`` against the real broker: capped by the partitions the input topics have."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from fusionstream.consumers.kafka import ensure_topics
from fusionstream.consumers.service.supervisor import workers_for
from fusionstream.consumers.settings import Settings


def test_kafka_auto_workers_follow_the_input_topics_partitions(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's topics of 12 partitions with FUSIONSTREAM_PARTITIONS unset (4) got 4 workers on 16 cores."""
    settings = Settings(workers="auto", bootstrap_servers=kafka_bootstrap, video_topic=f"{topic_prefix}.video")
    assert settings.partitions == 4
    assert workers_for(settings, cores=16) == 4, "no input topic yet: the partitions setting"
    asyncio.run(ensure_topics(kafka_bootstrap, [settings.video_topic], partitions=12))
    with caplog.at_level(logging.INFO, logger="fusionstream.consumers.service.supervisor"):
        assert workers_for(settings, cores=16) == 8
    assert f"8 workers for 16 cores and 12 partitions ({settings.video_topic} has them)" in caplog.text
    assert workers_for(settings.model_copy(update={"workers": "3"}), cores=16) == 3


def test_auto_workers_without_a_broker_fall_back_to_the_partitions_setting_quickly() -> None:
    started = time.monotonic()
    assert workers_for(Settings(workers="auto", bootstrap_servers="127.0.0.1:1", partitions=6), cores=16) == 6
    assert time.monotonic() - started < 8
