"""`fusionstream serve` against a real broker: every window once, bad input, metrics and health (in-process);
kill -9 at-least-once and exactly-once, and scale-out with a SIGTERM handover (subprocesses).

Input is produced as fast as the broker takes it (no
pacing), so a 4 x 30 s run takes seconds; the aligner's idle timeout is short so the
last windows close promptly once the input ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from test_subscribe import check_api, check_faust, check_tail, read_published  # same folder: shared checks

from fusionstream.consumers.engine import open_engine
from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import ClosedWindow, WindowRunner
from fusionstream.consumers.report import WindowCensus, summarize
from fusionstream.consumers.service import InferenceService, ServiceOptions
from fusionstream.consumers.settings import Settings, default_model_dir
from fusionstream.engines.backends import load_backend
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream import wire
from fusionstream.stream.media import audio_record
from fusionstream.stream.records import Modality, Record
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.units import NS

pytestmark = pytest.mark.kafka

PARTITIONS = 4
DEADLINE_S = 90.0

METRIC_NAMES = (
    "fusionstream_capture_to_publish_seconds_bucket",
    "fusionstream_close_to_prediction_seconds_bucket",
    "fusionstream_queue_seconds_bucket",
    "fusionstream_inference_seconds_bucket",
    "fusionstream_batch_size_bucket",
    "fusionstream_modality_coverage_bucket",
    "fusionstream_records_consumed_total",
    "fusionstream_windows_emitted_total",
    "fusionstream_predictions_published_total",
    "fusionstream_late_records_total",
    "fusionstream_dead_letters_total",
    "fusionstream_consumer_lag",
    "fusionstream_backlog_windows",
    "fusionstream_held_records",
    "fusionstream_commits_total",
)


# -- helpers --------------------------------------------------------------------------------------


def service_settings(bootstrap: str, prefix: str, model_dir: Path, **overrides: Any) -> Settings:
    """Settings of a service on topics and a group of its own; windows close 1 s after input stops."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "video_topic": f"{prefix}.video",
        "audio_topic": f"{prefix}.audio",
        "text_topic": f"{prefix}.text",
        "predictions_topic": f"{prefix}.predictions",
        "deadletter_topic": f"{prefix}.deadletter",
        "group_id": f"{prefix}-service",
        "partitions": PARTITIONS,
        "model_dir": model_dir,
        "metrics_port": 0,
        "idle_timeout_ms": 1000,
        "evict_after_s": 5.0,
        "threads": 1,
    }
    return Settings(**(values | overrides))


def all_topics(settings: Settings) -> list[str]:
    return [settings.video_topic, settings.audio_topic, settings.text_topic, settings.predictions_topic,
            settings.deadletter_topic]


def census_of(settings: Settings) -> WindowCensus:
    spec = ModelSpec.load(settings.model_dir)
    return WindowCensus(settings.window_config(frames_per_window=spec.frames_per_window, sample_rate=spec.sample_rate))


