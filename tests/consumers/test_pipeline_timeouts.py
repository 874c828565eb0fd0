"""Windows closed by timeout are closed a half queue at a time: a burst of 10,000 new stream ids that went silent
together built 20,000 windows at once in one tick (1.3 GB of RSS, each window holding its own second of audio), and
every other stream's windows waited behind them for 89 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.settings import model_geometry
from fusionstream.engines.backends import open_runtime
from fusionstream.stream.media import audio_record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import NS

STREAMS = 40
QUEUE = 8


def test_a_burst_of_silent_streams_closes_half_a_queue_per_tick_and_every_window_comes(untrained_model: Path) -> None:
    clock = [time.time_ns()]
    t0 = clock[0] - 5 * NS

    async def scenario() -> tuple[list[int], int]:
        with open_runtime("onnxruntime", untrained_model) as runtime:
            frames, rate = model_geometry(runtime.manifest)
            config = WindowConfig(frames_per_window=frames, sample_rate=rate)
            pipeline = Pipeline(Runner(runtime), config, queue_windows=QUEUE, clock=lambda: clock[0])
            async with pipeline:
                records = [(audio_record(f"burst-{i:03d}", 0, t0, np.zeros(640, np.float32), 16000), None)
                           for i in range(STREAMS)]
                await pipeline.feed(records)
                assert pipeline.stats.windows_closed == 0  # all open: nothing has passed them yet
                clock[0] += 60 * NS  # every stream silent far past the idle timeout
                closed_per_tick: list[int] = []
                predicted: list[str] = []

                async def read() -> None:
                    async for prediction in pipeline.predictions():
                        predicted.append(prediction.window_id)

                reading = asyncio.create_task(read())
                while len(closed_per_tick) < 200:
                    before = pipeline.stats.windows_closed
                    await pipeline.tick()
                    closed_per_tick.append(pipeline.stats.windows_closed - before)
                    while pipeline.backlog():  # the engine takes what was closed before the next tick
                        await asyncio.sleep(0.01)
                    if pipeline.aligner.buffered_items() == 0:
                        break
                await pipeline.drain()
                await asyncio.sleep(0.1)
                reading.cancel()
                return closed_per_tick, len(set(predicted))

    closed_per_tick, predicted = asyncio.run(scenario())
    # A stream's windows close together (two here), so the last stream of a tick may overshoot by one.
    assert closed_per_tick[0] >= 1 and max(closed_per_tick) <= QUEUE // 2 + 2, closed_per_tick
    assert len([n for n in closed_per_tick if n]) >= STREAMS * 2 // (QUEUE // 2 + 2), closed_per_tick
    assert predicted == sum(closed_per_tick) >= STREAMS, predicted
