"""How many live streams one process keeps up with: real-time trials and the search over their count.

A trial replays N streams as live sources deliver them (records released at wall-clock times
of a delivery profile, :mod:`fusionstream.consumers.bench.delivery`: by default frames shortly
after capture, audio chunks when they end, transcript words 300-700 ms after they end, with
our producers' progress) through a fresh embedded pipeline. It *sustains* N when, after a
warm-up, the p99 processing latency (window closed → prediction) and the p99 intake lag (how
late records got into the pipeline behind their release time) are both under the bound, and
every window got its final prediction with nothing dead-lettered. Intake lag matters as much
as latency: an overloaded pipeline pushes back on its input, which delays when windows close
rather than how long they take after.

Beside that, what a user sees: window end → first prediction (provisional, with revisions on)
and window end → final prediction, wall clock, the window's end being the moment it depicts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fusionstream.consumers.bench.delivery import PACED, REALISTIC, DeliveryProfile
from fusionstream.consumers.bench.workload import Workload
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.report import WindowCensus, percentiles
from fusionstream.stream.records import Record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import NS

TICK_S = 0.02
#: The parts of window end → first prediction: the feed and the aligner (end → close), the wait for the
#: engine (queue), the engine call (engine, the whole batch's), and close → seen (queue, engine, and for
#: the service the prediction's JSON, produce and broker acknowledgement).
SPLIT_PARTS = ("end_to_close", "queue", "engine", "close_to_seen")


@dataclass(frozen=True)
class Trial:
    streams: int
    expected: int
    predicted: int
    dead_letters: int
    latency_ms: dict[str, float]
    intake_lag_ms: dict[str, float]
    bound_ms: float
    measured: int  # windows whose latency counts: those after the warm-up
    #: Window end → first and → final prediction (wall clock, ms), over the measured windows; None
    #: where not measured.
    end_to_first_ms: dict[str, float] | None = None
    end_to_final_ms: dict[str, float] | None = None
    #: Predictions by kind (provisional, final, amended) and records late or partly late.
    counts: dict[str, int] = field(default_factory=dict)
    revisions: bool = False
    delivery: str = PACED.name
    #: The same figures with no transport and no engine: the schedule through an aligner alone.
    floor_ms: dict[str, dict[str, float]] | None = None
    #: Where window end → first prediction went (:meth:`Seen.first_split_ms`); None where not measured.
    first_split_ms: dict[str, dict[str, float]] | None = None

    @property
    def sustained(self) -> bool:
        # A trial that measured nothing (every window inside the warm-up) proves nothing.
        return (
            self.predicted == self.expected
            and self.measured > 0
            and self.dead_letters == 0
            and self.latency_ms["p99"] <= self.bound_ms
            and self.intake_lag_ms["p99"] <= self.bound_ms
        )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "streams": self.streams,
            "sustained": self.sustained,
            "windows": self.predicted,
            "expected": self.expected,
            "measured": self.measured,
            "dead_letters": self.dead_letters,
            "latency_ms": self.latency_ms,
            "intake_lag_ms": self.intake_lag_ms,
            "delivery": self.delivery,
            "revisions": self.revisions,
        }
        if self.end_to_first_ms is not None:
            out["end_to_first_ms"] = self.end_to_first_ms
            out["end_to_final_ms"] = self.end_to_final_ms
        if self.counts:
            out["counts"] = self.counts
        if self.floor_ms is not None:
            out["floor_ms"] = self.floor_ms
        if self.first_split_ms is not None:
            out["first_split_ms"] = self.first_split_ms
        return out


class Seen:
    """What users saw of each window: when its first and its final prediction came, measured from the
    window's end (event times are wall clock in a live trial). Amendments (a final revised because a
    partly late record changed it) are counted, not timed: the final that counts is the window's close."""

    def __init__(self) -> None:
        self.first_ms: list[float] = []
        self.final_ms: list[float] = []
        self.counts = {"provisional": 0, "final": 0, "amended": 0}
        self._first: set[tuple[str, int]] = set()
        self._final: set[tuple[str, int]] = set()
        #: Each measured first prediction's window end → close, its wait for the engine, the engine call,
        #: and close → seen (ms): the parts of end → first, where the prediction carries its close instant.
        self._first_split: dict[str, list[float]] = {part: [] for part in SPLIT_PARTS}

    def saw(self, prediction: Prediction, now_ns: int, measured: bool) -> bool:
        """Take one prediction seen at ``now_ns``; True when it is its window's first final."""
        key = (prediction.stream_id, prediction.t_start_ns)
        ms = (now_ns - prediction.t_end_ns) / 1e6
        if key not in self._first:
            self._first.add(key)
            if measured:
                self.first_ms.append(ms)
                if prediction.closed_at_ns:  # this process closed it (not a worker's prediction read back)
                    close_to_seen = (time.perf_counter_ns() - prediction.closed_at_ns) / 1e6
                    for part, value in zip(SPLIT_PARTS, (ms - close_to_seen, prediction.queue_ms,
                                                         prediction.inference_ms, close_to_seen), strict=True):
                        self._first_split[part].append(value)
        if not prediction.final:
            self.counts["provisional"] += 1
            return False
        if key in self._final:
            self.counts["amended"] += 1
            return False
        self._final.add(key)
        self.counts["final"] += 1
        if measured:
            self.final_ms.append(ms)
        return True

    @property
    def windows(self) -> int:
        """Windows with a final prediction."""
        return len(self._final)

    def first_split_ms(self) -> dict[str, dict[str, float]] | None:
        """Percentiles of each part of window end → first prediction (``SPLIT_PARTS``), None if none was timed.
        Each part's p99 is its own: they do not add up to end → first's p99."""
        if not self._first_split["end_to_close"]:
            return None
        return {part: percentiles(values) for part, values in self._first_split.items()}


