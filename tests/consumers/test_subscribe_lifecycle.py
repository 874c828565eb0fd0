"""A subscription's life cycle at its edges: leaving it before the first record, and a bad record raised and
caught in a group at the end of its partition."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from test_subscribe import OnTopic, _send, make_prediction, write_predictions

from fusionstream.consumers.kafka import ensure_topics
from fusionstream.consumers.subscribers import BadPrediction, subscribe


@pytest.fixture
def written(kafka_bootstrap: str, topic_prefix: str) -> OnTopic:
    return write_predictions(kafka_bootstrap, f"{topic_prefix}.predictions")


def test_kafka_leaving_a_subscription_before_reading_keeps_the_blocks_own_exception(written: OnTopic) -> None:
    """Leaving a group-less subscription before its first record raised CancelledError (aiokafka awaited a task
    it had cancelled before it ran), in place of the app's own exception; a clean exit raised it too."""

    async def scenario() -> tuple[BaseException | None, bool]:
        caught: BaseException | None = None
        try:
            async with subscribe(written.bootstrap, written.topic):
                raise ValueError("the app's own error")
        except BaseException as exc:
            caught = exc
        async with subscribe(written.bootstrap, written.topic, from_beginning=True):
            pass
        task = asyncio.current_task()
        return caught, task is not None and task.cancelling() > 0

    caught, cancelled = asyncio.run(scenario())
    assert isinstance(caught, ValueError) and str(caught) == "the app's own error", repr(caught)
    assert not cancelled


def test_kafka_a_bad_record_raised_and_caught_in_a_group_is_committed_past_even_at_a_partitions_end(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A record raised as BadPrediction was marked done only when a later record of its partition was handed
    out: last in its partition, it was raised again at every restart, though the app had caught it and gone on."""
    import contextlib

    topic, group = f"{topic_prefix}.tail-junk", f"{topic_prefix}-junk"
    good = make_prediction("cam-1", 0, time.time_ns()).to_json(capture_to_publish_ms=1.0)

    async def scenario() -> tuple[list[str], list[str]]:
        await ensure_topics(kafka_bootstrap, [topic], 1)
        await _send(kafka_bootstrap, topic, [(b"cam-1", good), (b"cam-1", b"junk-tail")])

        async def run() -> list[str]:
            seen: list[str] = []
            async with subscribe(kafka_bootstrap, topic, group_id=group, from_beginning=True,
                                 on_error="raise") as predictions:
                while True:
                    try:
                        async with asyncio.timeout(4):
                            seen.append((await anext(predictions)).window_id)
                    except BadPrediction as bad:
                        seen.append(f"bad {bad.where}")  # caught: the app goes on to the next record
                    except TimeoutError:
                        break
                with contextlib.suppress(TimeoutError):  # nothing more is coming
                    async with asyncio.timeout(0.1):
                        await anext(predictions)
            return seen

        return await run(), await run()

    first, second = asyncio.run(scenario())
    assert len(first) == 2 and first[1] == f"bad {topic}[0]@1", first
    assert second == [], "the caught bad record came again after a restart"


def test_a_bootstrap_that_is_not_an_address_is_refused_at_the_call() -> None:
    """An int or None reached aiokafka at the first record, as a bare TypeError with a consumer left open."""
    for bad in (9092, None, ["127.0.0.1:9092", 9093]):
        with pytest.raises(TypeError, match="bootstrap must be 'host:port"):
            subscribe(bad)  # type: ignore[arg-type]
    for bad in ("127.0.0.1:9092,", "", [], "localhost:notaport", "localhost:99999"):
        with pytest.raises(ValueError, match="bootstrap must be"):
            subscribe(bad)  # type: ignore[arg-type]
    assert subscribe(["127.0.0.1:9092", " 127.0.0.1:9093"]).bootstrap == "127.0.0.1:9092,127.0.0.1:9093"
    # An empty topic got past as far as the broker ("'' is not a valid topic name", logged at ERROR).
    with pytest.raises(ValueError, match="topic must be a topic's name, not ''"):
        subscribe("127.0.0.1:9092", "", until_end=True)


def test_an_unreachable_broker_names_the_address_given_to_subscribe() -> None:
    """The message named FUSIONSTREAM_BOOTSTRAP_SERVERS, which subscribe() does not read."""
    from fusionstream.consumers.subscribers import BrokerUnavailable

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"

    async def start() -> None:
        async with subscribe(address, request_timeout_ms=2_000) as predictions:
            await anext(predictions)

    with pytest.raises(BrokerUnavailable) as unreachable:
        asyncio.run(asyncio.wait_for(start(), 60))
    message = str(unreachable.value)
    assert address in message and "given to subscribe()" in message, message
    assert "FUSIONSTREAM_BOOTSTRAP_SERVERS" not in message, message


def test_the_subscriber_api_imports_neither_numpy_nor_the_settings_nor_the_producers() -> None:
    """An app that only reads predictions imported the whole pipeline's parts on its way (0.7-1.6 s)."""
    import subprocess
    import sys

    heavy = ("numpy", "pydantic", "fusionstream.consumers.settings", "fusionstream.consumers.producers.publish",
             "fusionstream.consumers.kafka.admin", "fusionstream.stream.records")
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom fusionstream.consumers.subscribers import subscribe, "
         "BadPrediction, BrokerAuthError, BrokerUnavailable, PredictionRecord\n"
         f"print(sorted(name for name in {heavy!r} if name in sys.modules))"],
        capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
