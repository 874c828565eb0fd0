"""How many live streams one process keeps up with: real-time trials and the search over their count.

A trial replays N streams at their capture rate (records released at their wall-clock
event times, as cameras and microphones deliver them) through a fresh embedded pipeline.
It *sustains* N when, after a warm-up, the p99 processing latency (window closed →
prediction) and the p99 intake lag (how late records got into the pipeline behind their
release time) are both under the bound, and every window was predicted with nothing
dead-lettered. Intake lag matters as much as latency: an overloaded pipeline pushes back
on its input, which delays when windows close rather than how long they take after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fusionstream.consumers.bench.workload import Workload
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.report import WindowCensus, percentiles
from fusionstream.stream.records import Record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import NS

TICK_S = 0.02


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
        return {
            "streams": self.streams,
            "sustained": self.sustained,
            "windows": self.predicted,
            "expected": self.expected,
            "measured": self.measured,
            "dead_letters": self.dead_letters,
            "latency_ms": self.latency_ms,
            "intake_lag_ms": self.intake_lag_ms,
        }


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
) -> Trial:
    start_ns = time.time_ns() + NS // 2
    records = workload.cloned(streams, start_ns, seconds)
    census = WindowCensus(config)
    for _ in census.watch(records):
        pass
    return asyncio.run(
        _trial(make_runner(), config, records, len(census.expected), streams, start_ns + int(warmup_s * NS),
               bound_ms, max_batch, decode_workers, speculate)
    )


async def _trial(
    runner: Runner,
    config: WindowConfig,
    records: Sequence[Record],
    expected: int,
    streams: int,
    measured_from_ns: int,
    bound_ms: float,
    max_batch: int,
    decode_workers: int,
    speculate: bool,
) -> Trial:
    # The last windows all close at once when every stream stops together (flushed, or by idle
    # timeout; a caption-less stretch can hold up to max_skew of them open): an artefact of the
    # trial's end, left out of the percentiles like the warm-up.
    measured_until_ns = records[-1].t_start_ns - end_margin_ns(config)
    latencies: list[float] = []
    lags: list[float] = []
    predicted = dead = 0
    async with Pipeline(
        runner, config, max_batch=max_batch, decode_workers=decode_workers, speculate=speculate
    ) as pipeline:

        async def collect() -> None:
            nonlocal predicted
            async for prediction in pipeline.predictions():
                predicted += 1
                if measured_from_ns <= prediction.t_start_ns < measured_until_ns and prediction.closed_by != "flush":
                    latencies.append(prediction.latency_ms)

        collector = asyncio.create_task(collect())
        i = 0
        while i < len(records):
            now = time.time_ns()
            j = i
            while j < len(records) and records[j].t_start_ns <= now:
                j += 1
            if j > i:
                if records[i].t_start_ns >= measured_from_ns:
                    lags.append((now - records[i].t_start_ns) / 1e6)
                dead += len(await pipeline.feed([(record, None) for record in records[i:j]]))
                i = j
            await pipeline.tick()
            if i < len(records):
                wait = min(TICK_S, (records[i].t_start_ns - time.time_ns()) / NS)
                await asyncio.sleep(max(wait, 0.0))
        await pipeline.flush()
        await pipeline.drain()
        await pipeline.close_output()
        await collector
    return Trial(streams, expected, predicted, dead, percentiles(latencies), percentiles(lags), bound_ms,
                 len(latencies))


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
