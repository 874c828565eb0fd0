"""Read predictions from Kafka as typed records: the client API every subscriber builds on.

::

    async with subscribe("localhost:9092", from_beginning=True, stream_ids={"cam-00"}) as predictions:
        async for p in predictions:
            print(p.stream_id, p.t_start, p.label, p.score, p.capture_to_publish_ms)

Without ``group_id`` the subscription reads every partition and commits nothing (a ``tail``); with one it
joins that consumer group (range assignment, like the service) and commits the offsets of the predictions it
has handed out once the caller asks for the next one, so a restarted subscriber resumes after the last one.
It reads committed predictions only by default: ``read_committed=False`` also shows those of transactions
an exactly-once service aborted (which the next owner publishes again), a little sooner.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from fusionstream.consumers.kafka.stop import stop_consumer
from fusionstream.consumers.subscribers.errors import BadPrediction
from fusionstream.consumers.subscribers.positions import Positions

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "fs.predictions"
#: The keys of a prediction's JSON value (consumers/pipeline/prediction.py writes them).
FIELDS = (
    "window_id", "stream_id", "t_start_ns", "t_end_ns", "label", "score", "scores", "modalities", "coverage",
    "model_version", "closed_by", "latency_ms", "batch_size",
)  # fmt: skip
#: Keys only some predictions have: ``labels`` (multi-label), ``embedding`` (embedding models), ``revision``
#: and ``final`` (services since revisions; absent means 0 and true).
OPTIONAL_FIELDS = ("labels", "embedding", "revision", "final")
#: Committed offsets are flushed this often while iterating (and always on close and on revocation).
COMMIT_INTERVAL_S = 2.0
_POLL_MS = 200
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One window's prediction as read from the predictions topic, with where it was read from.

    The fields are the JSON value's (docs/predictions.md); keys this version does not know
    are kept in ``extra``. ``topic``, ``partition``, ``offset`` and ``timestamp_ms`` (the
    Kafka record's) are -1 / "" for a record parsed outside Kafka.
    """

    window_id: str
    stream_id: str
    t_start_ns: int
    t_end_ns: int
    label: str
    score: float
    scores: Mapping[str, float] = field(default_factory=_empty)
    modalities: Mapping[str, bool] = field(default_factory=_empty)
    coverage: Mapping[str, float] = field(default_factory=_empty)
    model_version: str = ""
    closed_by: str = ""
    latency_ms: Mapping[str, float | None] = field(default_factory=_empty)
    batch_size: int = 0
    #: Multi-label models: every class at or above its threshold → its score, best first (else None).
    labels: Mapping[str, float] | None = None
    #: Embedding models: the fused vector (else None); their ``label`` is empty and ``score`` 0.
    embedding: tuple[float, ...] | None = None
    #: Predictions of this window made before this one (docs/predictions.md#revisions).
    revision: int = 0
    #: False for a provisional prediction: a final one of the same window follows.
    final: bool = True
    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = -1
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)

    @property
    def t_start(self) -> datetime:
        """The window's start as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.t_start_ns / 1e9, tz=UTC)

    @property
    def present(self) -> tuple[bool, bool, bool]:
        """Which of video, audio and text the window had, in that order."""
        return tuple(bool(self.modalities.get(m)) for m in ("video", "audio", "text"))  # type: ignore[return-value]

    @property
    def task(self) -> str:
        """What kind of model made it, read from its fields: ``embedding``, ``multi_label`` or ``single_label``."""
        if self.embedding is not None:
            return "embedding"
        return "multi_label" if self.labels is not None else "single_label"

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes it asserts: its ``label`` (single-label), every label at or above its threshold
        (multi-label, best first, possibly none), none for an embedding."""
        if self.embedding is not None:
            return ()
        return tuple(self.labels) if self.labels is not None else (self.label,)

    @property
    def capture_to_publish_ms(self) -> float | None:
        """Event time (the window's newest media) to publication, as the service measured it."""
        return self.latency_ms.get("capture_to_publish")

    def to_dict(self) -> dict[str, Any]:
        """The JSON value as published (unknown keys included), without the Kafka coordinates."""
        value: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        for name in ("scores", "modalities", "coverage", "latency_ms"):
            value[name] = dict(value[name])
        if self.labels is not None:
            value["labels"] = dict(self.labels)
        if self.embedding is not None:
            value["embedding"] = list(self.embedding)
        value["revision"], value["final"] = self.revision, self.final
        return value | dict(self.extra)


