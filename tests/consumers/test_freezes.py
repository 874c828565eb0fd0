"""A process that stood still longer than its group's session must not commit its transaction (exactly-once).

Against the real broker: the publisher's transactional producer sends a prediction, the event loop is
blocked (what SIGSTOP, a paused VM or swapping do to the whole process), and the commit that follows is
refused: the transaction is aborted, so a read_committed reader never sees the prediction that another
member, owning the partitions by then, publishes again. And a commit that never finishes (a coordinator
that lost the producer's id, retried for ever) is fatal after the transaction timeout; that one uses a
producer that never answers, as no broker can be made to hang on demand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fusionstream.consumers.kafka import ensure_topics, make_producer
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.service.freezes import FreezeWatch, freeze_threshold_s
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.consumers.service.publisher import PredictionPublishError, Publisher
from fusionstream.consumers.subscribers import subscribe

pytestmark = pytest.mark.kafka

THRESHOLD_S = 1.0


def make_prediction(stream_id: str) -> Prediction:
    t0 = time.time_ns()
    return Prediction(stream_id=stream_id, t_start_ns=t0, t_end_ns=t0 + 1_000_000_000, label="3", score=0.9,
                      scores={str(d): 0.9 if d == 3 else 0.01 for d in range(10)}, mask=(True, True, True),
                      coverage=(1.0, 1.0, 1.0), model_version="test-1", closed_by="watermark", queue_ms=0.5,
                      inference_ms=1.0, latency_ms=2.0, batch_size=1)


class Acks:
    """Records what the broker acknowledged (the service's handover in production)."""

    def __init__(self) -> None:
        self.predictions: list[str] = []

    def prediction_acknowledged(self, prediction: Prediction) -> None:
        self.predictions.append(prediction.window_id)

    def provisional_acknowledged(self, prediction: Prediction) -> None: ...

    def dead_letter_sent(self, ref: Any) -> None: ...

    def dead_letter_acknowledged(self, ref: Any) -> None: ...


async def publish_then_commit(bootstrap: str, topic: str, transactional_id: str, *, freeze_s: float,
                              fence: bool = False) -> str:
    """Publish one prediction in a transaction, stand still ``freeze_s``, commit; the outcome in words. With
    ``fence``, the watch tells the publisher itself, and nothing commits."""
    producer = make_producer(bootstrap, transactional_id=transactional_id)
    await producer.start()
    watch = FreezeWatch(THRESHOLD_S, tick_s=0.05)
    publisher = Publisher(producer, Acks(), ServiceMetrics(), predictions_topic=topic, deadletter_topic=topic,
                          transactional=True, group_id=f"{transactional_id}-group", freezes=watch)
    ticking = asyncio.create_task(watch.run(on_freeze=publisher.fence if fence else None))
    try:
        await asyncio.sleep(0.2)
        await publisher.publish(make_prediction(transactional_id))
        time.sleep(freeze_s)  # the point: nothing on this event loop runs meanwhile
        if fence:  # an idle instance: no commit comes, the watch must act by itself
            await asyncio.sleep(0.5)
            return f"fenced: failed {publisher.failed.is_set()}, transaction open {publisher._in_transaction}"
        try:
            await publisher.commit_transaction(dict)
        except PredictionPublishError as exc:
            assert publisher.failed.is_set()
            return f"refused: {exc}"
        return "committed"
    finally:
        ticking.cancel()
        await producer.stop()


async def committed_windows(bootstrap: str, topic: str) -> list[str]:
    async with asyncio.timeout(30):
        async with subscribe(bootstrap, topic, from_beginning=True, until_end=True, read_committed=True) as records:
            return [r.stream_id async for r in records]


def test_kafka_a_transaction_after_a_freeze_is_aborted_not_committed(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.predictions"
    asyncio.run(ensure_topics(kafka_bootstrap, [topic], 1))
    steady = asyncio.run(publish_then_commit(kafka_bootstrap, topic, f"{topic_prefix}-steady", freeze_s=0.1))
    frozen = asyncio.run(publish_then_commit(kafka_bootstrap, topic, f"{topic_prefix}-frozen", freeze_s=2.0))
    idle = asyncio.run(publish_then_commit(kafka_bootstrap, topic, f"{topic_prefix}-idle", freeze_s=2.0, fence=True))
    assert idle == "fenced: failed True, transaction open False", "aborted at once, not at the next commit"
    assert steady == "committed"
    assert frozen.startswith("refused: this process stood still for 2.") and "aborted, not committed" in frozen
    # Only the steady one is visible to a read_committed reader: the frozen one's send was aborted.
    assert asyncio.run(committed_windows(kafka_bootstrap, topic)) == [f"{topic_prefix}-steady"]


def test_the_freeze_threshold_leaves_room_for_the_last_heartbeat() -> None:
    assert freeze_threshold_s(10_000, 1_000) == 8.0  # the defaults: the last heartbeat may be 1 s older
    assert freeze_threshold_s(6_000, 3_000) == 3.0  # never under half the session
    assert freeze_threshold_s(1_000, 500) == 1.0  # nor under a second: a busy loop is not a freeze


def test_a_freeze_is_seen_before_the_watch_task_has_run_again() -> None:
    watch = FreezeWatch(0.2)
    assert watch.check() is None
    time.sleep(0.3)
    frozen = watch.check()  # the commit path asks first: still counts
    assert frozen is not None and frozen >= 0.3
    time.sleep(0.01)
    assert watch.check() == frozen, "sticky: once frozen, never safe to commit again"


class _StuckProducer:
    """A transactional producer whose coordinator never answers the commit (a broker that lost its data:
    aiokafka retried the lookup ten times a second, for ever)."""

    def __init__(self) -> None:
        self.aborted = False

    async def begin_transaction(self) -> None: ...

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None: ...

    async def commit_transaction(self) -> None:
        await asyncio.Event().wait()

    async def abort_transaction(self) -> None:
        self.aborted = True


def test_a_commit_that_never_finishes_is_fatal_after_the_transaction_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusionstream.consumers.service import publisher as publishing

    monkeypatch.setattr(publishing, "COMMIT_TIMEOUT_S", 0.3)

    async def scenario() -> tuple[str, bool]:
        publisher = Publisher(_StuckProducer(), Acks(), ServiceMetrics(),  # type: ignore[arg-type]
                              predictions_topic="p", deadletter_topic="d", transactional=True, group_id="g")
        try:
            await publisher.commit_transaction(lambda: {("fs.video", 0): 5})  # type: ignore[dict-item]
        except PredictionPublishError as exc:
            return str(exc), publisher.failed.is_set()
        return "committed", False

    message, failed = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert message.startswith("the transaction did not commit within 0.3 s") and failed
