"""The Faust app's consumer: reads committed predictions only, and commits across the offset gaps of a topic
written in transactions.

An exactly-once service (``serve --exactly-once``) writes the predictions topic in transactions, and
each transaction ends with a control record: it takes an offset that no consumer ever receives. Faust
(faust-streaming 0.15) commits the highest run of consecutive acknowledged offsets and patches the
holes from its own gap bookkeeping, which misses a control record right after a seek and adds the
offset after a hole twice, breaking the run (faust-streaming issues #378, #606). Measured on a topic
written by ``serve --exactly-once`` at 2 streams: the app's committed offset advanced one transaction
per commit interval and fell further behind each second (57 committed of 242 after a minute), so a
restarted worker re-read, and counted as duplicates, nearly everything it had read.

Here the committable offset ignores gaps altogether, as a plain Kafka consumer's does: the offset of
the oldest message of the partition handed to the agent and not yet acknowledged, or one past the
newest acknowledged one. Messages reach the agent in offset order per partition, so every offset
below that was either processed or never delivered (a control record, an aborted or compacted one).

It also reads with ``isolation_level="read_committed"`` (Faust reads uncommitted unless the app itself
is exactly-once): the predictions of a transaction the service aborted (a worker killed mid-transaction,
or fenced) are published again by the next owner, and are not shown or counted before that. On a topic
written without transactions it reads the same records as before.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start(), which has not run yet
        return consumer


class GapTolerantConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with :meth:`_new_offset` (what the next commit may say) ignoring gaps,
    reading committed records only."""

    def _new_consumer_thread(self) -> _ReadCommittedThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        pending = [m.offset for m in self._unacked_messages if m.tp == tp and not m.acked]
        offset = min(pending) if pending else max(acked) + 1
        committed = self._committed_offset[tp]
        if committed is not None and offset <= committed:
            return None
        done = [o for o in acked if o < offset]
        acked[:] = [o for o in acked if o >= offset]
        self._acked_index[tp].difference_update(done)
        self._gap[tp].chop(0, offset)  # Faust's gap bookkeeping is no longer read; keep it from growing
        return offset


class GapTolerantTransport(faust_aiokafka.Transport):
    """The aiokafka transport, with :class:`GapTolerantConsumer`."""

    Consumer = GapTolerantConsumer


def gap_tolerant_transport(app: Any) -> GapTolerantTransport:
    """The consumer transport for ``app`` (set as ``app.transport`` before anything reads it)."""
    return GapTolerantTransport(app.conf.broker_consumer, app)
