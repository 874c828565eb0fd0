"""Topic administration: create the topics the service uses, with the layout it relies on.

The input topics must have equal partition counts (co-partitioning, docs/wire-format.md): a
stream's video, audio and text then land on the same partition number and the range
assignor gives all three to one consumer. :func:`ensure_topics` creates what is
missing and refuses a topic that exists with another partition count, instead of
letting the service run with modalities split across consumers.

:func:`make_admin` is the one place an admin client is built, so every one of them
authenticates with the SASL/TLS settings like the consumers and producers do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    PolicyViolationError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)

from fusionstream.consumers.kafka.client_logs import client_quiet
from fusionstream.consumers.kafka.errors import BrokerAuthError, MissingTopicsError
from fusionstream.consumers.kafka.stop import stop_consumer
from fusionstream.stream.errors import FusionStreamError

_POLL_S = 0.1
#: Answers to CreateTopics that mean "you may not", not "try again".
_NOT_ALLOWED = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError, PolicyViolationError)
#: Where the docs say how to create the topics up front.
_TOPICS_DOC = "docs/operations.md, Topics"


class TopicLayoutError(FusionStreamError):
    """A topic exists with a partition count other than the one required.

    Not retriable: the topic has to be recreated, or the service configured with the
    topic's partition count.
    """


async def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    *,
    replication: int = 1,
    timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
    any_partitions: Sequence[str] = (),
    create: bool = True,
    adopt: bool = False,
) -> int:
    """Create the missing ``topics`` with ``partitions`` partitions each; return when all are usable, with
    the partition count they have.

    "Usable" means every partition has a leader that serves it, so a producer or consumer
    started right after this call does not race the topic creation. Raises
    :class:`TopicLayoutError` if a topic exists with another partition count, unless it is
    one of ``any_partitions`` (an output topic, say: it is created with ``partitions`` if
    missing, and any count it already has will do).
    ``security``: aiokafka's authentication and TLS arguments (``Settings.kafka_security()``).
    With ``create=False``, or when the cluster refuses to create them (ACLs, a creation policy),
    missing topics raise :class:`~fusionstream.consumers.kafka.errors.MissingTopicsError`.
    With ``adopt``, existing topics that all have one count other than ``partitions`` are taken as they
    are (missing ones are created with their count, which is returned): ``partitions`` is then only the
    count of topics that do not exist yet. Existing topics that disagree among themselves are refused.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    names = list(dict.fromkeys(topics))
    flexible = set(any_partitions)
    admin = make_admin(bootstrap, security)
    try:
        await admin.start()
        layout = await _describe(admin, names)
        if adopt:
            partitions = _agreed_count(layout, partitions, flexible)
        _check_layout(layout, partitions, flexible)
        missing = [name for name, (count, _) in layout.items() if count is None]
        if missing and not create:
            raise MissingTopicsError(
                f"topics {', '.join(missing)} do not exist and create_topics is off: create them first "
                f"({_TOPICS_DOC}), or set FUSIONSTREAM_CREATE_TOPICS=true"
            )
        if missing:
            response = await admin.create_topics([NewTopic(name, partitions, replication) for name in missing])
            refused: list[str] = []
            for topic, code, *message in response.topic_errors:
                error = for_code(code)
                detail = message[0] if message and message[0] else error.__name__
                if code and error in _NOT_ALLOWED:
                    refused.append(f"{topic} ({detail})")
                # Already there: someone created it meanwhile; its layout is checked below.
                elif code and error is not TopicAlreadyExistsError:
                    raise error(f"creating topic {topic!r}: {detail}")
            if refused:
                raise MissingTopicsError(
                    f"topics do not exist and the cluster refused to create them: {', '.join(refused)}; create "
                    f"them first with an account that may ({_TOPICS_DOC}), or allow this one to create topics"
                )
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            layout = await _describe(admin, names)
            _check_layout(layout, partitions, flexible)
            waiting = [name for name, (_, led) in layout.items() if not led]
            if not waiting:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics {waiting} have no leader for every partition after {timeout_s}s")
            await asyncio.sleep(_POLL_S)
    finally:
        await admin.close()
    if missing:
        await _until_served(bootstrap, [TopicPartition(t, p) for t in missing for p in range(partitions)], security,
                            timeout_s)
    return partitions


