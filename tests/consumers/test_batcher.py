"""The micro-batcher: full batches at once, partial ones after the delay, no item ever lost."""

from __future__ import annotations

import asyncio
import time

import pytest

from fusionstream.consumers.pipeline.batcher import MicroBatcher


def test_full_batch_is_handed_out_without_waiting() -> None:
    async def go() -> tuple[list[int], float]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(10):
            queue.put_nowait(i)
        batcher = MicroBatcher(queue, max_batch=4, max_delay_s=5.0)
        started = time.perf_counter()
        batch = await batcher.next_batch()
        return batch, time.perf_counter() - started

    batch, elapsed = asyncio.run(go())
    assert batch == [0, 1, 2, 3] and elapsed < 1.0


def test_partial_batch_waits_at_most_the_delay() -> None:
    async def go() -> tuple[list[int], float]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        queue.put_nowait(1)
        batcher = MicroBatcher(queue, max_batch=8, max_delay_s=0.05)
        started = time.perf_counter()
        batch = await batcher.next_batch()
        return batch, time.perf_counter() - started

    batch, elapsed = asyncio.run(go())
    assert batch == [1] and 0.04 <= elapsed < 1.0


def test_items_arriving_during_the_delay_join_the_batch() -> None:
    async def go() -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        batcher = MicroBatcher(queue, max_batch=3, max_delay_s=1.0)

        async def produce() -> None:
            for i in range(3):
                await queue.put(i)
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        batch = await batcher.next_batch()
        await producer
        return batch

    assert asyncio.run(go()) == [0, 1, 2]


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_no_item_is_lost_or_reordered_under_racing_timeouts(max_batch: int) -> None:
    async def go() -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=5)
        batcher = MicroBatcher(queue, max_batch=max_batch, max_delay_s=0.0005)

        async def produce() -> None:
            for i in range(500):
                await queue.put(i)
                if i % 7 == 0:
                    await asyncio.sleep(0.0004)

        producer = asyncio.create_task(produce())
        seen: list[int] = []
        while len(seen) < 500:
            batch = await batcher.next_batch()
            assert 1 <= len(batch) <= max_batch
            seen += batch
        await producer
        batcher.close()
        return seen

    assert asyncio.run(go()) == list(range(500))
