"""`fusionstream serve` against a real broker: every window once, bad input, metrics and health (in-process);
kill -9 at-least-once and exactly-once, and scale-out with a SIGTERM handover (subprocesses).

Input is produced as fast as the broker takes it (no
pacing), so a 4 x 30 s run takes seconds; the aligner's idle timeout is short so the
last windows close promptly once the input ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from servicekit import (
    DEADLINE_S,
    METRIC_NAMES,
    PARTITIONS,
    Reader,
    Running,
    ServiceProcess,
    all_topics,
    census_of,
    covers,
    free_port,
    http_get,
    produce,
    service_settings,
    split,
    synthetic,
    wait_healthy,
)
from test_subscribe import check_api, check_faust, check_tail, read_published  # same folder: shared checks

from fusionstream.consumers.kafka import delete_topics, ensure_topics
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import ClosedWindow, Runner
from fusionstream.consumers.report import summarize
from fusionstream.consumers.service import InferenceService, ServiceOptions
from fusionstream.consumers.settings import default_model_dir
from fusionstream.engines.backends import open_runtime
from fusionstream.stream import wire
from fusionstream.stream.media import audio_record
from fusionstream.stream.records import Modality, Record
from fusionstream.units import NS

pytestmark = pytest.mark.kafka


pytestmark = pytest.mark.kafka

def test_kafka_service_predicts_every_window_exactly_once_with_metrics_and_health(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, tmp_path: Path
) -> None:
    shipped = (default_model_dir() / "model.json").is_file()
    port = free_port()
    settings = service_settings(kafka_bootstrap, topic_prefix, default_model_dir() if shipped else untrained_model,
                                metrics_port=port, threads=0)
    source = synthetic(streams=4, seconds=30, seed=4242)
    census = census_of(settings)
    records = list(census.watch(source.records()))

    async def scenario() -> tuple[Reader, Reader, dict[str, Any], str, float]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, records, compression="snappy")  # franz-go's default: it once stopped serve
            started = time.monotonic()
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
                async with Running(settings) as service:
                    health = await wait_healthy(port)
                    await reader.until(covers(census.expected))
                    elapsed = time.monotonic() - started
                    # Let the commit loop refresh the gauges once more, then scrape.
                    await asyncio.sleep(0.5)
                    status, body = await asyncio.to_thread(http_get, port, "/metrics")
                    assert status == 200
                    assert service.health()[0] and service.health()[1].get("broker") == "answering"
                await reader.to_end()
                await dead.to_end()
            with pytest.raises(OSError):
                await asyncio.to_thread(http_get, port, "/healthz")  # the server stopped with the service
            return reader, dead, health, body.decode(), elapsed
        except BaseException:
            await delete_topics(kafka_bootstrap, all_topics(settings))
            raise

    reader, dead, health, metrics, elapsed = asyncio.run(scenario())
    try:
        # The subscribers read this live run's predictions: the API, `fusionstream tail`, the Faust app.
        published = read_published(kafka_bootstrap, settings.predictions_topic)
        assert len(published.values) == len(reader.values())
        check_api(published)
        check_tail(published)
        check_faust(published, f"{topic_prefix}-faust", tmp_path / "faust.log")
    finally:
        asyncio.run(delete_topics(kafka_bootstrap, all_topics(settings)))

    windows = reader.windows()
    duplicates = [w for w, n in Counter(windows).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} windows predicted twice, e.g. {duplicates[:3]}"
    assert set(windows) == census.expected and len(windows) >= 4 * 59
    assert dead.records == [], "good input, read as a backlog, has no late records"
    for record, value in zip(reader.records, reader.values(), strict=True):
        assert record.key == value["stream_id"].encode()
        assert record.timestamp == value["t_end_ns"] // 1_000_000
        assert value["window_id"] == f"{value['stream_id']}@{value['t_start_ns']}"
        assert value["latency_ms"]["capture_to_publish"] > 0 and value["model_version"]
    assert health["state"] == "running" and health["assigned_partitions"] == list(range(PARTITIONS))
    for name in METRIC_NAMES:
        assert name in metrics, f"{name} missing from /metrics"
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
    assert float(samples["fusionstream_predictions_published_total"]) == len(windows)
    # Read as a backlog, the transcript teaches no budget (it is late because the service is behind), or,
    # once caught up, one of the synthetic captions' promptness: never the 10 s cap.
    assert 0 <= float(samples["fusionstream_text_wait_max_seconds"]) < 10
    if shipped:
        truth_summary = summarize(
            [SimpleNamespace(**(v | {"latency_ms": v["latency_ms"]["close_to_prediction"]})) for v in reader.values()],
            seconds=elapsed, truth=source.truth, expected=census.expected,
        )
        assert truth_summary["accuracy"] >= 0.95, truth_summary
    print(f"{len(windows)} windows in {elapsed:.1f}s from service start; shipped model: {shipped}")


def test_kafka_service_dead_letters_bad_input_with_its_reason_and_keeps_going(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    source = synthetic(streams=1, seconds=4, seed=7)
    census = census_of(settings)
    good = list(census.watch(source.records()))
    t0 = good[0].t_start_ns
    t0_ms = t0 // 1_000_000
    frame = next(r for r in good if r.modality is Modality.VIDEO)
    text = next(r for r in good if r.modality is Modality.TEXT)
    jpeg, utf8 = wire.encode(frame), wire.encode(text)
    corrupt = frame.payload[: len(frame.payload) // 3] + b"\xff\xd9"  # a valid envelope around a broken JPEG
    rate0 = b'{"sample_rate":0,"channels":1}'
    s = settings
    bad = {
        "bad-jpeg": (s.video_topic, wire.HEADER.pack(b"FS", 1, 1, 1, 0, 3, 0, t0, t0 + 1, 0, len(corrupt)) + b"bad"
                     + corrupt),
        "truncated": (s.video_topic, jpeg[:-10]),
        "unsupported-version": (s.video_topic, jpeg[:2] + b"\x07" + jpeg[3:]),
        "bad-sample-rate": (s.audio_topic, wire.HEADER.pack(b"FS", 1, 2, 3, 0, 3, 0, t0, t0, len(rate0), 2) + b"bad"
                            + rate0 + bytes(2)),
        "bad-utf8": (s.text_topic, utf8[:-2] + b"\xc3\x28"),
        # Sound, but keyed "bad" while its stream id is the stream's: it would land on another partition.
        "key-mismatch": (s.text_topic, utf8),
    }
    trace = [("trace-id", b"abc-123")]
    raw = [(topic, b"bad", value, t0_ms, trace) for topic, value in bad.values()]
    stream_id = source.stream_ids[0]
    # Far in the past: produced once the stream's first windows are published, so they are closed.
    late = audio_record(stream_id, 10**6, t0 - 3600 * NS, np.zeros(640, np.float32), 16_000)

    async def scenario() -> tuple[Reader, Reader, InferenceService]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, good[: len(good) // 2] + raw + good[len(good) // 2 :])
            async with Reader(kafka_bootstrap, s.predictions_topic) as predictions, \
                    Reader(kafka_bootstrap, s.deadletter_topic) as dead:
                async with Running(settings) as service:
                    await predictions.until(lambda r: len(r.records) >= 2)
                    await produce(settings, [late])
                    await predictions.until(covers(census.expected))
                    await dead.until(lambda r: len(r.records) >= len(bad) + 1)
                await predictions.to_end()
                await dead.to_end()
            return predictions, dead, service
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    predictions, dead, service = asyncio.run(scenario())

    reasons = {}
    for record in dead.records:
        headers = dict(record.headers)
        reason = headers["fs.reason"].decode()
        reasons[reason] = record
        assert headers["fs.detail"] and headers["fs.topic"].decode() == record_topic(bad, reason, s.audio_topic)
        offset = int(headers["fs.offset"])
        assert offset >= 0 and 0 <= int(headers["fs.partition"]) < PARTITIONS
        if reason != "late":
            assert record.key == b"bad" and record.value == bad[reason][1]
            assert headers["trace-id"] == b"abc-123", "the original headers are kept"
    assert sorted(reasons) == sorted([*bad, "late"])
    assert reasons["late"].value == wire.encode(late) and reasons["late"].key == stream_id.encode()
    assert set(predictions.windows()) == census.expected and len(predictions.records) == len(census.expected)
    registry = service.metrics.registry
    for reason in [*bad, "late"]:
        assert registry.get_sample_value("fusionstream_dead_letters_total", {"reason": reason}) == 1
    assert registry.get_sample_value("fusionstream_late_records_total") == 1


class SlowRunner(Runner):
    """A real runner made slower than the input, so inference falls behind."""

    delay_s = 0.05

    def run(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
        time.sleep(self.delay_s)
        return super().run(closed)


def test_kafka_service_pauses_fetching_when_inference_falls_behind(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model, max_batch=2, queue_windows=4)
    census = census_of(settings)
    records = list(census.watch(synthetic(streams=2, seconds=20, seed=5).records()))

    async def scenario() -> tuple[Reader, Reader, InferenceService]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, records)
            with open_runtime("onnxruntime", untrained_model, threads=1) as runtime:
                service = InferenceService(settings, SlowRunner(runtime), runtime.manifest,
                                           options=ServiceOptions(instance_id="slow", max_records=50))
                task = asyncio.create_task(service.run())
                try:
                    async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, \
                            Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
                        await reader.until(covers(census.expected))
                        await reader.to_end()
                        await dead.to_end()
                finally:
                    service.stop()
                    await asyncio.wait_for(task, timeout=60)
            return reader, dead, service
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, service = asyncio.run(scenario())

    assert sorted(reader.windows()) == sorted(census.expected), "every window once, however slow the engine"
    assert service.metrics.registry.get_sample_value("fusionstream_fetch_pauses_total") > 0
    # Waiting for the engine is not silence of the input: no window closes early, no record is late.
    assert dead.records == []
    end_ns = max(r.t_end_ns for r in records)
    timeouts = [v["t_start_ns"] for v in reader.values() if v["closed_by"] == "timeout"]
    assert all(t >= end_ns - 2 * NS for t in timeouts), "only the windows at the end of the input time out"


def record_topic(bad: dict[str, tuple[str, bytes]], reason: str, late_topic: str) -> str:
    return late_topic if reason == "late" else bad[reason][0]


# -- the service as a subprocess: crash, exactly-once, scale-out -----------------------------------


@pytest.mark.parametrize("exactly_once", [False, True], ids=["kafka-at-least-once", "kafka-exactly-once"])
def test_kafka_service_killed_mid_stream_loses_no_window(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess],
    exactly_once: bool,
) -> None:
    # A longer idle timeout keeps the windows at the cut open while the service is killed.
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model, exactly_once=exactly_once,
                                idle_timeout_ms=2000)
    census = census_of(settings)
    records = list(census.watch(synthetic(streams=4, seconds=12, seed=11).records()))
    first, second = split(records, 6.0)

    async def scenario() -> tuple[Reader, Reader, int, int]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            await produce(settings, first)
            async with Reader(kafka_bootstrap, settings.predictions_topic, read_committed=exactly_once) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic, read_committed=exactly_once) as dead:
                crashing = processes(settings, "crashy")
                await reader.until(lambda r: len(r.records) >= 10, on_wait=crashing.alive)
                await asyncio.sleep(0.6)  # a few commits happen while the windows at the cut are open
                crashing.kill()  # kill -9: no flush, no commit, maybe an open transaction left behind
                before = len(reader.records)
                await produce(settings, second)
                restarted = processes(settings, "crashy")  # same instance id: fences the dead one
                await reader.until(covers(census.expected), on_wait=restarted.alive)
                rc = restarted.terminate()
                await reader.to_end()
                await dead.to_end()
            return reader, dead, before, rc
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, before, rc = asyncio.run(scenario())

    windows = reader.windows()
    assert rc == 0
    assert 10 <= before < len(census.expected), "the kill came mid-stream"
    assert set(windows) == census.expected, f"missing {sorted(census.expected - set(windows))[:5]}"
    assert dead.records == [], "re-read records are not dead-lettered as late"
    duplicates = sum(n - 1 for n in Counter(windows).values())
    if exactly_once:
        assert duplicates == 0, f"read_committed saw {duplicates} duplicate predictions"
    print(f"{len(census.expected)} windows, {duplicates} duplicates after the crash; {before} before it")


def test_kafka_scale_out_splits_partitions_and_hands_them_over_on_sigterm(
    kafka_bootstrap: str, topic_prefix: str, untrained_model: Path, processes: Callable[..., ServiceProcess]
) -> None:
    settings = service_settings(kafka_bootstrap, topic_prefix, untrained_model)
    census = census_of(settings)
    records = list(census.watch(synthetic(streams=4, seconds=16, seed=12).records()))
    first, second = split(records, 6.0)

    async def paced(items: list[Record], speed: float) -> None:
        """Produce like a live source running ``speed`` times faster than real time."""
        t0, started = items[0].t_start_ns, time.monotonic()
        for chunk_start in range(0, len(items), 50):
            chunk = items[chunk_start : chunk_start + 50]
            due = (chunk[0].t_start_ns - t0) / NS / speed - (time.monotonic() - started)
            if due > 0:
                await asyncio.sleep(due)
            await produce(settings, chunk)

    async def scenario() -> tuple[Reader, Reader, list[dict[str, Any]], dict[str, Any], int]:
        await ensure_topics(kafka_bootstrap, all_topics(settings), PARTITIONS)
        try:
            a, b = processes(settings, "a"), processes(settings, "b")
            async with Reader(kafka_bootstrap, settings.predictions_topic) as reader, \
                    Reader(kafka_bootstrap, settings.deadletter_topic) as dead:
                deadline = time.monotonic() + DEADLINE_S
                while True:  # both joined and the group settled: each owns some partitions
                    split_health = [await a.health(), await b.health()]
                    owned = [set(h["assigned_partitions"]) for h in split_health]
                    if all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == set(range(PARTITIONS)):
                        break
                    assert time.monotonic() < deadline, split_health
                    await asyncio.sleep(0.3)
                await paced(first, speed=4)
                producing = asyncio.create_task(paced(second, speed=4))
                rc = a.terminate()  # mid-stream: its open windows are completed by b
                await producing
                await reader.until(covers(census.expected), on_wait=b.alive)
                after = await b.health()
                await reader.to_end()
                await dead.to_end()
            return reader, dead, split_health, after, rc
        finally:
            await delete_topics(kafka_bootstrap, all_topics(settings))

    reader, dead, split_health, after, rc = asyncio.run(scenario())

    assert rc == 0
    assert after["assigned_partitions"] == list(range(PARTITIONS)), "b took over a's partitions"
    windows = reader.windows()
    assert set(windows) == census.expected, f"missing {sorted(census.expected - set(windows))[:5]}"
    duplicates = sum(n - 1 for n in Counter(windows).values())
    assert duplicates == 0, "a graceful handover publishes each window once"
    assert dead.records == [], "records re-read by the new owner are not dead-lettered"
    print(f"split {[h['assigned_partitions'] for h in split_health]}; {len(windows)} windows")