def realtime_trial(
    make_runner: Callable[[], Runner],
    workload: Workload,
    config: WindowConfig,
    streams: int,
    *,
    seconds: float,
    warmup_s: float,
    bound_ms: float,
    max_batch: int,
    decode_workers: int,
    speculate: bool = True,
    delivery: DeliveryProfile = REALISTIC,
    start_ns: int | None = None,
) -> Trial:
    """One trial through the embedded pipeline (no broker): ``streams`` live streams delivered by
    ``delivery``; revisions as ``config`` says (``provisional_without``). The streams start at ``start_ns``
    (wall clock; default half a second from now), which must leave time to make their records."""
    start_ns = time.time_ns() + NS // 2 if start_ns is None else start_ns
    records = workload.cloned(streams, start_ns, seconds)
    census = WindowCensus(config)
    for _ in census.watch(records):
        pass
    schedule = delivery.schedule(records)
    measured = (start_ns + int(warmup_s * NS), records[-1].t_start_ns - end_margin_ns(config))
    del records
    trial = asyncio.run(
        _trial(make_runner(), config, schedule, len(census.expected), streams, measured, bound_ms, max_batch,
               decode_workers, speculate)
    )
    return dataclasses.replace(trial, delivery=delivery.name, revisions=bool(config.provisional_without))


