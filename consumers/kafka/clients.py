"""Consumer and producer factories with the settings the service's guarantees rest on.

Both factories must be called from a coroutine: aiokafka binds a client to the
running event loop when it is constructed.

Static membership (KIP-345): a consumer made with ``group_instance_id`` that restarts under the same id
takes its partitions straight back, without waiting out its dead incarnation's session. aiokafka never
sends LeaveGroup for a static member, so a static member that stops for good calls :func:`leave_group`,
or its partitions stay with it until the session times out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String
from aiokafka.structs import OffsetAndMetadata

from fusionstream.consumers.kafka.client_logs import lower_routine_client_errors

log = logging.getLogger(__name__)

CLIENT_ID = "fusionstream"
#: Longest a consumer's offset commit may take (:func:`commit_within`).
COMMIT_TIMEOUT_S = 10.0

# Settings a caller may not change: the service is only correct with these values.
_CONSUMER_FIXED: dict[str, Any] = {
    # Co-partitioning (docs/wire-format.md): partition n of fs.video, fs.audio and fs.text hold the
    # same streams, so one consumer must own all three. The range assignor hands out
    # same-numbered partitions of equally partitioned topics together; aiokafka's default,
    # round-robin, spreads them over the group and a stream's modalities would be
    # aligned by different consumers.
    "partition_assignment_strategy": (RangePartitionAssignor,),
    # Offsets are committed by the commit protocol (docs/architecture.md) only once no open window
    # or unpublished prediction needs them; auto-commit would commit what was merely
    # fetched, and a crash would lose those records.
    "enable_auto_commit": False,
}
_PRODUCER_FIXED: dict[str, Any] = {
    # A prediction counts as published (and its input offsets become committable) only
    # when every in-sync replica has it ...
    "acks": "all",
    # ... and retries after a lost acknowledgement must not write it twice or reorder it.
    "enable_idempotence": True,
}


def make_consumer(*topics: str, bootstrap: str, group_id: str, **kwargs: Any) -> AIOKafkaConsumer:
    """An unstarted consumer in ``group_id`` subscribed to ``topics``.

    It always uses range partition assignment and manual commits (see the comments on
    ``_CONSUMER_FIXED``); passing another ``partition_assignment_strategy`` or
    ``enable_auto_commit`` raises ``ValueError``. A group without committed offsets
    starts from the earliest record (``auto_offset_reset="earliest"``), so nothing
    produced before the service first started is skipped; a subscriber that only
    wants new records may pass ``auto_offset_reset="latest"``. Any other keyword goes
    to :class:`aiokafka.AIOKafkaConsumer`.
    """
    _reject_overrides(kwargs, _CONSUMER_FIXED)
    lower_routine_client_errors()  # every client of ours: a broker restart is a few warnings, not a flood
    options: dict[str, Any] = {"client_id": CLIENT_ID, "auto_offset_reset": "earliest", **kwargs}
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group_id, **options, **_CONSUMER_FIXED)


class KeyPartitioner(DefaultPartitioner):
    """aiokafka's default partitioner (murmur2 of the key, as Java's, so a stream's three modalities share a
    partition number), with each key's hash kept: aiokafka computes it in Python at every send, 10 µs or
    more, and a producer sends the same few stream ids over and over."""

    #: Keys remembered at most (a stream id is a few bytes; beyond this the memory starts over).
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:  # type: ignore[override]
        if key is None:
            return DefaultPartitioner.__call__(key, all_partitions, available)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self.MAX_KEYS:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


def make_producer(bootstrap: str, **kwargs: Any) -> AIOKafkaProducer:
    """An unstarted idempotent producer that waits for ``acks="all"``.

    Passing other ``acks`` or ``enable_idempotence`` raises ``ValueError``; any other
    keyword (``transactional_id`` for the exactly-once mode, ``linger_ms``, ...) goes to
    :class:`aiokafka.AIOKafkaProducer`.
    """
    _reject_overrides(kwargs, _PRODUCER_FIXED)
    lower_routine_client_errors()
    options: dict[str, Any] = {"client_id": CLIENT_ID, "partitioner": KeyPartitioner(), **kwargs}
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **options, **_PRODUCER_FIXED)


async def leave_group(admin: AIOKafkaAdminClient, group_id: str, group_instance_id: str) -> None:
    """Remove the static member ``group_instance_id`` from ``group_id`` now (LeaveGroup v3, KIP-345), so the
    group hands its partitions to the other members at once instead of after its session timeout.

    Sent by a started admin client after the member's consumer stopped (its heartbeats could otherwise
    rejoin it). Raises the broker's error (``UnknownMemberIdError`` if the member is already gone)."""
    coordinator = await admin.find_coordinator(group_id)
    response = await admin._send_request(_LeaveStatic(group_id, group_instance_id), coordinator)
    for code in (response.error_code, *(member[2] for member in response.members)):
        if code:
            raise for_code(code)(f"LeaveGroup of {group_instance_id!r} from group {group_id!r}")


