"""Another consumer group's fusionstream service on the same input topics and predictions topic, said at start
and every 5 minutes while serving.

Each consumer group reads every record of its topics, so a second deployment started with another group id on
the same input topics publishes every window again. An outside operator's accident did: 988 windows came twice in
40 s, from two models, and subscribers that keep the first copy of a window mixed them. Nothing said so.

A service's checkpoints (the metadata of its committed offsets: :mod:`.checkpoint`) name its predictions topic.
At start the service looks for consumer groups other than its own with committed offsets on its input topics
whose checkpoint names the same predictions topic, and logs a WARNING naming each. A group that publishes
elsewhere (a model tried on live traffic, as operations.md suggests) is not named. Whether the group runs now is
not asked (aiokafka 0.14 cannot read Kafka 4's DescribeGroups answer): a group stopped for good keeps its
offsets for the broker's ``offsets.retention.minutes`` (7 days), and is named until then, as one that "if it
still runs" publishes twice. Best effort and bounded in time: a broker that refuses to list groups or their
offsets to this user says nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from fusionstream.consumers.service.checkpoint import Checkpoint

log = logging.getLogger(__name__)

#: At most this many other groups are asked for their offsets (one request each, this many at once).
MAX_GROUPS = 200
CONCURRENT = 20
#: Seconds between two looks while serving.
EVERY_S = 300.0


async def other_services(admin: AIOKafkaAdminClient, input_topics: Sequence[str], own_group: str,
                         predictions_topic: str) -> list[str]:
    """Groups other than ``own_group`` whose checkpoints on ``input_topics`` name ``predictions_topic``."""
    listed = await admin.list_consumer_groups()
    candidates = sorted({group for group, protocol, *_ in listed if group != own_group and protocol == "consumer"})
    inputs = set(input_topics)
    asking = asyncio.Semaphore(CONCURRENT)

    async def publishes_there(group: str) -> bool:
        async with asking:
            offsets = await admin.list_consumer_group_offsets(group)
        return any(tp.topic in inputs and Checkpoint.output_of(committed.metadata) == predictions_topic
                   for tp, committed in offsets.items())

    chosen = candidates[:MAX_GROUPS]
    answers = await asyncio.gather(*(publishes_there(group) for group in chosen))
    return [group for group, there in zip(chosen, answers, strict=True) if there]


async def warn_of_other_services(admin: AIOKafkaAdminClient, input_topics: Sequence[str], own_group: str,
                                 predictions_topic: str, timeout_s: float = 5.0,
                                 already: Collection[str] = ()) -> list[str]:
    """Log a WARNING for each group :func:`other_services` finds that is not ``already`` named; the groups."""
    try:
        async with asyncio.timeout(timeout_s):
            groups = await other_services(admin, input_topics, own_group, predictions_topic)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.debug("cannot look for other services on the input topics: %r", exc)
        return []
    for group in groups:
        if group in already:
            continue
        log.warning("consumer group %s, another fusionstream service, has read %s and published to %s too: "
                    "if it still runs, every window is published twice, once by each group (by two models, if "
                    "theirs differ). Stop one, or give it its own predictions topic "
                    "(docs/operations.md#upgrading-a-model)", group, ", ".join(input_topics), predictions_topic)
    return groups


async def watch_other_services(admin: AIOKafkaAdminClient, input_topics: Sequence[str], own_group: str,
                               predictions_topic: str, named: Collection[str], every_s: float = EVERY_S) -> None:
    """Look again every ``every_s``, and name each group found since: a second deployment started after this
    one (another group: no rebalance here tells of it) was otherwise named only by the one started last."""
    seen = set(named)
    while True:
        await asyncio.sleep(every_s)
        try:
            seen |= set(await warn_of_other_services(admin, input_topics, own_group, predictions_topic, already=seen))
        except Exception as exc:  # a courtesy to the operator: never a reason to stop serving
            log.debug("cannot look for other services on the input topics: %r", exc)


__all__ = ["other_services", "warn_of_other_services", "watch_other_services"]
