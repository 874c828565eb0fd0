"""Consumer and producer factories with the settings the service's guarantees rest on.

Both factories must be called from a coroutine: aiokafka binds a client to the
running event loop when it is constructed.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

CLIENT_ID = "fusionstream"

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
    options: dict[str, Any] = {"client_id": CLIENT_ID, "auto_offset_reset": "earliest", **kwargs}
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group_id, **options, **_CONSUMER_FIXED)


def make_producer(bootstrap: str, **kwargs: Any) -> AIOKafkaProducer:
    """An unstarted idempotent producer that waits for ``acks="all"``.

    Passing other ``acks`` or ``enable_idempotence`` raises ``ValueError``; any other
    keyword (``transactional_id`` for the exactly-once mode, ``linger_ms``, ...) goes to
    :class:`aiokafka.AIOKafkaProducer`.
    """
    _reject_overrides(kwargs, _PRODUCER_FIXED)
    options: dict[str, Any] = {"client_id": CLIENT_ID, **kwargs}
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **options, **_PRODUCER_FIXED)


def _reject_overrides(kwargs: dict[str, Any], fixed: dict[str, Any]) -> None:
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"{key}={kwargs[key]!r} is not allowed: fusionstream needs {key}={value!r}")
        kwargs.pop(key, None)
