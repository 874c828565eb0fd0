"""The topics the service writes to, watched while its sends wait: a deleted one stops it at once, saying so.

A predictions or dead-letter topic deleted under a running service (an operator's mistake, a broker back
without its data) is not an outage aiokafka recovers from: its sender retried the held batches in a tight
loop (26,000 "Topic … not found in cluster metadata" a 10 s, most of a core) until ``produce_hold_s``
(300 s) ran out, and the service then stopped on ``NotLeaderForPartitionError``, which named neither the
topic nor the cause. Here, once no send has been acknowledged for :data:`STALL_S` while some wait, the
broker is asked whether the output topics exist; a missing one stops the service with one line naming it.
Its restart creates it again (``create_topics``, on by default) and publishes the windows since the last
commit again: recreating it in place would leave the producer's sequence numbers (and, exactly-once, its
transaction) on partitions that no longer exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from fusionstream.consumers.kafka.admin import describe_topics
from fusionstream.consumers.kafka.errors import MissingTopicsError

#: Seconds without an acknowledgement, sends waiting, before the topics are looked up (then once per as long).
STALL_S = 5.0


async def missing_topics(admin: AIOKafkaAdminClient, names: Sequence[str]) -> list[str]:
    """Those of ``names`` the broker says do not exist (none when it does not answer: an outage, not this)."""
    try:
        async with asyncio.timeout(STALL_S):
            described: list[Mapping[str, Any]] = await describe_topics(admin, names)
    except (TimeoutError, KafkaError, OSError):
        return []
    return [t["topic"] for t in described if t["error_code"] == UnknownTopicOrPartitionError.errno]


async def watch_outputs(admin: AIOKafkaAdminClient, names: Sequence[str], stalled_for: Callable[[], float],
                        fail: Callable[[BaseException], None], *, create_topics: bool) -> None:
    """``fail`` with :class:`MissingTopicsError`, and raise it, when sends have waited :data:`STALL_S` and an output
    topic is gone (in two lookups in a row: a broker just back may answer one before it has loaded its topics).
    ``fail`` (the publisher's) also ends a graceful stop or a revocation that waits for those sends."""
    seen_missing: set[str] = set()
    while True:
        await asyncio.sleep(STALL_S)
        if stalled_for() < STALL_S:
            seen_missing.clear()
            continue
        now_missing = set(await missing_topics(admin, names))
        missing, seen_missing = sorted(now_missing & seen_missing), now_missing
        if missing:
            after = ("a restart creates it again and publishes the windows since the last commit again"
                     if create_topics else "create it again (create_topics is off), then restart")
            error = MissingTopicsError(f"topic {', '.join(missing)} no longer exists (deleted, or the broker lost "
                                       f"its data): nothing can be published to it; {after}")
            fail(error)
            raise error