async def _trial(
    runner: Runner,
    config: WindowConfig,
    schedule: Sequence[tuple[int, Record]],
    expected: int,
    streams: int,
    measured: tuple[int, int],
    bound_ms: float,
    max_batch: int,
    decode_workers: int,
    speculate: bool,
) -> Trial:
    # ``measured``: [first, last) window start timed. The last windows all close at once when every
    # stream stops together (flushed, or by idle timeout; a caption-less stretch can hold up to max_skew
    # of them open): an artefact of the trial's end, left out of the percentiles like the warm-up.
    measured_from_ns, measured_until_ns = measured
    latencies: list[float] = []
    lags: list[float] = []
    seen = Seen()
    dead = dead_total = 0
    async with Pipeline(
        runner, config, max_batch=max_batch, decode_workers=decode_workers, speculate=speculate
    ) as pipeline:

        async def collect() -> None:
            async for prediction in pipeline.predictions():
                timed = measured_from_ns <= prediction.t_start_ns < measured_until_ns
                seen.saw(prediction, time.time_ns(), timed and prediction.closed_by != "flush")
                if timed and prediction.closed_by != "flush":
                    latencies.append(prediction.latency_ms)

        collector = asyncio.create_task(collect())
        i = 0
        while i < len(schedule):
            now = time.time_ns()
            j = i
            while j < len(schedule) and schedule[j][0] <= now:
                j += 1
            if j > i:
                if schedule[i][0] >= measured_from_ns:
                    lags.append((now - schedule[i][0]) / 1e6)
                rejected = len(await pipeline.feed([(record, None) for _, record in schedule[i:j]]))
                # After the warm-up only, like the latencies: a new stream's first words can come before
                # anything told the pipeline the stream has a transcript, and miss windows closed meanwhile.
                dead += rejected if schedule[i][0] >= measured_from_ns else 0
                dead_total += rejected
                i = j
            await pipeline.tick()
            if i < len(schedule):
                wait = min(TICK_S, (schedule[i][0] - time.time_ns()) / NS)
                await asyncio.sleep(max(wait, 0.0))
        await pipeline.flush()
        await pipeline.drain()
        await pipeline.close_output()
        await collector
        stats = pipeline.stats
        counts = seen.counts | {"late_total": pipeline.aligner.stats.late, "dead_letters": dead,
                                "partly_late_total": stats.records_partly_late, "dead_letters_total": dead_total}
    return Trial(streams, expected, seen.windows, dead, percentiles(latencies), percentiles(lags), bound_ms,
                 len(latencies), percentiles(seen.first_ms), percentiles(seen.final_ms), counts,
                 first_split_ms=seen.first_split_ms())


def trial_line(t: Trial) -> str:
    """One trial in a line: its verdict, close → ack (or → prediction), intake lag, and what users see."""
    verdict = "[green]sustained[/]" if t.sustained else "[red]not sustained[/]"
    line = (f"latency p99 {t.latency_ms['p99']:.1f} ms, intake lag p99 {t.intake_lag_ms['p99']:.1f} ms, "
            f"{t.predicted}/{t.expected} windows: {verdict}")
    if t.end_to_first_ms is not None and t.end_to_final_ms is not None:
        line += (f"; window end -> first p99 {t.end_to_first_ms['p99']:.0f} ms, -> final p99 "
                 f"{t.end_to_final_ms['p99']:.0f} ms")
    return line


def end_margin_ns(config: WindowConfig) -> int:
    """How long before the end of a trial's input windows stop counting: a window may wait up to
    ``max_skew`` for a lagging modality (captions come in seconds-long segments), and such
    windows all close together when every stream stops at once."""
    return config.window_ns + config.max_skew_ns + config.lateness_ns


def search_max_streams(
    run_trial: Callable[[int], Trial],
    *,
    start: int = 8,
    limit: int = 512,
    progress: Callable[[Trial], None],
    attempts: int = 1,
) -> tuple[int, list[Trial]]:
    """Double the stream count until a trial fails, then bisect to within 1/8 of the answer.

    A count whose trial fails is tried again, up to ``attempts`` trials in all, and counts as
    sustained if any of them sustains it: on a shared machine one stall of a few hundred
    milliseconds delays every window closing meanwhile, which alone can lift a trial's p99 over
    the bound, while a load the process cannot sustain fails every time (its latency grows
    for as long as the trial lasts). Returns the largest sustained count (below ``start`` by
    halving if ``start`` fails; 0 if even one stream fails) and every trial run.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    trials: list[Trial] = []

    def attempt(n: int) -> bool:
        for _ in range(attempts):
            trial = run_trial(n)
            trials.append(trial)
            progress(trial)
            if trial.sustained:
                return True
        return False

    good, bad = 0, None
    n = start
    while n <= limit:
        if attempt(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if good == 0:
        n = start // 2
        while n >= 1 and not attempt(n):
            n //= 2
        return max(n, 0), trials
    if bad is None:
        return good, trials
    while bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return good, trials
