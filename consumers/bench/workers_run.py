"""One run of the service through ``W`` supervised worker processes (``fusionstream bench --workers``).

The workers are started by the supervisor of ``serve --workers`` (:class:`Supervisor`, the same code,
stable instance ids ``bench-w<W>-<i>``, static members of one group, the engine threads split between
them), on topics and a group of their own. The bench process only watches from outside, as a user of
the service would: it reads the predictions topic and the dead-letter topic, and each prediction says
when it was published (``t_end_ns`` + ``latency_ms.capture_to_publish``, the worker's wall clock, the
same clock as this process's) and how long after its window closed (``close_to_prediction``).

Records reach the topics only once every worker holds its partitions: with the whole workload produced
beforehand (as the single-process ``kafka`` stage does), the first worker to join would consume alone
until the group rebalanced to the next one, which, at the broker's 0 ms initial rebalance delay and a
1 s heartbeat, is most of a sub-second run. So the workload is produced by another process once the
group is stable, and the clock starts at that process's first send.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionstream.consumers.bench.cameras import produce_live
from fusionstream.consumers.bench.cpu import find_broker, ms_per_window, process_cpu_s
from fusionstream.consumers.bench.delivery import DeliveryProfile, ideal_times
from fusionstream.consumers.bench.kafka_stage import (
    PRODUCER_START_NS,
    _delete,
    _run_settings,
    _steady_windows,
)
from fusionstream.consumers.bench.realtime import Seen, Trial, end_margin_ns
from fusionstream.consumers.bench.workload import NS, Workload
from fusionstream.consumers.producers.publish import publish
from fusionstream.consumers.report import WindowCensus, percentiles
from fusionstream.consumers.service.supervisor import Supervisor
from fusionstream.consumers.settings import Settings
from fusionstream.engines.manifest import Manifest

#: Longest the workers may take to start and hold every partition (W model loads on a busy machine).
STABLE_TIMEOUT_S = 180.0
#: Longest without a new prediction before a run counts as stalled.
STALL_S = 60.0


@dataclass(frozen=True)
class Published:
    """One prediction as read back from the predictions topic."""

    stream_id: str
    t_start_ns: int
    t_end_ns: int
    final: bool
    partition: int
    published_ns: int  # when the worker published it (its wall clock)
    close_ms: float  # window closed → prediction made, in the worker


@dataclass
class Reader:
    """Reads the predictions and dead-letter topics of a run from their beginning, in the background."""

    settings: Settings
    predictions: list[Published] = field(default_factory=list)
    dead_letter_ms: list[int] = field(default_factory=list)  # their timestamps: stamped when dead-lettered
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=None,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                    **self.settings.kafka_security())
        await consumer.start()
        topics = (self.settings.predictions_topic, self.settings.deadletter_topic)
        await consumer.topics()  # metadata of every topic: partitions_for_topic reads it
        consumer.assign([TopicPartition(t, p) for t in topics
                         for p in sorted(consumer.partitions_for_topic(t) or range(self.settings.partitions))])
        self._task = asyncio.create_task(self._read(consumer), name="bench-workers-reader")

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                for tp, messages in batches.items():
                    if tp.topic == self.settings.deadletter_topic:
                        self.dead_letter_ms.extend(m.timestamp for m in messages)
                        continue
                    for message in messages:
                        value = json.loads(message.value)
                        latency = value["latency_ms"]
                        self.predictions.append(Published(
                            value["stream_id"], value["t_start_ns"], value["t_end_ns"], bool(value.get("final", True)),
                            message.partition, value["t_end_ns"] + int(latency["capture_to_publish"] * 1e6),
                            float(latency["close_to_prediction"])))
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@contextmanager
def _children_write_to_stderr() -> Iterator[None]:
    """Workers inherit this process's stdout; their logs would interleave with ``--json`` there."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@dataclass