def synthetic(streams: int, seconds: float, seed: int) -> SyntheticAV:
    """Streams whose event time is recent wall-clock time, as a live source's would be."""
    start_ns = (time.time_ns() // NS - int(seconds) - 5) * NS
    return SyntheticAV(SyntheticConfig(streams=streams, seconds=seconds, voices="test", seed=seed, start_ns=start_ns))


def topic_of(settings: Settings, record: Record) -> str:
    return {Modality.VIDEO: settings.video_topic, Modality.AUDIO: settings.audio_topic,
            Modality.TEXT: settings.text_topic}[record.modality]


async def produce(settings: Settings, records: Iterable[Record | tuple[str, bytes, bytes, int, list]]) -> int:
    """Send records (key = stream id, timestamp = event time in ms) or raw (topic, key, value, ms, headers)."""
    producer = make_producer(settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for item in records:
            if isinstance(item, Record):
                topic, key, value = topic_of(settings, item), item.stream_id.encode(), wire.encode(item)
                timestamp_ms, headers = item.t_start_ns // 1_000_000, None
            else:
                topic, key, value, timestamp_ms, headers = item
            futures.append(await producer.send(topic, value, key=key, timestamp_ms=timestamp_ms, headers=headers))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


class Reader:
    """Reads a whole topic from the beginning, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str, *, read_committed: bool = False) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
        )

    async def __aenter__(self) -> Reader:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, p) for p in range(PARTITIONS)])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for tp in sorted(batch):
            self.records.extend(batch[tp])

    async def until(self, done: Callable[[Reader], bool], timeout_s: float = DEADLINE_S,
                    on_wait: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: condition not met after {timeout_s}s ({len(self.records)} records)")
            if on_wait is not None:
                on_wait()
            await self.poll()

    async def to_end(self) -> None:
        """Read everything up to the end of every partition (for read_committed: the last stable offset)."""
        consumer = self._consumer
        partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            positions = [await consumer.position(tp) for tp in partitions]
            if all(position >= ends[tp] for position, tp in zip(positions, partitions, strict=True)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: not at the end after {DEADLINE_S}s")
            await self.poll()

    def windows(self) -> list[tuple[str, int]]:
        return [(p["stream_id"], p["t_start_ns"]) for p in self.values()]

    def values(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]


def covers(expected: set[tuple[str, int]]) -> Callable[[Reader], bool]:
    return lambda reader: expected <= set(reader.windows())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


async def wait_healthy(port: int, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = await asyncio.to_thread(http_get, port, "/healthz")
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"/healthz on port {port} not 200 after {timeout_s}s")
        await asyncio.sleep(0.2)


# -- in-process service ---------------------------------------------------------------------------


class Running:
    """A service running as a task of the current event loop."""

    def __init__(self, settings: Settings, instance_id: str = "test") -> None:
        self.settings = settings
        self.instance_id = instance_id

    async def __aenter__(self) -> InferenceService:
        self._engine = open_engine(self.settings)
        runner, spec = self._engine.__enter__()
        self.service = InferenceService(self.settings, runner, spec,
                                        options=ServiceOptions(instance_id=self.instance_id))
        self.task = asyncio.create_task(self.service.run())
        return self.service

    async def __aexit__(self, *exc: object) -> None:
        try:
            self.service.stop()
            await asyncio.wait_for(self.task, timeout=60)
        finally:
            self._engine.__exit__(None, None, None)


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
            await produce(settings, records)
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
                    assert service.health()[0]
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


class SlowRunner(WindowRunner):
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
            spec = ModelSpec.load(untrained_model)
            with load_backend("onnxruntime", untrained_model, threads=1) as backend:
                service = InferenceService(settings, SlowRunner(backend, spec), spec,
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

REPO_ROOT = Path(__file__).resolve().parents[2]
_ENV_FIELDS = ("bootstrap_servers", "video_topic", "audio_topic", "text_topic", "predictions_topic",
               "deadletter_topic", "group_id", "partitions", "model_dir", "idle_timeout_ms", "evict_after_s",
               "threads", "exactly_once")


class ServiceProcess:
    """`python -m fusionstream serve` with FUSIONSTREAM_* settings; output goes to a log file."""

    def __init__(self, settings: Settings, instance_id: str, log_dir: Path) -> None:
        self.instance_id = instance_id
        self.port = free_port()
        env = {f"FUSIONSTREAM_{name.upper()}": _env_value(getattr(settings, name)) for name in _ENV_FIELDS}
        self.env = {**os.environ, **env, "FUSIONSTREAM_METRICS_PORT": str(self.port),
                    "FUSIONSTREAM_INSTANCE_ID": instance_id, "FUSIONSTREAM_LOG_LEVEL": "INFO"}
        self.log = log_dir / f"serve-{instance_id}-{int(time.monotonic() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "fusionstream", "serve"], cwd=REPO_ROOT,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve {self.instance_id} exited with {self.proc.returncode}:\n{self.tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def health(self) -> dict[str, Any]:
        self.alive()
        return await wait_healthy(self.port)


def _env_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[Settings, str], ServiceProcess]]:
    """Starts service subprocesses; kills any still running at the end, and prints their logs on failure."""
    started: list[ServiceProcess] = []

    def start(settings: Settings, instance_id: str) -> ServiceProcess:
        started.append(ServiceProcess(settings, instance_id, tmp_path).start())
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()
            print(f"--- serve {process.instance_id} ({process.log.name}) ---\n{process.tail(25000)}")


def split(records: list[Record], at_s: float) -> tuple[list[Record], list[Record]]:
    t0 = min(r.t_start_ns for r in records)
    cut = t0 + int(at_s * NS)
    return [r for r in records if r.t_start_ns < cut], [r for r in records if r.t_start_ns >= cut]


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
