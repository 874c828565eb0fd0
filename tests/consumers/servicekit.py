"""Running the service against the test broker: settings and topics per test, producing records,
reading topics back, the service in-process (:class:`Running`) or as a subprocess (:class:`ServiceProcess`)."""


from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fusionstream.consumers.engine import open_engine
from fusionstream.consumers.kafka import delete_topics, ensure_topics, make_producer
from fusionstream.consumers.kafka.admin import make_admin
from fusionstream.consumers.report import WindowCensus
from fusionstream.consumers.service import InferenceService, ServiceOptions
from fusionstream.consumers.settings import Settings
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream import wire
from fusionstream.stream.records import Modality, Record
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.units import NS

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
    "fusionstream_text_wait_max_seconds",
    "fusionstream_commits_total",
    "fusionstream_broker_silent_seconds",
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


#: produce() calls running (they may overlap), and whether the first one froze the heap (an in-process
#: service's pipeline may have frozen it already: then thawing it is the pipeline's business).
_producing = [0, False]


async def produce(settings: Settings, records: Iterable[Record | tuple[str, bytes, bytes, int, list]],
                  compression: str | None = None) -> int:
    """Send records (key = stream id, timestamp = event time in ms) or raw (topic, key, value, ms, headers).

    The test process's heap is frozen out of garbage collection meanwhile, as a pipeline freezes the
    service's (fusionstream.consumers.pipeline.core): a full collection walks every object this process
    holds (560,000 in the fuzz test, torch's included), and one in the middle of that test's fast replay
    stopped it for 0.7-2.6 s on a loaded 2-core machine. A source that stops that long is a stream gone
    silent: a caught-up service closes its windows after ``idle_timeout_ms`` and its next records are
    late, rightly for the service, wrongly for a test of good streams.
    """
    if _producing[0] == 0:
        _producing[1] = gc.get_freeze_count() == 0
        gc.freeze()
    _producing[0] += 1
    try:
        return await _produce(settings, records, compression)
    finally:
        _producing[0] -= 1
        if _producing[0] == 0 and _producing[1]:
            gc.unfreeze()


async def _produce(settings: Settings, records: Iterable[Record | tuple[str, bytes, bytes, int, list]],
                   compression: str | None) -> int:
    producer = make_producer(settings.bootstrap_servers, linger_ms=5, compression_type=compression)
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

    def __init__(self, bootstrap: str, topic: str, *, read_committed: bool = False,
                 partitions: int = PARTITIONS) -> None:
        self.topic = topic
        self.partitions = partitions
        self.records: list[ConsumerRecord] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
        )

    async def __aenter__(self) -> Reader:
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, p) for p in range(self.partitions)])
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
        partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
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


@asynccontextmanager
async def admin_session(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for an operator's action in a test (add partitions, delete records), closed after."""
    admin = make_admin(bootstrap, client_id="fusionstream-test-admin")
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


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



@asynccontextmanager
async def serving(settings: Settings, records: list[Record]) -> AsyncIterator[tuple[Running, Reader]]:
    """The settings' topics created and ``records`` produced, then a service running (``running.service``) and
    a reader of its predictions; afterwards the service stopped (if it still runs) and the topics deleted."""
    await ensure_topics(settings.bootstrap_servers, all_topics(settings), PARTITIONS)
    try:
        await produce(settings, records)
        async with Reader(settings.bootstrap_servers, settings.predictions_topic) as reader:
            running = Running(settings)
            await running.__aenter__()
            try:
                yield running, reader
            finally:
                if not running.task.done():
                    running.service.stop()
                    await asyncio.wait({running.task}, timeout=60)
                running._engine.__exit__(None, None, None)
    finally:
        await delete_topics(settings.bootstrap_servers, all_topics(settings))


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



def split(records: list[Record], at_s: float) -> tuple[list[Record], list[Record]]:
    t0 = min(r.t_start_ns for r in records)
    cut = t0 + int(at_s * NS)
    return [r for r in records if r.t_start_ns < cut], [r for r in records if r.t_start_ns >= cut]
