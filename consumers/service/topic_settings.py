"""What the service reads of its topics' settings at start, beyond their partitions (best effort: a broker that
refuses ``DescribeConfigs`` to this user leaves the defaults).

- **The dead-letter topic's record size limit** (``max.message.bytes``): a dead letter carries the original
  record, and an input topic raised for camera-sized frames (wire-format.md) takes records the dead-letter
  topic, or this producer (``max_request_size``, 1 MiB), refuses. Such a dead letter failed, the service
  stopped without committing past it, and every restart stopped on it again. A record larger than the limit
  is now cut to fit, with an ``fs.truncated`` header giving its size (:meth:`Publisher.dead_letter`).
- **Compacted input topics** (``cleanup.policy=compact``): Kafka keeps only the newest record of each key, the
  stream id, so a restart or a backlog finds most of a stream's media gone. A WARNING names them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

#: aiokafka's ``max_request_size`` unless the producer was given another.
PRODUCER_DEFAULT_MAX_BYTES = 1_048_576


async def topic_settings(admin: AIOKafkaAdminClient, names: Sequence[str],
                         timeout_s: float = 5.0) -> dict[str, dict[str, str]]:
    """Per topic of ``names`` that exists, its configuration (name → value); {} when the broker does not say."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in dict.fromkeys(names)]
    try:
        async with asyncio.timeout(timeout_s):
            responses = await admin.describe_configs(resources)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.debug("cannot read the topics' settings: %r", exc)
        return {}
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _, _, name, entries in response.resources:
            if not error_code:
                found[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return found


def dead_letter_max_bytes(settings: dict[str, dict[str, str]], topic: str, producer_max_bytes: int) -> int:
    """The largest record this producer can write to the dead-letter ``topic``, key and headers included."""
    limit = settings.get(topic, {}).get("max.message.bytes")
    return min(producer_max_bytes, int(limit)) if limit is not None and limit.isdigit() else producer_max_bytes


def warn_of_compaction(settings: dict[str, dict[str, str]], input_topics: Sequence[str]) -> list[str]:
    """The input topics that compaction thins (logged as a WARNING each)."""
    compacted = [name for name in input_topics if "compact" in settings.get(name, {}).get("cleanup.policy", "")]
    for name in compacted:
        log.warning("input topic %s has cleanup.policy=%s: Kafka keeps only the newest records of each stream "
                    "(the key), so a restart or a backlog finds most of its media gone; input topics need "
                    "cleanup.policy=delete (docs/operations.md#failure-modes)", name, settings[name]["cleanup.policy"])
    return compacted
