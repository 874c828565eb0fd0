"""The service stages of ``fusionstream bench``: the real consumer loop against a real broker.

Each run gets topics and a consumer group of its own (``bench-<id>.*``, deleted after), so a
benchmark never touches production topics or another run's data.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter

from fusionstream.consumers.bench.cameras import produce_live
from fusionstream.consumers.bench.cpu import CpuMeter, find_broker, ms_per_window
from fusionstream.consumers.bench.delivery import REALISTIC, DeliveryProfile, ideal_times
from fusionstream.consumers.bench.realtime import Seen, Trial, end_margin_ns
from fusionstream.consumers.bench.stages import StageResult
from fusionstream.consumers.bench.workload import NS, Workload
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.producers.publish import publish
from fusionstream.consumers.report import WindowCensus, percentiles
from fusionstream.consumers.service.service import InferenceService, ServiceOptions
from fusionstream.consumers.settings import Settings
from fusionstream.engines.manifest import Manifest
from fusionstream.stream.windows import WindowConfig

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

log = logging.getLogger(__name__)

#: Longest a stage waits for its last prediction before giving up (a stalled service).
STALL_S = 120.0
#: The live producer process's head start: it imports, connects, then waits for the first record's time.
PRODUCER_START_NS = 3 * NS
#: Seconds at the end of each stream whose windows the maximum-rate stage does not time.
TAIL_S = 3.0


async def broker_reachable(settings: Settings, timeout_s: float = 5.0) -> bool:
    """Whether a broker answers at ``settings.bootstrap_servers`` (the kafka stages need one)."""
    from fusionstream.consumers.kafka import make_admin

    admin = make_admin(settings.bootstrap_servers, settings.kafka_security(), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except Exception:
        return False
    finally:
        await admin.close()
    return True


@dataclass
class _Run:
    settings: Settings
    topics: list[str]


def _run_settings(settings: Settings, tag: str) -> _Run:
    prefix = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    updated = settings.model_copy(
        update={
            "video_topic": f"{prefix}.video",
            "audio_topic": f"{prefix}.audio",
            "text_topic": f"{prefix}.text",
            "predictions_topic": f"{prefix}.predictions",
            "deadletter_topic": f"{prefix}.deadletter",
            "group_id": prefix,
            "metrics_port": 0,
        }
    )
    topics = [getattr(updated, f"{name}_topic") for name in ("video", "audio", "text", "predictions", "deadletter")]
    return _Run(updated, topics)


def kafka_max_rate(
    make_runner: Callable[[], Runner], spec: Manifest, settings: Settings, workload: Workload, *,
    on_span: Callable[[str], None] | None = None,
) -> StageResult:
    """Produce the whole workload first, then time the service consuming it: from its first
    fetched record to the broker acknowledging the last prediction of the steady part.

    A stream's last windows close only when its idle timeout passes (the input simply
    stops): the windows ending within :data:`TAIL_S` of a stream's end are left out of the
    count and the clock, as they would never wait on a live stream.

    CPU time is counted over the same span: this process's (the service, its engine and decode
    threads), and the broker's when it runs on this machine (``broker_cpu_ms_per_window``, None
    otherwise), each per prediction acknowledged within the span. ``on_span`` is told ``"start"`` and
    ``"end"`` there, on the event loop (``scripts/profile_service.py`` profiles just that span).
    """
    return asyncio.run(_max_rate(make_runner, spec, settings, workload, on_span))


async def _max_rate(
    make_runner: Callable[[], Runner], spec: Manifest, settings: Settings, workload: Workload,
    on_span: Callable[[str], None] | None = None,
) -> StageResult:
    run = _run_settings(settings, "max")
    config = run.settings.model_window_config(spec)
    steady = _steady_windows(workload, config)
    try:
        await publish(workload.records, run.settings)
        latencies: list[float] = []
        acknowledged: set[tuple[str, int]] = set()
        meter = CpuMeter(find_broker(run.settings.bootstrap_servers))
        counted = [0, 0]  # predictions acknowledged: in all, and up to the last one timed

        def on_fetched(_age_ms: float) -> None:
            if not meter.started:  # the first fetched records: where the clock starts
                if on_span is not None:
                    on_span("start")
                meter.start()

        def on_ack(prediction: Prediction, ms: float) -> None:
            key = (prediction.stream_id, prediction.t_start_ns)
            counted[0] += 1
            if key in steady:
                latencies.append(ms)
                acknowledged.add(key)
                if len(latencies) == len(steady):  # the last one timed (what _serve_until waits for)
                    meter.stop()
                    counted[1] = counted[0]
                    if on_span is not None:
                        on_span("end")

        service = _service(run.settings, make_runner, spec, on_ack, on_fetched)
        try:
            first_fetch, last_ack = await _serve_until(service, latencies, len(steady))
        except RuntimeError as exc:
            first = min(start for _, start in steady)
            missing = ", ".join(f"{sid}@+{(start - first) / NS:g}s" for sid, start in sorted(steady - acknowledged)[:8])
            dead = int(_counted(service.metrics.dead_letters))
            raise RuntimeError(f"{exc}; never acknowledged: {missing or 'none'}; dead letters: {dead}") from exc
    finally:
        await _delete(run)
    extra = {"windows_left_out_at_the_end": len(_all_windows(workload, config)) - len(steady),
             "broker_cpu_ms_per_window": ms_per_window(meter.broker_s, counted[1])}
    return StageResult("kafka", len(latencies), last_ack - first_fetch, latencies, extra,
                       cpu_seconds=meter.process_s, cpu_windows=counted[1])


def _all_windows(workload: Workload, config: WindowConfig) -> set[tuple[str, int]]:
    census = WindowCensus(config)
    for _ in census.watch(workload.records):
        pass
    return census.expected


def _steady_windows(workload: Workload, config: WindowConfig) -> set[tuple[str, int]]:
    ends: dict[str, int] = {}
    for record in workload.records:
        ends[record.stream_id] = max(ends.get(record.stream_id, 0), record.t_end_ns)
    cut = int(TAIL_S * NS)
    return {
        (sid, start) for sid, start in _all_windows(workload, config) if start + config.window_ns <= ends[sid] - cut
    }


def kafka_realtime(
    make_runner: Callable[[], Runner],
    spec: Manifest,
    settings: Settings,
    workload: Workload,
    streams: int,
    *,
    seconds: float,
    warmup_s: float,
    bound_ms: float,
    delivery: DeliveryProfile = REALISTIC,
    revisions: bool | None = None,
    floor: bool = False,
) -> tuple[StageResult, Trial]:
    """``streams`` live streams delivered as ``delivery`` says while the service runs (revisions on or
    off, default: the settings'). Latency is window closed → prediction acknowledged by the broker,
    after the warm-up; beside it what users see, window end → first and → final prediction
    acknowledged. The trial is sustained when every window's final prediction was acknowledged,
    nothing was dead-lettered, and after the warm-up both that latency's p99 and the p99 intake
    lag (when the producer was due to send a record → fetched) stayed under ``bound_ms``.
    ``floor``: also replay the schedule through an aligner alone (seconds of CPU after the trial)."""
    if revisions is not None:
        settings = settings.model_copy(update={"revisions": revisions})
    result, lags, seen, counts, floor_ms = asyncio.run(
        _realtime(make_runner, spec, settings, workload, streams, seconds, warmup_s, delivery, floor)
    )
    trial = Trial(streams, result.extra["expected"], result.extra["windows_total"], counts["dead_letters"],
                  percentiles(result.latencies_ms), percentiles(lags), bound_ms, len(result.latencies_ms),
                  percentiles(seen.first_ms), percentiles(seen.final_ms), seen.counts | counts, settings.revisions,
                  delivery.name, floor_ms, seen.first_split_ms())
    result.extra |= {"delivery": delivery.name, "revisions": settings.revisions,
                     "end_to_first_ms": trial.end_to_first_ms, "end_to_final_ms": trial.end_to_final_ms}
    return result, trial


async def _realtime(
    make_runner: Callable[[], Runner],
    spec: Manifest,
    settings: Settings,
    workload: Workload,
    streams: int,
    seconds: float,
    warmup_s: float,
    delivery: DeliveryProfile,
    floor: bool,
) -> tuple[StageResult, list[float], Seen, dict[str, int], dict[str, dict[str, float]] | None]:
    """The stage's result, the intake lags measured (ms), the predictions seen, the service's counts
    (dead letters, late and partly late records) and the floor (when asked)."""
    run = _run_settings(settings, "live")
    config = run.settings.model_window_config(spec)
    span: list[int] = []  # [first, last) window start measured: after the warm-up, before the end's burst
    census = WindowCensus(config)
    lags: list[float] = []
    seen = Seen()
    #: When each record was due at the broker, by (timestamp ms, stream, modality) packed in one int: a
    #: dict of ints only, which the garbage collector does not walk (see below).
    due: dict[int, int] = {}
    modality_of = {run.settings.video_topic: 1, run.settings.audio_topic: 2, run.settings.text_topic: 3}
    scratch = tempfile.TemporaryDirectory(prefix="fs-bench-")
    path = Path(scratch.name) / "schedule.pickle"
    try:
        await publish([], run.settings)  # topics first, so the group has joined before the first record
        finals: list[float] = []  # close → ack of each window's first final: what _serve_until counts
        measured: list[float] = []

        def on_ack(prediction: Prediction, ms: float) -> None:
            timed = bool(span) and span[0] <= prediction.t_start_ns < span[1]
            if seen.saw(prediction, time.time_ns(), timed):
                finals.append(ms)
            if timed:
                measured.append(ms)

        def on_fetched(record: ConsumerRecord) -> None:
            now = time.time_ns()
            if span and now >= span[0] and not warmed_up:
                warmed_up.update(counted())  # the warm-up's counts: a new stream's first words can be late
            if span and span[0] <= now < span[1] and record.key is not None:
                when = due.get(_due_key(record.timestamp, record.key, modality_of.get(record.topic, 0)))
                if when is not None:
                    lags.append((now - when) / 1e6)

        async def produce() -> int:
            # The cameras are another process, as in production: a producer in this one would
            # take the GIL from the service it is measuring.
            start_ns = time.time_ns() + PRODUCER_START_NS
            records = list(census.watch(workload.cloned(streams, start_ns, seconds)))
            span[:] = [start_ns + int(warmup_s * NS), records[-1].t_start_ns - end_margin_ns(config)]
            schedule = delivery.schedule(records)
            del records
            for when, record in schedule:
                due.setdefault(_due_key(record.t_start_ns // 1_000_000, record.stream_id.encode(),
                                        int(record.modality)), when)
            # The cameras' records go to their process through a file, and leave this heap: tens of
            # thousands of objects the service never holds in production would lengthen its garbage
            # collections (the pauses this stage measures).
            path.write_bytes(pickle.dumps(schedule, protocol=pickle.HIGHEST_PROTOCOL))
            del schedule
            context = multiprocessing.get_context("spawn")
            producer = context.Process(target=produce_live, args=(path, run.settings), name="bench-cameras")
            producer.start()
            await asyncio.get_running_loop().run_in_executor(None, producer.join)
            if producer.exitcode != 0:
                raise RuntimeError(f"the benchmark's producer process failed (exit code {producer.exitcode})")
            return len(census.expected)

        options = ServiceOptions(instance_id="bench", on_acknowledged=on_ack, on_fetched_record=on_fetched)
        service = InferenceService(run.settings, make_runner(), spec, options=options)
        warmed_up: dict[str, int] = {}

        def counted() -> dict[str, int]:
            return {name: int(_counted(counter)) for name, counter in (
                ("dead_letters", service.metrics.dead_letters), ("late", service.metrics.late),
                ("partly_late", service.metrics.partly_late))}

        first_fetch, last_ack = await _serve_until(service, finals, produce)
        # After the warm-up, like the latencies: a stream's first words can come before anything told the
        # service the stream has a transcript, and be late for the windows that closed meanwhile.
        total = counted()
        counts = {name: value - warmed_up.get(name, 0) for name, value in total.items()}
        counts |= {f"{name}_total": value for name, value in total.items()}
        floor_ms = _floor(path, config, span) if floor else None
    finally:
        scratch.cleanup()
        await _delete(run)
    extra = {"streams": streams, "windows_total": seen.windows, "expected": len(census.expected)}
    return (StageResult("kafka_realtime", len(measured), last_ack - first_fetch, measured, extra), lags, seen, counts,
            floor_ms)


def _due_key(timestamp_ms: int, stream_key: bytes, modality: int) -> int:
    """One int for (timestamp, live stream ``rtNNNN``, modality); records of one stream and modality
    sharing a millisecond share it (the first one's time is kept: a rare, harmless approximation)."""
    return (timestamp_ms << 20) | (int(stream_key[2:] or b"0") << 2) | modality


def _floor(path: Path, config: WindowConfig, span: list[int]) -> dict[str, dict[str, float]]:
    """Window end → first and → final prediction of the measured windows with no transport and no
    engine: the schedule through an aligner alone (docs/performance.md)."""
    ideal = ideal_times(pickle.loads(path.read_bytes()), config)
    keys = [key for key in ideal.final if span[0] <= key[1] < span[1]]
    ends = {key: key[1] + config.window_ns for key in keys}
    return {"end_to_first_ms": percentiles([(ideal.first[k] - ends[k]) / 1e6 for k in keys]),
            "end_to_final_ms": percentiles([(ideal.final[k] - ends[k]) / 1e6 for k in keys])}


def _service(
    settings: Settings, make_runner: Callable[[], Runner], spec: Manifest,
    on_ack: Callable[[Prediction, float], None], on_fetched: Callable[[float], None] | None = None,
) -> InferenceService:
    options = ServiceOptions(instance_id="bench", on_acknowledged=on_ack, on_fetched=on_fetched)
    return InferenceService(settings, make_runner(), spec, options=options)


def _fetched(service: InferenceService) -> float:
    """Input records the service has fetched so far (its records_consumed counter)."""
    return _counted(service.metrics.records)


def _counted(counter: Counter) -> float:
    """The total of a (labelled) Prometheus counter, over its labels."""
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )


async def _serve_until(
    service: InferenceService, acknowledged: list[float], target: int | Callable[[], Awaitable[int]]
) -> tuple[float, float]:
    """Run the service until ``target`` predictions are acknowledged; a live target is a producer
    coroutine started once the service has its partitions, returning how many windows it made.
    Returns the instants of the first fetched record and of the last acknowledgement."""
    serving = asyncio.create_task(service.run(), name="bench-service")
    producer: asyncio.Task[int] | None = None
    first_fetch = last_ack = 0.0
    try:
        while not service.health()[0]:
            await _alive(serving)
        if not isinstance(target, int):
            producer = asyncio.create_task(target(), name="bench-producer")
        seen, last_change = 0, time.monotonic()
        while True:
            await _alive(serving)
            if not first_fetch and _fetched(service):
                first_fetch = time.perf_counter()
            if len(acknowledged) != seen:
                seen, last_change = len(acknowledged), time.monotonic()
                last_ack = time.perf_counter()
            goal = target if producer is None else (producer.result() if producer.done() else None)
            if goal is not None and seen >= goal:
                break
            if time.monotonic() - last_change > STALL_S:
                raise RuntimeError(f"the service stalled: {seen} predictions acknowledged, expected {goal}")
    finally:
        if producer is not None and not producer.done():
            producer.cancel()
        service.stop()
        await asyncio.gather(serving, return_exceptions=True)
    return first_fetch, last_ack


async def _alive(serving: asyncio.Task[None]) -> None:
    if serving.done():
        serving.result()  # raises the service's error
        raise RuntimeError("the service stopped before the benchmark was done")
    await asyncio.sleep(0.005)


async def _delete(run: _Run) -> None:
    from fusionstream.consumers.kafka.admin import delete_topics

    try:  # best effort: a leftover bench topic is harmless, but say so (a secured cluster's were left, unsaid)
        await delete_topics(run.settings.bootstrap_servers, run.topics, security=run.settings.kafka_security())
    except Exception as exc:
        log.warning("could not delete the bench's topics %s: %s", ", ".join(run.topics), exc)
