"""The micro-batcher: full batches at once, partial ones after the delay, no item ever lost."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from fusionstream.consumers.pipeline.batcher import MicroBatcher, WindowQueue
from fusionstream.consumers.pipeline.runner import ClosedWindow
from fusionstream.stream.windows import Window


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


def closed(stream: str, start: int, *, final: bool, revision: int = 0) -> ClosedWindow:
    window = Window(stream, start, start + 10, (), (), np.zeros(1, np.float32), (), (), (False, True, False),
                    (0.0, 1.0, 0.0), "provisional" if not final else "watermark", revision=revision, final=final)
    return ClosedWindow(window, closed_at_ns=start)


def test_window_queue_hands_out_provisional_windows_first_and_finals_in_close_order() -> None:
    """Behind a burst, a window's provisional prediction is not kept waiting by earlier windows' finals
    (the user waits for it; a final has the slow modality's budget behind it), and each window's own
    provisional, final and amendment keep their order."""
    async def go() -> list[tuple[str, int, int, bool]]:
        queue = WindowQueue(maxsize=16)
        for item in (closed("a", 0, final=True, revision=1), closed("b", 0, final=True),
                     closed("a", 5, final=False), closed("c", 0, final=True, revision=1),
                     closed("b", 5, final=False), closed("a", 0, final=True, revision=2),
                     closed("c", 5, final=False)):
            await queue.put(item)
        assert queue.full() is False and queue.qsize() == 7
        batcher = MicroBatcher(queue, max_batch=4, max_delay_s=0.0)
        out = await batcher.next_batch() + await batcher.next_batch()
        # Put while a batch is being taken: a provisional after finals still goes first.
        await queue.put(closed("a", 5, final=True, revision=1))
        await queue.put(closed("d", 5, final=False))
        out += await batcher.next_batch()
        return [(c.window.stream_id, c.window.t_start_ns, c.window.revision, c.window.final) for c in out]

    assert asyncio.run(go()) == [
        ("a", 5, 0, False), ("b", 5, 0, False), ("c", 5, 0, False),  # provisional, in close order
        ("a", 0, 1, True), ("b", 0, 0, True), ("c", 0, 1, True), ("a", 0, 2, True),  # finals, in close order
        ("d", 5, 0, False), ("a", 5, 1, True),
    ]


def test_window_queue_bounds_and_blocks_like_a_queue() -> None:
    async def go() -> bool:
        queue = WindowQueue(maxsize=2)
        await queue.put(closed("a", 0, final=True))
        await queue.put(closed("b", 0, final=True))
        blocked = asyncio.create_task(queue.put(closed("c", 0, final=False)))
        await asyncio.sleep(0.01)
        waiting = not blocked.done()
        first = queue.get_nowait()
        await blocked
        return waiting and first.window.stream_id == "a" and queue.get_nowait().window.stream_id == "c"

    assert asyncio.run(go())
