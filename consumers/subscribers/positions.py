"""A group-less subscription's place in each partition, kept across aiokafka's reassignments.

Without a group, aiokafka assigns every partition of the topic to the consumer, and assigns them all afresh
when the topic's metadata changes (partitions added): every position then restarts from the reset policy, the
newest record for a live tail (an outside tester's missed 1-2 predictions published around the change) or the
oldest with ``from_beginning`` (the whole topic again). :class:`Positions` remembers where each partition was
and puts it back; a partition added since the first assignment is read from its beginning, since everything on
it came after the subscription started.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError


class Positions:
    """Call :meth:`settle` before each fetch and pass each fetch's batch through :meth:`taken`."""

    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}  # the offset after the last record taken
        self._assignment: frozenset[TopicPartition] = frozenset()

    async def settle(self, consumer: AIOKafkaConsumer) -> None:
        """After a reassignment, every partition back where it was (a new one at its beginning)."""
        owned = frozenset(consumer.assignment())
        if owned == self._assignment:
            return
        try:
            if not self._assignment:  # the first: where the reset policy put each (newest, or oldest: from_beginning)
                for tp in owned:
                    if tp not in self._next:  # none taken from it yet (those taken in the fetch that assigned it count)
                        self._next[tp] = await consumer.position(tp)
            else:
                added = [tp for tp in owned if tp not in self._next]
                for tp in owned - set(added):
                    consumer.seek(tp, self._next[tp])
                if added:
                    await consumer.seek_to_beginning(*added)
        except IllegalStateError:  # reassigned again meanwhile: settled at the next call
            return
        self._assignment = owned

    def taken(self, consumer: AIOKafkaConsumer,
              batch: dict[TopicPartition, list[ConsumerRecord]]) -> dict[TopicPartition, list[ConsumerRecord]]:
        """``batch``, or nothing when the partitions were reassigned during the fetch: its records may come from
        the reset positions, and :meth:`settle` puts each partition back where the last taken record left it."""
        if self._assignment and frozenset(consumer.assignment()) != self._assignment:
            return {}
        for tp, records in batch.items():
            if records:
                self._next[tp] = records[-1].offset + 1
        return batch
