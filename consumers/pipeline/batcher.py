"""Micro-batching of closed windows across streams."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Generic, TypeVar

from fusionstream.consumers.pipeline.runner import ClosedWindow

T = TypeVar("T")


class WindowQueue(asyncio.Queue[ClosedWindow]):
    """Closed windows for the engine, provisional ones first, otherwise in the order they closed.

    A provisional prediction is what a user waits for (window end → first prediction); a final has
    the slow modality's whole wait budget behind it already. Behind a burst of closes, a window's
    provisional is not kept waiting by the finals of earlier windows. Its own final closes after
    it, so the order per window (provisional, then final, then amendments) holds, and finals keep
    their order among themselves.
    """

    def _init(self, maxsize: int) -> None:
        self._queue: list[tuple[bool, int, ClosedWindow]] = []  # type: ignore[assignment]
        self._order = itertools.count()

    def _put(self, item: ClosedWindow) -> None:
        heapq.heappush(self._queue, (item.window.final, next(self._order), item))

    def _get(self) -> ClosedWindow:
        return heapq.heappop(self._queue)[2]


class MicroBatcher(Generic[T]):
    """Takes items from a queue in batches of up to ``max_batch``.

    A batch is handed out as soon as it is full, or ``max_delay_s`` after its first
    item arrived, whichever comes first, so a lone window is not held hostage by
    a batch that never fills. A ``get`` that is still pending when the delay runs
    out is kept for the next batch rather than cancelled: cancelling a finished
    ``Queue.get`` can drop its item.
    """

    def __init__(self, queue: asyncio.Queue[T], max_batch: int, max_delay_s: float) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._queue = queue
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._pending: asyncio.Future[T] | None = None

    async def next_batch(self) -> list[T]:
        batch = [await self._take()]
        deadline = asyncio.get_running_loop().time() + self.max_delay_s
        while len(batch) < self.max_batch:
            while len(batch) < self.max_batch and self._pending is None and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if len(batch) >= self.max_batch:
                break
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait({self._pending}, timeout=remaining)
            if not done:
                break
            batch.append(self._pending.result())
            self._pending = None
        return batch

    async def _take(self) -> T:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return await pending
        return await self._queue.get()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