def parse_prediction(
    value: bytes | str | Mapping[str, Any] | None,
    *,
    topic: str = "",
    partition: int = -1,
    offset: int = -1,
    timestamp_ms: int = -1,
) -> PredictionRecord:
    """Parse and check one prediction value; :class:`BadPrediction` says what is wrong with it."""
    where = f"{topic}[{partition}]@{offset}" if topic else ""
    if isinstance(value, Mapping):
        data: Any = value
    else:
        try:
            data = json.loads(value)
        except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as exc:  # TypeError: no value at all
            raise BadPrediction("not-json", str(exc), where) from None
    if not isinstance(data, Mapping):
        raise BadPrediction("not-json", f"a JSON {type(data).__name__}, not an object", where)

    def need(name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in data:
            if default is ...:
                raise BadPrediction("missing-field", f"no {name!r}", where)
            return default
        item = data[name]
        # bool is an int to Python; a true/false where a number belongs is still a broken record.
        if not isinstance(item, kind) or (isinstance(item, bool) and bool not in _kinds(kind)):
            raise BadPrediction("bad-field", f"{name!r} is {item!r}", where)
        return item

    stream_id = need("stream_id", str)
    t_start_ns = need("t_start_ns", int)
    t_end_ns = need("t_end_ns", int)
    if t_end_ns < t_start_ns:
        raise BadPrediction("bad-field", f"t_end_ns {t_end_ns} < t_start_ns {t_start_ns}", where)
    # Only multi-label (labels) and embedding (embedding) models publish these; null counts as absent.
    labels, embedding = data.get("labels"), data.get("embedding")
    if labels is not None and not (isinstance(labels, Mapping) and all(map(_is_number, labels.values()))):
        raise BadPrediction("bad-field", f"'labels' is {labels!r}, not an object of class scores", where)
    if embedding is not None and not (isinstance(embedding, list) and all(map(_is_number, embedding))):
        raise BadPrediction("bad-field", "'embedding' is not a list of numbers", where)
    return PredictionRecord(
        window_id=need("window_id", str, f"{stream_id}@{t_start_ns}"),
        stream_id=stream_id,
        t_start_ns=t_start_ns,
        t_end_ns=t_end_ns,
        label=str(need("label", (str, int))),
        score=float(need("score", (int, float))),
        scores=MappingProxyType(dict(need("scores", Mapping, _EMPTY))),
        modalities=MappingProxyType(dict(need("modalities", Mapping, _EMPTY))),
        coverage=MappingProxyType(dict(need("coverage", Mapping, _EMPTY))),
        model_version=str(need("model_version", (str, int), "")),
        closed_by=need("closed_by", str, ""),
        latency_ms=MappingProxyType(dict(need("latency_ms", Mapping, _EMPTY))),
        batch_size=need("batch_size", int, 0),
        labels=None if labels is None else MappingProxyType({str(k): float(v) for k, v in labels.items()}),
        embedding=None if embedding is None else tuple(float(v) for v in embedding),
        revision=need("revision", int, 0),
        final=need("final", bool, True),
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        extra=MappingProxyType({k: v for k, v in data.items() if k not in FIELDS and k not in OPTIONAL_FIELDS}),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class Subscription:
    """An async iterator of :class:`PredictionRecord` over a Kafka topic; also an async context manager.

    Made by :func:`subscribe`; see there for the options. Prefer ``async with``: it stops
    the consumer (and commits, in a group) however the loop ends. Iterating without it
    starts the consumer on the first ``__anext__``; call :meth:`close` when done.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        *,
        group_id: str | None = None,
        from_beginning: bool = False,
        read_committed: bool = True,
        stream_ids: Iterable[str] | None = None,
        until_end: bool = False,
        on_error: Literal["skip", "raise"] = "skip",
        finals_only: bool = False,
        **consumer_options: Any,
    ) -> None:
        if until_end and group_id is not None:
            raise ValueError("until_end needs group_id=None: a group's partitions move between members")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.finals_only = finals_only
        if isinstance(stream_ids, str):  # one stream id, not its characters
            stream_ids = (stream_ids,)
        self.stream_ids: frozenset[str] | None = None if stream_ids is None else frozenset(stream_ids)
        #: Records skipped because they were not predictions (with ``on_error="skip"``).
        self.skipped = 0
        self._keys = None if self.stream_ids is None else frozenset(s.encode() for s in self.stream_ids)
        self._until_end = until_end
        self._on_error = on_error
        self._options: dict[str, Any] = {
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            "isolation_level": "read_committed" if read_committed else "read_uncommitted",
            # A topic created after the subscriber started is found within seconds, not minutes.
            "metadata_max_age_ms": 5_000,
            **consumer_options,
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._buffer: deque[ConsumerRecord] = deque()
        self._handed: ConsumerRecord | None = None  # the record the caller is processing
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._ends: dict[TopicPartition, int] | None = None
        self._committed_at = time.monotonic()
        self._closed = False
        self._topic_checked = False
        self._positions = Positions() if group_id is None else None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe (idempotent); :class:`BrokerUnavailable` if no broker answers."""
        from aiokafka.errors import KafkaConnectionError

        from fusionstream.consumers.kafka import make_consumer
        from fusionstream.consumers.kafka.client_logs import client_quiet

        if self._consumer is not None:
            return
        if self._closed:
            raise RuntimeError("this subscription is closed")
        # group_id=None is aiokafka's group-less mode: every partition, no commits.
        consumer = make_consumer(bootstrap=self.bootstrap, group_id=self.group_id, **self._options)  # type: ignore[arg-type]
        try:
            with client_quiet():  # its own log line would repeat the error this raises
                await consumer.start()
        except KafkaConnectionError as exc:
            from fusionstream.consumers.kafka.readiness import unreachable

            await consumer.stop()
            raise await unreachable(self.bootstrap, self._options, str(exc)) from None
        consumer.subscribe([self.topic], listener=_CommitOnRevoke(self) if self.group_id else None)
        self._consumer = consumer

    async def close(self) -> None:
        """Commit what was processed (in a group) and stop the consumer. Idempotent."""
        consumer, self._consumer, self._closed = self._consumer, None, True
        if consumer is None:
            return
        try:
            await self._commit(consumer)
        finally:
            await stop_consumer(consumer)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._release()  # leaving the block normally: the last record was processed
        await self.close()

    # -- iteration ---------------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> PredictionRecord:
        if self._consumer is None:
            if self._closed:
                raise StopAsyncIteration
            await self.start()
        consumer = self._consumer
        assert consumer is not None
        self._release()
        while True:
            while self._buffer:
                message = self._buffer.popleft()
                prediction = self._accept(message)
                if prediction is not None:
                    self._handed = message
                    return prediction
                self._mark(message)  # filtered out or skipped: nothing left to do with it
            if self.group_id is not None and time.monotonic() - self._committed_at >= COMMIT_INTERVAL_S:
                await self._commit(consumer)
            if self._until_end and await self._at_end(consumer):
                raise StopAsyncIteration
            if self._positions is not None:  # group-less: partitions added must not move the others
                await self._positions.settle(consumer)
            batch = await consumer.getmany(timeout_ms=_POLL_MS)
            batch = batch if self._positions is None else self._positions.taken(consumer, batch)
            if not self._topic_checked and not batch and not consumer.assignment():
                self._topic_checked = True  # once: a mistyped name must not look like a quiet topic
                with contextlib.suppress(KafkaError):  # the broker away: nothing to say about the topic yet
                    if self.topic not in await consumer.topics():
                        log.warning("topic %s does not exist yet: waiting for it to be created", self.topic)
            # Across partitions in timestamp order; within one, in offset order (what commits rely on).
            self._buffer.extend(heapq.merge(*batch.values(), key=lambda m: m.timestamp))

    async def commit(self) -> None:
        """Commit the offsets of the predictions processed so far (a no-op without a group)."""
        if self._consumer is not None:
            await self._commit(self._consumer)

    # -- helpers -----------------------------------------------------------------------------------

    def _accept(self, message: ConsumerRecord) -> PredictionRecord | None:
        if self._keys is not None and message.key is not None and message.key not in self._keys:
            return None
        try:
            prediction = parse_prediction(
                message.value,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=message.timestamp,
            )
        except BadPrediction as exc:
            if self._on_error == "raise":
                self._handed = message  # as a prediction handed out: done once the app asks for the next
                raise
            self.skipped += 1
            log.warning("skipping a record that is not a prediction: %s", exc)
            return None
        if self.stream_ids is not None and prediction.stream_id not in self.stream_ids:
            return None
        if self.finals_only and not prediction.final:
            return None
        return prediction

    def _release(self) -> None:
        if self._handed is not None:
            self._mark(self._handed)
            self._handed = None

    def _mark(self, message: ConsumerRecord) -> None:
        if self.group_id is not None:
            from aiokafka import TopicPartition

            self._done[TopicPartition(message.topic, message.partition)] = message.offset + 1

    async def _commit(self, consumer: AIOKafkaConsumer, only: Collection[TopicPartition] | None = None) -> None:
        self._committed_at = time.monotonic()
        if self.group_id is None:
            return
        owned = consumer.assignment()
        offsets = {tp: o for tp, o in self._done.items() if tp in owned and (only is None or tp in only)}
        if not offsets:
            return
        from aiokafka.errors import CommitFailedError

        from fusionstream.consumers.kafka import CommitTimedOut, commit_within

        try:
            await commit_within(consumer, offsets)
        except CommitFailedError as exc:  # the group rebalanced meanwhile: the new owner reads them again
            log.warning("commit failed, some predictions may be delivered again: %s", exc)
        except CommitTimedOut as exc:  # a topic deleted meanwhile: aiokafka retried for ever, and close never returned
            log.warning("%s: the predictions since the last commit may be delivered again", exc)
        for tp in offsets:
            self._done.pop(tp, None)

    async def _at_end(self, consumer: AIOKafkaConsumer) -> bool:
        owned = consumer.assignment()
        if not owned:
            # No partitions: either the metadata is not in yet, or there is no such topic (nothing to read).
            if self.topic in await consumer.topics():
                return False
            # Said, so that a mistyped name does not read as an empty topic.
            log.warning("topic %s does not exist: nothing to read", self.topic)
            return True
        if self._ends is None:
            self._ends = await consumer.end_offsets(list(owned))
        for tp, end in self._ends.items():
            if await consumer.position(tp) < end:
                return False
        return True


class _CommitOnRevoke(ConsumerRebalanceListener):
    """Commits what was processed of the partitions a rebalance takes away."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        consumer = self._subscription._consumer
        if consumer is not None:
            await self._subscription._commit(consumer, only=set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


def subscribe(
    bootstrap: str,
    topic: str = DEFAULT_TOPIC,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    read_committed: bool = True,
    stream_ids: Iterable[str] | None = None,
    until_end: bool = False,
    on_error: Literal["skip", "raise"] = "skip",
    finals_only: bool = False,
    **consumer_options: Any,
) -> Subscription:
    """Predictions from ``topic`` as :class:`PredictionRecord` objects, in an async iterator.

    - ``group_id``: None reads every partition and commits nothing; a name joins that
      consumer group and commits processed offsets (at least once: after a crash, the
      predictions handed out since the last commit come again).
    - ``from_beginning``: start at the oldest retained prediction instead of new ones
      only (in a group: only where the group has no committed offset).
    - ``read_committed`` (default): skip predictions of aborted transactions and wait for open ones (the
      service's exactly-once mode publishes in transactions; an at-least-once service's are never held back).
    - ``stream_ids``: only these streams, one id or several (the key is checked before the value is parsed).
    - ``until_end``: stop once every partition is read up to its end as of the first
      assignment, instead of waiting for more (group-less only); at once if the topic
      does not exist.
    - ``on_error``: a record that is not a prediction is logged and skipped, or raised
      as :class:`BadPrediction`.
    - ``finals_only``: skip provisional predictions (a service with revisions on publishes
      one before the final of a window; docs/predictions.md#revisions).

    Other keywords go to :class:`aiokafka.AIOKafkaConsumer` (security settings, ...).
    """
    return Subscription(
        bootstrap,
        topic,
        group_id=group_id,
        from_beginning=from_beginning,
        read_committed=read_committed,
        stream_ids=stream_ids,
        until_end=until_end,
        on_error=on_error,
        finals_only=finals_only,
        **consumer_options,
    )


__all__ = ["DEFAULT_TOPIC", "PredictionRecord", "Subscription", "parse_prediction", "subscribe"]
