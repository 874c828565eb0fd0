"""Embedded mode: the pipeline fed in-process from local sources, no broker (docs/architecture.md).

Records are replayed in event-time order, either paced to the wall clock (as a
camera would deliver them) or as fast as the pipeline accepts them. The pipeline
is the same object the Kafka service drives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fusionstream.consumers.pipeline.core import DeadLetter, Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.stream.records import Record

TICK_S = 0.05
FAST_BATCH = 256


@dataclass(slots=True)
class RunResult:
    predictions: list[Prediction] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0


async def run_embedded(
    pipeline: Pipeline,
    records: Iterable[Record],
    *,
    realtime: bool,
    on_prediction: Callable[[Prediction], None] | None = None,
    keep: bool = True,
) -> RunResult:
    """Feed ``records`` through ``pipeline`` and collect every prediction until the input ends."""
    result = RunResult()
    started = time.perf_counter()

    async def consume() -> None:
        async for prediction in pipeline.predictions():
            if keep:
                result.predictions.append(prediction)
            if on_prediction is not None:
                on_prediction(prediction)

    consumer = asyncio.create_task(consume(), name="fs-embedded-consume")
    try:
        if realtime:
            await _feed_paced(pipeline, records, result)
        else:
            await _feed_fast(pipeline, records, result)
        await pipeline.flush()
        await pipeline.drain()
        await pipeline.close_output()
        await consumer
    finally:
        if not consumer.done():
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    result.seconds = time.perf_counter() - started
    return result


async def _feed_fast(pipeline: Pipeline, records: Iterable[Record], result: RunResult) -> None:
    batch: list[tuple[Record, None]] = []
    for record in records:
        batch.append((record, None))
        if len(batch) >= FAST_BATCH:
            result.dead_letters += await pipeline.feed(batch)
            result.records += len(batch)
            batch = []
    result.dead_letters += await pipeline.feed(batch)
    result.records += len(batch)


async def _feed_paced(pipeline: Pipeline, records: Iterable[Record], result: RunResult) -> None:
    """Deliver each record when the wall clock reaches its event time (records carry wall-clock times)."""
    due: list[tuple[Record, None]] = []
    next_tick = time.time_ns()
    for record in records:
        wait_ns = record.t_start_ns - time.time_ns()
        if wait_ns > 0 or time.time_ns() >= next_tick:
            result.dead_letters += await pipeline.feed(due)
            result.records += len(due)
            due = []
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            await pipeline.tick()
            next_tick = time.time_ns() + int(TICK_S * 1e9)
        due.append((record, None))
    result.dead_letters += await pipeline.feed(due)
    result.records += len(due)
