"""Stopping an aiokafka consumer at any moment, also right after it started."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, safe right after ``start()``.

    aiokafka's group-less coordinator starts a task when the consumer starts and, at stop, cancels it and
    awaits it. A task cancelled before it ever ran re-raises the CancelledError into whoever stops the
    consumer: leaving ``async with subscribe(...)`` before the first record raised CancelledError, in place
    of the exception the block was leaving with. One step of the loop lets the task start first; cancelled
    then, it ends quietly."""
    await asyncio.sleep(0)
    await consumer.stop()


__all__ = ["stop_consumer"]