class _LeaveGroupResponse_v3(Response):  # noqa: N801 (aiokafka's naming of protocol versions)
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32), ("error_code", Int16),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")),
                          ("error_code", Int16))),
    )


class _LeaveGroupRequest_v3(RequestStruct):  # noqa: N801
    # aiokafka 0.14 has LeaveGroup v0-v1 only; v3 (Kafka 2.4+) is the first that names members by instance id.
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _LeaveStatic(Request[_LeaveGroupRequest_v3]):
    API_KEY = 13

    def __init__(self, group_id: str, group_instance_id: str) -> None:
        self._group_id = group_id
        self._instance_id = group_instance_id

    def build(self, request_struct_class: type[_LeaveGroupRequest_v3]) -> _LeaveGroupRequest_v3:
        # An empty member id: the broker removes whichever member holds the instance id (as Kafka's
        # AdminClient.removeMembersFromConsumerGroup does); our consumer has stopped, its id is moot.
        return request_struct_class(self._group_id, [("", self._instance_id)])


def _reject_overrides(kwargs: dict[str, Any], fixed: dict[str, Any]) -> None:
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"{key}={kwargs[key]!r} is not allowed: fusionstream needs {key}={value!r}")
        kwargs.pop(key, None)


class CommitTimedOut(KafkaError):
    """An offset commit that did not finish in :data:`COMMIT_TIMEOUT_S` (the records since the last commit
    that did are delivered again after a restart or a rebalance)."""

    retriable = True


async def commit_within(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int | OffsetAndMetadata]
) -> None:
    """``consumer.commit(offsets)``, given up after :data:`COMMIT_TIMEOUT_S` with :class:`CommitTimedOut`.

    aiokafka retries a commit for ever: to topics deleted under the consumer, or a broker back without its
    data. A stop that waits on one (a service's last commit, a subscriber's close) never ended then."""
    try:
        async with asyncio.timeout(COMMIT_TIMEOUT_S):
            await consumer.commit(dict(offsets))
    except TimeoutError:
        _quiet_orphaned_commits(asyncio.get_running_loop())
        raise CommitTimedOut(f"the commit did not finish in {COMMIT_TIMEOUT_S:g} s (the broker paused or "
                             "unreachable, the topics deleted, or a broker back without its data)") from None


def _quiet_orphaned_commits(loop: asyncio.AbstractEventLoop) -> None:
    """aiokafka runs each commit request in a shielded task: given up on, it goes on, and when it fails
    (``UnknownMemberIdError`` once a paused broker is back and the group moved on) nothing awaits it, so
    asyncio logged "Task exception was never retrieved" with a traceback, as an ERROR. Say it in one line:
    :func:`commit_within`'s caller has already reported the commit as not done."""
    if loop.get_exception_handler() is not None:
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error, task = context.get("exception"), context.get("future")
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        if isinstance(error, KafkaError) and getattr(coro, "__qualname__", "").endswith("_do_commit_offsets"):
            log.info("a commit given up on ended later: %s", error)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