async def _until_served(
    bootstrap: str, partitions: list[TopicPartition], security: Mapping[str, Any] | None, timeout_s: float
) -> None:
    """Return once each partition's leader answers for it (a ListOffsets request succeeds).

    The metadata names a new partition's leader a moment before that broker serves it: until
    then produce and fetch requests get NOT_LEADER_OR_FOLLOWER and are retried (seen on Kafka
    4.4 in most topic creations). Retried sends reorder a fast replay's modalities by seconds of
    event time, enough to make good records late.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **(security or {}))
    await consumer.start()
    try:
        # aiokafka retries a NOT_LEADER answer itself, until the leader serves the partition.
        await asyncio.wait_for(consumer.end_offsets(partitions), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"new partitions not served by their leaders after {timeout_s}s") from None
    finally:
        await stop_consumer(consumer)


async def delete_topics(
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 30.0, security: Mapping[str, Any] | None = None
) -> None:
    """Delete ``topics``; topics that do not exist are ignored. Meant for tests and tooling."""
    names = list(dict.fromkeys(topics))
    if not names:
        return
    admin = make_admin(bootstrap, security)
    try:
        await admin.start()
        response = await admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
        for topic, code in response.topic_error_codes:
            if code and for_code(code) is not UnknownTopicOrPartitionError:
                raise for_code(code)(f"deleting topic {topic!r}")
    finally:
        await admin.close()


def make_admin(
    bootstrap: str, security: Mapping[str, Any] | None = None, *, client_id: str = "fusionstream-admin",
    **kwargs: Any,
) -> AIOKafkaAdminClient:
    """An unstarted admin client; ``security`` is ``Settings.kafka_security()``, any other keyword goes to
    :class:`aiokafka.admin.AIOKafkaAdminClient`. Call it from a coroutine (aiokafka binds the running loop)."""
    # A secured cluster refuses an admin client without its credentials as it would a consumer.
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, **(security or {}), **kwargs)


async def partition_count(bootstrap: str, topic: str, security: Mapping[str, Any] | None = None, *,
                          timeout_s: float = 5.0) -> int | None:
    """How many partitions ``topic`` has, or None when it does not exist or the broker does not answer in
    ``timeout_s``."""
    admin = make_admin(bootstrap, security, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            with client_quiet():  # a broker not up yet is the caller's to say (its ERROR line said it first)
                await admin.start()
            return (await _describe(admin, [topic]))[topic][0]
    except (TimeoutError, KafkaError, OSError):
        return None
    finally:
        await admin.close()


async def describe_topics(admin: AIOKafkaAdminClient, names: Sequence[str]) -> list[dict[str, Any]]:
    """``admin.describe_topics(names)`` without creating them: aiokafka's asks the broker to auto-create a topic
    it looks up, and a broker with ``auto.create.topics.enable`` (Kafka's default) then made a missing one with
    its own partition count, which every later check took for the operator's."""
    from aiokafka.protocol.metadata import MetadataRequest

    response = await admin._send_request(MetadataRequest(list(names), allow_auto_topic_creation=False))
    topics: list[dict[str, Any]] = response.to_object()["topics"]
    # A topic this client may not describe is no missing topic: said as "missing", an operator went looking for
    # topics that were there (and serve said the cluster refused to create them).
    denied = [t["topic"] for t in topics if t["error_code"] == TopicAuthorizationFailedError.errno]
    if denied:
        raise BrokerAuthError(f"the broker refuses this client topic {', '.join(denied)} (an ACL denies DESCRIBE): "
                              "grant its principal DESCRIBE on every topic it uses, READ on those it reads and WRITE "
                              "on those it publishes to")
    return topics


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, tuple[int | None, bool]]:
    """Per topic: its partition count (None if it does not exist) and whether every partition has a leader."""
    layout: dict[str, tuple[int | None, bool]] = dict.fromkeys(names, (None, False))
    described = await describe_topics(admin, names)
    for topic in described:
        if topic["error_code"] or topic["topic"] not in layout:
            continue
        parts = topic["partitions"]
        led = all(not p["error_code"] and p["leader"] >= 0 for p in parts)
        layout[topic["topic"]] = (len(parts), led)
    return layout


def _agreed_count(layout: dict[str, tuple[int | None, bool]], partitions: int, flexible: set[str]) -> int:
    """The one partition count the existing co-partitioned topics have, or ``partitions`` if none exists yet
    (or they disagree: :func:`_check_layout` then names them)."""
    counts = {count for name, (count, _) in layout.items() if count is not None and name not in flexible}
    return counts.pop() if len(counts) == 1 else partitions


def _check_layout(layout: dict[str, tuple[int | None, bool]], partitions: int, flexible: set[str]) -> None:
    existing = {name: count for name, (count, _) in layout.items() if count is not None and name not in flexible}
    if len(set(existing.values())) > 1:  # no count setting can serve them: they disagree among themselves
        found = ", ".join(f"{name} has {count}" for name, count in existing.items())
        raise TopicLayoutError(f"the input topics must have one partition count (co-partitioning), but {found}; "
                               "recreate those that differ (fusionstream topics describe shows them)")
    wrong = {
        name: count for name, (count, _) in layout.items()
        if count is not None and count != partitions and name not in flexible
    }
    if wrong:
        found = ", ".join(f"{name} has {count}" for name, count in wrong.items())
        raise TopicLayoutError(
            f"topics must have {partitions} partitions each (co-partitioning of the input topics), "
            f"but {found}; recreate them or configure the service with their partition count"
        )


def check_copartitioned(cluster: ClusterMetadata, topics: Sequence[str]) -> None:
    """Raise :class:`TopicLayoutError` when a client's metadata gives ``topics`` (the input topics) other partition
    counts: partitions added to one of them while the service ran."""
    # A topic missing from the metadata (deleted, being recreated) is no count: the service waits for it.
    counts = {topic: len(found) for topic in topics if (found := cluster.partitions_for_topic(topic))}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{topic} has {count}" for topic, count in counts.items())
        raise TopicLayoutError(f"the input topics' partition counts changed while serving: {listed}; they must have "
                               "one count (co-partitioning: a stream's records on the same partition of each): give "
                               "them all the same count, then restart")