class Host:
    """The supervisor and its W workers for one run, and the partitions each worker holds."""

    supervisor: Supervisor
    task: asyncio.Task[int]
    assignment: dict[int, list[int]]  # worker index → partitions

    def pids(self) -> list[int]:
        return [view.pid for view in self.supervisor.views if view.pid is not None]

    def cpu_s(self) -> float | None:
        """CPU seconds of every worker process so far (None when one cannot be read)."""
        total = 0.0
        for pid in self.pids():
            seconds = process_cpu_s(pid)
            if seconds is None:
                return None
            total += seconds
        return total

    async def stop(self) -> None:
        self.supervisor.stop()
        await asyncio.gather(self.task, return_exceptions=True)


async def start_host(settings: Settings, workers: int) -> Host:
    """Start ``workers`` supervised workers and return once each holds its share of the partitions."""
    supervisor = Supervisor(settings, workers=workers, instance_id=f"bench-w{workers}", standby=False, poll_s=0.1)
    with _children_write_to_stderr():
        task = asyncio.create_task(supervisor.run(), name="bench-supervisor")
        while not all(view.pid for view in supervisor.views) and not task.done():
            await asyncio.sleep(0.01)
    host = Host(supervisor, task, {})
    deadline = time.monotonic() + STABLE_TIMEOUT_S
    want = set(range(settings.partitions))
    while True:
        if task.done():
            raise RuntimeError(f"the {workers} workers stopped before serving (exit status {task.result()})")
        views = supervisor.views
        held = {v.index: list(v.detail.get("assigned_partitions") or []) for v in views if v.healthy}
        owned = [p for parts in held.values() for p in parts]
        # Stable: every worker healthy, every partition held once, each worker with some (when there are enough).
        if (len(held) == workers and sorted(owned) == sorted(want)
                and all(held[i] for i in held if workers <= len(want))):
            host.assignment = held
            return host
        if time.monotonic() > deadline:
            await host.stop()
            raise RuntimeError(f"the {workers} workers did not hold all {len(want)} partitions within "
                               f"{STABLE_TIMEOUT_S:g} s: {held}")
        await asyncio.sleep(0.05)


def _produce_all(path: Path, settings: Settings, started: Any) -> None:
    """In the producer process: send every pickled record at once; tell the parent when the first went."""
    records = pickle.loads(path.read_bytes())
    started.put(time.time_ns())
    asyncio.run(publish(records, settings, create_topics=False))
    started.put(time.time_ns())


def _first_send(started: Any, producer: Any) -> int:
    """When the producer process sent its first record (it may die before: then say so, never hang)."""
    import queue

    while True:
        try:
            return int(started.get(timeout=0.2))
        except queue.Empty:
            if not producer.is_alive():
                raise RuntimeError(f"the benchmark's producer process failed (exit code {producer.exitcode})") \
                    from None


def _workers_settings(settings: Settings, tag: str, partitions: int) -> Any:
    # Quiet workers: their logs go to this process's stderr, beside the bench's own progress.
    return _run_settings(settings.model_copy(update={"partitions": partitions, "log_level": "WARNING"}), tag)


