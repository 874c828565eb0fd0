"""Records stamped ahead of the wall clock (a source whose clock is wrong).

One audio chunk stamped a year ahead carried its stream's watermark there; the window holding it was published
with a timestamp a year ahead, which the broker refused (InvalidTimestampError), and `serve` stopped, and stopped
again on every restart on the same record. Now a record beyond ``max_future_ms`` is a ``future`` dead letter, and a
prediction is never stamped ahead of the time it is published."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from servicekit import PARTITIONS, Reader, produce, service_settings, serving
from test_poison_windows import RATE

from fusionstream.consumers.embedded import run_embedded
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.settings import model_geometry
from fusionstream.engines.backends import open_runtime
from fusionstream.stream import wire
from fusionstream.stream.media import audio_record, progress_record, text_record
from fusionstream.stream.records import Modality
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS
from tests.onnxgraphs import write_model

YEAR_NS = 365 * 86400 * NS


def _chunks(stream: str, t0: int, seconds: float) -> list:
    return [audio_record(stream, i, t0 + i * 100 * MS, np.full(10, 0.1 * (i % 7), np.float32), RATE)
            for i in range(int(seconds * 10))]


def test_a_record_beyond_max_future_is_dead_lettered_and_its_stream_goes_on(tmp_path: Path) -> None:
    write_model(tmp_path, audio={"sample_rate": RATE}, text=True)
    t0 = (time.time_ns() // NS - 30) * NS  # live: the last 6 s of the stream end well before now
    records = sorted(_chunks("s", t0, 6.0), key=lambda r: r.t_start_ns)
    ahead = [audio_record("s", 900, t0 + 2 * NS + 10 * NS + 30 * NS, np.zeros(10, np.float32), RATE),  # +10 s
             progress_record("s", Modality.TEXT, 901, t0 + YEAR_NS),
             text_record("s", 902, t0 + YEAR_NS, t0 + YEAR_NS + 400 * MS, "one")]
    fed = records[:20] + ahead + records[20:]

    async def go() -> tuple[list, list]:
        with open_runtime("onnxruntime", tmp_path) as runtime:
            frames, rate = model_geometry(runtime.manifest)
            config = WindowConfig(frames_per_window=frames, sample_rate=rate, max_future_ns=5 * NS)
            async with Pipeline(Runner(runtime), config) as pipeline:
                result = await run_embedded(pipeline, fed, realtime=False)
            return result.predictions, result.dead_letters

    predictions, dead = asyncio.run(asyncio.wait_for(go(), 60))
    assert [d.reason for d in dead] == ["future"] * 3, [(d.reason, d.detail) for d in dead]
    seconds = re.search(r"(\d+\.\d{3}) s ahead of the service's clock, more than max_future_ms \(5000 ms\)",
                        dead[0].detail)
    assert seconds and 8 < float(seconds[1]) < 13, dead[0].detail  # 12 s ahead when it was made
    assert "365 days ahead" in dead[1].detail and dead[2].stream_id == "s"
    # None late: the stream's windows cover its 6 s, as without the records from the future.
    starts = sorted((p.t_start_ns - t0) // MS for p in predictions)
    assert starts[0] <= 0 and starts[-1] >= 5500 and len(starts) == len(set(starts)) >= 12, starts
    assert all(p.t_end_ns < time.time_ns() for p in predictions)


def test_kafka_a_prediction_is_never_stamped_ahead_of_its_publishing(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path
) -> None:
    """A stream ten minutes ahead (within max_future_ms) on a predictions topic whose broker refuses timestamps
    more than a minute ahead; a record a year ahead beside it. The service publishes and goes on."""
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    now = time.time_ns()
    base = (now // NS - 20) * NS
    good = [text_record("good", i, base + i * 500 * MS, base + i * 500 * MS + 300 * MS, "two") for i in range(16)]
    ahead = [text_record("ahead", i, now + 600 * NS + i * 500 * MS, now + 600 * NS + i * 500 * MS + 300 * MS, "one")
             for i in range(3)]
    year = text_record("year", 0, now + YEAR_NS, now + YEAR_NS + 300 * MS, "three")
    # Their Kafka timestamps are now (a broker refuses an input record stamped far ahead, too).
    raw = [(settings.text_topic, r.stream_id.encode(), wire.encode(r), now // 1_000_000, None) for r in [*ahead, year]]

    async def scenario() -> tuple[list[dict], list, bool, list[int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.predictions_topic, PARTITIONS, 1,
                                                topic_configs={"message.timestamp.after.max.ms": "60000"})])
        finally:
            await admin.close()
        async with serving(settings, good) as (running, reader), \
                Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
            await produce(settings, raw)
            await reader.until(lambda r: {"good", "ahead"} <= {s for s, _ in r.windows()})
            await dead.until(lambda d: len(d.records) >= 1)
            await asyncio.sleep(1.0)
            await reader.poll(500)
            stamps = [r.timestamp for r in reader.records]
            return reader.values(), dead.records, running.task.done(), stamps

    values, dead, stopped, stamps = asyncio.run(scenario())
    assert not stopped, "the service went on"
    assert [dict(r.headers)["fs.reason"] for r in dead] == [b"future"]
    ahead_windows = [v for v in values if v["stream_id"] == "ahead"]
    assert ahead_windows and all(v["t_end_ns"] > now + 590 * NS for v in ahead_windows)
    # Stamped when published (before this test's end), not at their windows' ends ten minutes ahead.
    assert max(stamps) < time.time_ns() // 1_000_000
    assert {v["stream_id"] for v in values} == {"good", "ahead"}
