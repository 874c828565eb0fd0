"""Publishing predictions and dead letters, and telling the handover when the broker has them.

At-least-once: every send is acknowledged by all in-sync replicas (``acks=all``,
idempotent producer) before the records it came from are released for commit.

Exactly-once: the producer is transactional. Sends go into the open transaction;
:meth:`Publisher.commit_transaction` waits for every send of the transaction,
adds the input offsets (with their checkpoints) and commits, so predictions, dead
letters and offsets become visible together or not at all.

A failed send or transaction is fatal (:class:`PredictionPublishError`): the service
stops without committing past it, and the next run re-reads from the last commit. So is a
commit after the process stood still for longer than the group's session
(:mod:`fusionstream.consumers.service.freezes`): its transaction is aborted instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import InvalidProducerIdMapping, ProducerFenced

from fusionstream.consumers.pipeline.core import DeadLetter, Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.service.freezes import FreezeWatch
from fusionstream.consumers.service.handover import Offsets
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.topic_settings import PRODUCER_DEFAULT_MAX_BYTES
from fusionstream.stream.errors import FusionStreamError

log = logging.getLogger(__name__)

Ref = tuple[str, int, int]

#: Exactly-once: how long a commit may take, the producer's transaction timeout (aiokafka's default 60 s).
COMMIT_TIMEOUT_S = 60.0

#: Bytes a record takes beyond its key, value and headers (its batch's and its own framing), with room to spare.
RECORD_OVERHEAD = 256


class PredictionPublishError(FusionStreamError):
    """The broker did not take a prediction, a dead letter or a transaction; the service must stop.

    Not :class:`fusionstream.consumers.producers.PublishError`, which is a producer's refused record.
    """


class Acknowledgements(Protocol):
    """Who is told what the broker has (the service's :class:`~fusionstream.consumers.service.handover.Handover`)."""

    def prediction_acknowledged(self, prediction: Prediction) -> None: ...

    def provisional_acknowledged(self, prediction: Prediction) -> None: ...

    def dead_letter_sent(self, ref: Ref) -> None: ...

    def dead_letter_acknowledged(self, ref: Ref) -> None: ...


def _describe(error: BaseException) -> str:
    """The failure as a user reads it: aiokafka's batch errors say little without their cause."""
    cause = error.__cause__ or error.__context__
    text = f"{error!r}" if cause is None else f"{error!r} (caused by {cause!r})"
    if isinstance(error, InvalidProducerIdMapping) or isinstance(cause, InvalidProducerIdMapping):
        text += "; the broker no longer knows this producer (it lost its data, or the producer's id expired)"
    if isinstance(error, ProducerFenced) or isinstance(cause, ProducerFenced):
        text += f"; {FENCED}"
    return text


#: What a fenced transactional producer means for an operator.
FENCED = ("another instance took this instance's transactional id (<group_id>.<instance_id>): two live instances "
          "with the same --instance-id fence each other; give each its own. (Or this one stood still longer than "
          "the transaction timeout.)")


class Publisher:
    """Sends predictions and dead letters; reports their acknowledgements, which release their input records."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        acks: Acknowledgements,
        metrics: ServiceMetrics,
        *,
        predictions_topic: str,
        deadletter_topic: str,
        transactional: bool,
        group_id: str,
        on_acknowledged: Callable[[Prediction, float], None] | None = None,
        freezes: FreezeWatch | None = None,
    ) -> None:
        #: Exactly-once: a freeze this long refuses every later commit (see :mod:`.freezes`).
        self._freezes = freezes
        #: Called with each acknowledged prediction and its close → acknowledged milliseconds.
        self._on_acknowledged = on_acknowledged
        self._producer = producer
        self._acks = acks
        self._metrics = metrics
        self._predictions_topic = predictions_topic
        self._deadletter_topic = deadletter_topic
        self._transactional = transactional
        self._group_id = group_id
        #: The largest dead letter the producer and the dead-letter topic take (``topic_settings``, at start).
        self.dead_letter_max_bytes = getattr(producer, "_max_request_size", PRODUCER_DEFAULT_MAX_BYTES)
        self._outstanding: set[asyncio.Future[Any]] = set()
        #: When the broker last acknowledged a send, or the first of the sends waiting now was made.
        self._answered = time.monotonic()
        self._sending = 0  # sends waiting in aiokafka's send() itself (for metadata), not queued yet
        # Exactly-once: no send may slip between "wait for the transaction's sends" and its commit.
        self._lock = asyncio.Lock()
        self._in_transaction = False
        #: Predictions taken from the pipeline and acknowledged (or failed).
        self.done = 0
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self._progress = asyncio.Event()

    # -- sending --------------------------------------------------------------------------------

    async def run(self, pipeline: Pipeline) -> None:
        """Publish every prediction the pipeline makes, until its output is closed."""
        async for prediction in pipeline.predictions():
            await self.publish(prediction)

    async def publish(self, prediction: Prediction) -> None:
        capture_ms = (time.time_ns() - prediction.t_end_ns) / 1e6
        value = prediction.to_json(capture_to_publish_ms=capture_ms)
        self._metrics.observe_prediction(prediction, capture_ms)
        future = await self._send(
            self._predictions_topic,
            key=prediction.stream_id.encode("utf-8"),
            value=value,
            # Event time, but never ahead of now: a broker refuses a timestamp far ahead of its clock
            # (an hour by default), and a window's end is ahead when its source's clock is.
            timestamp_ms=min(prediction.t_end_ns // 1_000_000, time.time_ns() // 1_000_000),
        )
        future.add_done_callback(lambda f: self._on_prediction(f, prediction))

    async def dead_letter(self, message: ConsumerRecord, dead: DeadLetter) -> None:
        """Send the original record with ``fs.*`` headers; the record stays held until acknowledged."""
        ref = (message.topic, message.partition, message.offset)
        self._acks.dead_letter_sent(ref)
        headers = [
            *(message.headers or ()),
            ("fs.reason", dead.reason.encode()),
            ("fs.detail", dead.detail.encode("utf-8", "replace")),
            ("fs.topic", message.topic.encode()),
            ("fs.partition", str(message.partition).encode()),
            ("fs.offset", str(message.offset).encode()),
            ("fs.timestamp", str(message.timestamp).encode()),
        ]
        self._metrics.dead_letters.labels(dead.reason).inc()
        if dead.reason == "late":
            self._metrics.late.inc()
        value = self._fitting(message.key, message.value, headers, ref)
        # Stamped now: the original timestamp (kept in fs.timestamp) may be older than the topic's retention.
        future = await self._send(self._deadletter_topic, key=message.key, value=value, headers=headers)
        future.add_done_callback(lambda f: self._on_dead_letter(f, ref))

    def _fitting(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                 ref: Ref) -> bytes | None:
        """``value``, or its start with an ``fs.truncated`` header (its size) when the record would exceed
        :attr:`dead_letter_max_bytes`: refused, it stopped the service on every start (``topic_settings``)."""
        around = RECORD_OVERHEAD + len(key or b"") + sum(len(k) + len(v) + 8 for k, v in headers)
        if value is None or around + len(value) <= self.dead_letter_max_bytes:
            return value
        headers.append(("fs.truncated", str(len(value)).encode()))
        kept = max(0, self.dead_letter_max_bytes - around - RECORD_OVERHEAD)
        log.warning("dead letter of %s[%d]@%d: the record (%d bytes) is larger than the dead-letter topic or this "
                    "producer takes (%d bytes); sent its first %d bytes, with an fs.truncated header", *ref,
                    len(value), self.dead_letter_max_bytes, kept)
        return value[:kept]

    async def _send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        if self.failure is not None:
            raise PredictionPublishError("publishing stopped after an earlier failure") from self.failure
        if not self._outstanding and not self._sending:
            self._answered = time.monotonic()
        self._sending += 1  # aiokafka's send waits here for a partition leader the metadata lacks
        try:
            async with self._lock:
                if self._transactional and not self._in_transaction:
                    await self._producer.begin_transaction()
                    self._in_transaction = True
                future = await self._producer.send(topic, **kwargs)
        finally:
            self._sending -= 1
        self._outstanding.add(future)
        return future

    # -- acknowledgements -----------------------------------------------------------------------

    def stalled_for(self) -> float:
        """Seconds since the broker last acknowledged a send while some wait (0 when none waits)."""
        return time.monotonic() - self._answered if self._outstanding or self._sending else 0.0

    def _on_prediction(self, future: asyncio.Future[Any], prediction: Prediction) -> None:
        self._outstanding.discard(future)
        self._answered = time.monotonic()
        if self._check(future, f"prediction {prediction.window_id}"):
            close_to_ack_ms = (time.perf_counter_ns() - prediction.closed_at_ns) / 1e6
            self._metrics.close_to_ack.observe(close_to_ack_ms / 1000)
            if self._on_acknowledged is not None:
                self._on_acknowledged(prediction, close_to_ack_ms)
            if prediction.final:
                self._acks.prediction_acknowledged(prediction)
            else:  # a provisional one releases no record (its window's final needs them), it is only checkpointed
                self._acks.provisional_acknowledged(prediction)
            self._metrics.published.inc()
        self.done += 1
        self._progress.set()

    def _on_dead_letter(self, future: asyncio.Future[Any], ref: Ref) -> None:
        self._outstanding.discard(future)
        self._answered = time.monotonic()
        if self._check(future, f"dead letter of {ref}"):
            self._acks.dead_letter_acknowledged(ref)

    def _check(self, future: asyncio.Future[Any], what: str) -> bool:
        if future.cancelled():
            error: BaseException = PredictionPublishError(f"{what}: send cancelled")
        elif (exc := future.exception()) is not None:
            error = exc
        else:
            return True
        if self.failure is None:
            log.error("the broker did not take %s: %s; stopping without committing past it", what, error)
            self.failure = error
            self.failed.set()
            self._progress.set()
        return False

    async def wait_done(self, count: int) -> None:
        """Wait until ``count`` predictions in total were acknowledged (or publishing failed)."""
        while self.done < count and self.failure is None:
            self._progress.clear()
            await self._progress.wait()
        self._raise_failure()

    async def settle(self) -> None:
        """Wait for every outstanding send to be acknowledged (or publishing failed: :meth:`fail`)."""
        while self._outstanding and self.failure is None:
            sends = asyncio.gather(*list(self._outstanding), return_exceptions=True)
            failed = asyncio.ensure_future(self.failed.wait())
            await asyncio.wait({sends, failed}, return_when=asyncio.FIRST_COMPLETED)
            failed.cancel()
        self._raise_failure()

    def fail(self, error: BaseException) -> None:
        """Publishing cannot go on (a topic gone): every wait for acknowledgements ends with ``error``."""
        if self.failure is None:
            log.error("%s; stopping without committing past what was published", error)
            self.failure = error
            self.failed.set()
            self._progress.set()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise PredictionPublishError(f"publishing failed: {_describe(self.failure)}") from self.failure

    # -- transactions (exactly-once) ------------------------------------------------------------

    async def commit_transaction(self, offsets: Callable[[], Offsets]) -> Offsets | None:
        """Commit the open transaction with the input ``offsets()`` computed once its sends are all acknowledged.

        Returns the offsets committed, or None when there was nothing to commit.
        """
        async with self._lock:
            await self.settle()
            chosen = offsets()
            if not chosen and not self._in_transaction:
                return None
            await self._refuse_if_frozen()
            try:
                if not self._in_transaction:
                    await self._producer.begin_transaction()
                    self._in_transaction = True
                # Past the producer's transaction timeout the broker has aborted the transaction: waiting longer
                # (aiokafka retries a coordinator that lost the producer's id for ever) cannot commit it.
                async with asyncio.timeout(COMMIT_TIMEOUT_S):
                    if chosen:
                        await self._producer.send_offsets_to_transaction(chosen, self._group_id)
                    # Again: a stop that fell while the offsets went out resumes here, its network
                    # callbacks running before the watch task's timer.
                    await self._refuse_if_frozen()
                    await self._producer.commit_transaction()
            except TimeoutError as exc:
                error = PredictionPublishError(
                    f"the transaction did not commit within {COMMIT_TIMEOUT_S:g} s (the broker away that long, or "
                    "it lost its data): stopping; a restart re-reads from the last commit")
                self.failure = self.failure or error
                self.failed.set()
                raise error from exc
            except Exception as exc:
                failed = PredictionPublishError(f"committing the transaction failed: {_describe(exc)}")
                failed.__cause__ = exc
                self.failure = self.failure or failed
                self.failed.set()
                raise failed from exc
            finally:
                self._in_transaction = False
            return chosen

    async def fence(self, frozen_s: float) -> None:
        """The process stood still too long (:class:`~.freezes.FreezeWatch`): abort the open transaction now, not
        at the next commit (an idle instance might have none for hours), and fail."""
        async with self._lock:  # after a commit in flight, which refuses by itself
            with suppress(PredictionPublishError):
                await self._refuse_as_zombie(frozen_s)

    async def _refuse_if_frozen(self) -> None:
        if self._freezes is not None and (frozen_s := self._freezes.check()) is not None:
            await self._refuse_as_zombie(frozen_s)

    async def _refuse_as_zombie(self, frozen_s: float) -> None:
        error = PredictionPublishError(
            f"this process stood still for {frozen_s:.1f} s, longer than its consumer group's session allows: "
            "its partitions may be another member's now, so its transaction was aborted, not committed "
            "(restart it: a supervised worker is restarted)")
        try:
            # Before failing: the service's stop that follows could otherwise cut the abort short, and the open
            # transaction would hold read-committed readers back until the broker's timeout.
            await self.abort_transaction()
        except Exception as exc:  # fenced or gone already: nothing of it becomes visible either way
            log.warning("aborting the transaction after the freeze: %r", exc)
        self.failure = self.failure or error
        self.failed.set()
        raise error

    async def abort_transaction(self) -> None:
        """Exactly-once, after an error: drop the open transaction (its sends never become visible)."""
        if self._in_transaction:
            self._in_transaction = False
            await self._producer.abort_transaction()