async def max_rate(settings: Settings, spec: Manifest, workload: Workload, workers: int,
                   partitions: int) -> dict[str, Any]:
    """The workload through ``workers`` workers at full rate: windows/s from the producer's first send to
    the publication of the last steady window's prediction, CPU ms per window of all the workers together
    and of the broker apart, each window's final predictions counted (none missing, none doubled)."""
    run = _workers_settings(settings, f"w{workers}", partitions)
    config = run.settings.model_window_config(spec)
    steady = _steady_windows(workload, config)
    broker = find_broker(run.settings.bootstrap_servers)
    context = multiprocessing.get_context("spawn")
    scratch = tempfile.TemporaryDirectory(prefix="fs-bench-w-")
    path = Path(scratch.name) / "records.pickle"
    path.write_bytes(pickle.dumps(list(workload.records), protocol=pickle.HIGHEST_PROTOCOL))
    host: Host | None = None
    reader = Reader(run.settings)
    try:
        await publish([], run.settings)  # the input topics, with `partitions` each
        host = await start_host(run.settings, workers)
        await reader.start()
        started = context.Queue()
        producer = context.Process(target=_produce_all, args=(path, run.settings, started), name="bench-producer")
        producer.start()
        loop = asyncio.get_running_loop()
        start_ns = await loop.run_in_executor(None, _first_send, started, producer)
        cpu0, broker0 = host.cpu_s(), broker.cpu_s()
        finals: dict[tuple[str, int], int] = {}
        seen, last_change = 0, time.monotonic()
        while not steady <= finals.keys():
            await asyncio.sleep(0.01)
            for p in reader.predictions[seen:]:
                if p.final:
                    finals[(p.stream_id, p.t_start_ns)] = finals.get((p.stream_id, p.t_start_ns), 0) + 1
            if len(reader.predictions) != seen:
                seen, last_change = len(reader.predictions), time.monotonic()
            failed = producer.exitcode not in (None, 0)
            if time.monotonic() - last_change > STALL_S or host.task.done() or failed:
                raise RuntimeError(f"{workers} workers stalled: {len(steady & finals.keys())} of {len(steady)} "
                                   f"windows published ({seen} predictions read; producer exit {producer.exitcode})")
        cpu1, broker1 = host.cpu_s(), broker.cpu_s()
        await loop.run_in_executor(None, producer.join)
        end_ns = max(p.published_ns for p in reader.predictions[:seen] if (p.stream_id, p.t_start_ns) in steady)
        produced_ns = started.get() if producer.exitcode == 0 else None
        counted = sum(1 for p in reader.predictions[:seen] if p.published_ns <= end_ns)
        owner = {part: index for index, parts in host.assignment.items() for part in parts}
        by_worker = [0] * workers
        for p in reader.predictions[:seen]:
            if p.final and (p.stream_id, p.t_start_ns) in steady:
                by_worker[owner[p.partition]] += 1
        span_s = (end_ns - start_ns) / NS
        times = [finals.get(key, 0) for key in steady]
        return {
            "workers": workers, "windows": len(steady), "seconds": round(span_s, 3),
            "windows_per_s": round(len(steady) / span_s, 1) if span_s > 0 else 0.0,
            "cpu_ms_per_window": ms_per_window(None if cpu0 is None or cpu1 is None else cpu1 - cpu0, counted),
            "broker_cpu_ms_per_window": ms_per_window(
                None if broker0 is None or broker1 is None else broker1 - broker0, counted),
            "missing": sum(1 for n in times if n == 0), "duplicated": sum(1 for n in times if n > 1),
            "finals": sum(times), "windows_by_worker": by_worker,
            "partitions_by_worker": [sorted(host.assignment.get(i, [])) for i in range(workers)],
            "producer_seconds": None if produced_ns is None else round((produced_ns - start_ns) / NS, 3),
        }
    finally:
        await reader.stop()
        if host is not None:
            await host.stop()
        scratch.cleanup()
        await _delete(run)


