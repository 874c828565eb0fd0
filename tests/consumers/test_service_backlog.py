"""Reading a backlog whose partitions hold streams with other clocks one after the other (a live stream's
records, then a file replayed with last January's event times): nothing is late (docs/predictions.md,
"Reading a backlog"), against a real broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from servicekit import Reader, Running, all_topics, census_of, covers, produce, service_settings, synthetic

from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.settings import default_model_dir
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig

pytestmark = pytest.mark.kafka


def test_a_backlog_of_streams_with_other_clocks_is_read_without_late_records(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = (default_model_dir() / "model.json").is_file()
    # One partition, so that every stream shares each topic's log; the service has its own group.
    settings = service_settings(kafka_bootstrap, topic_prefix, default_model_dir() if shipped else untrained_model,
                                partitions=1, threads=0)
    live = synthetic(streams=2, seconds=20, seed=31)  # event times of the last half minute
    replayed = SyntheticAV(SyntheticConfig(streams=2, seconds=20, seed=32, voices="test", stream_prefix="file"))
    assert replayed.config.start_ns < live.config.start_ns - 10**16  # months older
    census = census_of(settings)
    records = list(census.watch(live.records())) + list(census.watch(replayed.records()))

    async def scenario() -> tuple[Reader, Reader]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), 1)
        try:
            await produce(settings, records)  # all written before the service starts: a backlog
            async with Reader(kafka_bootstrap, settings.predictions_topic, partitions=1) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic, partitions=1) as dead:
                async with Running(settings):
                    await reader.until(covers(census.expected))
                await reader.to_end()
                await dead.to_end()
            return reader, dead
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead = asyncio.run(scenario())
    reasons = Counter(dict(record.headers).get("fs.reason", b"?").decode() for record in dead.records)
    assert dead.records == [], f"{len(dead.records)} dead letters reading a backlog: {dict(reasons)}"
    windows = reader.windows()
    assert set(windows) == census.expected and len(windows) == len(set(windows))
    by_stream = Counter(stream_id for stream_id, _ in windows)
    assert set(by_stream) == {"cam-00", "cam-01", "file-00", "file-01"}
