"""Committing what the handover chooses, and reading commits back (docs/architecture.md).

At-least-once, the consumer commits the offsets; exactly-once, they go into the
publisher's transaction with the predictions and dead letters. Either way the handover
learns what the broker took. Reading commits back uses the admin client, because
``consumer.committed`` drops the metadata, which holds the checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from fusionstream.consumers.kafka import commit_within
from fusionstream.consumers.service.handover import Handover, Offsets
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.publisher import Publisher

log = logging.getLogger(__name__)

class Committer:
    """Commits, per owned partition, the lowest offset still needed and its checkpoint; one commit at a time."""

    def __init__(
        self,
        handover: Handover,
        publisher: Publisher,
        consumer: AIOKafkaConsumer,
        admin: AIOKafkaAdminClient,
        metrics: ServiceMetrics,
        *,
        group_id: str,
        exactly_once: bool,
        visibility_timeout_s: float,
    ) -> None:
        self._handover = handover
        self._publisher = publisher
        self._consumer = consumer
        self._admin = admin
        self._metrics = metrics
        self._group_id = group_id
        self._exactly_once = exactly_once
        self._visibility_timeout_s = visibility_timeout_s
        self._lock = asyncio.Lock()  # commits never overtake each other

    async def commit(self) -> Offsets:
        """Commit what changed; returns the offsets committed."""
        async with self._lock:
            if self._exactly_once:
                chosen = await self._publisher.commit_transaction(self._handover.to_commit) or {}
            else:
                chosen = self._handover.to_commit()
                if chosen:
                    await commit_within(self._consumer, chosen)  # CommitTimedOut: the next commit tries again
            self._handover.committed(chosen)
            if chosen:
                self._metrics.commits.inc()
            return chosen

    async def read(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committed offsets with their metadata (``consumer.committed`` would drop the metadata)."""
        partitions = sorted(tps)
        if not partitions:
            return {}
        for attempt in range(5):
            try:
                return await self._admin.list_consumer_group_offsets(self._group_id, partitions=partitions)
            except KafkaError as exc:
                if attempt == 4:
                    raise
                log.warning("reading committed offsets failed, retrying: %s", exc)
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def await_visible(self, tps: Iterable[TopicPartition]) -> None:
        """Exactly-once: wait until the transaction's offsets can be read back.

        A transaction's offsets are applied when its commit markers are written, a moment
        after ``commit_transaction`` returns; the next owner of a partition must not read
        the offsets from before. aiokafka's offset fetch cannot ask the broker to wait
        (``require_stable``), so the previous owner waits here before letting go.
        """
        if not self._exactly_once:
            return
        expected = {tp: c for tp in tps if (c := self._handover.last_committed(tp)) is not None}
        deadline = time.monotonic() + self._visibility_timeout_s
        while expected:
            stored = await self.read(expected)
            expected = {tp: c for tp, c in expected.items() if tp not in stored or stored[tp].offset < c}
            if not expected:
                return
            if time.monotonic() > deadline:
                log.warning("committed offsets of %s not visible after %.0fs", sorted(expected),
                            self._visibility_timeout_s)
                return
            await asyncio.sleep(0.02)


__all__ = ["Committer"]