async def live_trial(settings: Settings, spec: Manifest, workload: Workload, workers: int, partitions: int,
                     streams: int, *, seconds: float, warmup_s: float, bound_ms: float, delivery: DeliveryProfile,
                     revisions: bool | None) -> Trial:
    """``streams`` live streams delivered by ``delivery`` (another process, as cameras are) through
    ``workers`` workers. Latency: window closed → prediction published (``close_to_prediction`` of each
    prediction: the broker's acknowledgement is not seen from outside the workers). Intake lag: how much
    later each window closed than the same deliveries close it through an aligner alone (the floor), which
    is what records fetched late delay. What users see: window end → first and → final prediction
    published, from the predictions' own publication times."""
    if revisions is not None:
        settings = settings.model_copy(update={"revisions": revisions})
    run = _workers_settings(settings, f"wlive{workers}", partitions)
    config = run.settings.model_window_config(spec)
    census = WindowCensus(config)
    scratch = tempfile.TemporaryDirectory(prefix="fs-bench-w-")
    path = Path(scratch.name) / "schedule.pickle"
    host: Host | None = None
    reader = Reader(run.settings)
    try:
        await publish([], run.settings)
        host = await start_host(run.settings, workers)
        await reader.start()
        start_ns = time.time_ns() + PRODUCER_START_NS
        records = list(census.watch(workload.cloned(streams, start_ns, seconds)))
        span = (start_ns + int(warmup_s * NS), records[-1].t_start_ns - end_margin_ns(config))
        schedule = delivery.schedule(records)
        del records
        path.write_bytes(pickle.dumps(schedule, protocol=pickle.HIGHEST_PROTOCOL))
        producer = multiprocessing.get_context("spawn").Process(target=produce_live, args=(path, run.settings),
                                                                name="bench-cameras")
        producer.start()
        await asyncio.get_running_loop().run_in_executor(None, producer.join)
        if producer.exitcode != 0:
            raise RuntimeError(f"the benchmark's producer process failed (exit code {producer.exitcode})")
        finals: set[tuple[str, int]] = set()
        seen, last_change = 0, time.monotonic()
        while len(finals) < len(census.expected) and time.monotonic() - last_change < STALL_S / 4:
            await asyncio.sleep(0.02)
            finals.update((p.stream_id, p.t_start_ns) for p in reader.predictions[seen:] if p.final)
            if len(reader.predictions) != seen:
                seen, last_change = len(reader.predictions), time.monotonic()
        predictions, dead_ms = list(reader.predictions), list(reader.dead_letter_ms)
    finally:
        await reader.stop()
        if host is not None:
            await host.stop()
        await _delete(run)
    try:
        ideal = ideal_times(schedule, config)
    finally:
        scratch.cleanup()
    return _trial(predictions, dead_ms, ideal, span, config.window_ns, streams, len(census.expected), bound_ms,
                  bool(run.settings.revisions), delivery.name)


def _trial(predictions: list[Published], dead_ms: list[int], ideal: Any, span: tuple[int, int], window_ns: int,
           streams: int, expected: int, bound_ms: float, revisions: bool, delivery: str) -> Trial:
    seen = Seen()
    latencies: list[float] = []
    lags: list[float] = []
    for p in sorted(predictions, key=lambda p: p.published_ns):
        timed = span[0] <= p.t_start_ns < span[1]
        if seen.saw(p, p.published_ns, timed) and timed:  # type: ignore[arg-type]  # a Prediction's fields
            latencies.append(p.close_ms)
            ideal_close = ideal.final.get((p.stream_id, p.t_start_ns))
            if ideal_close is not None:
                lags.append(max(0.0, (p.published_ns - p.close_ms * 1e6 - ideal_close) / 1e6))
    keys = [key for key in ideal.final if span[0] <= key[1] < span[1]]
    floor = {"end_to_first_ms": percentiles([(ideal.first[k] - k[1] - window_ns) / 1e6 for k in keys]),
             "end_to_final_ms": percentiles([(ideal.final[k] - k[1] - window_ns) / 1e6 for k in keys])}
    dead = sum(1 for ms in dead_ms if ms * 1_000_000 >= span[0])
    counts = seen.counts | {"dead_letters": dead, "dead_letters_total": len(dead_ms)}
    return Trial(streams, expected, seen.windows, dead, percentiles(latencies), percentiles(lags), bound_ms,
                 len(latencies), percentiles(seen.first_ms), percentiles(seen.final_ms), counts, revisions, delivery,
                 floor)


__all__ = ["Host", "Published", "Reader", "live_trial", "max_rate", "start_host"]
