"""The service loop's own constants: not settings, because the defaults suit production and
tests or the bench change them (see docs/operations.md, Tuning)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusionstream.consumers.pipeline.prediction import Prediction

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord


@dataclass(frozen=True)
class ServiceOptions:
    """Tuning of the service loop; the defaults suit production. Everything user-facing is in Settings."""

    #: Names this instance: the exactly-once transactional id is ``<group_id>.<instance_id>``, so a
    #: restarted instance must keep it (it fences its previous incarnation) and two live instances
    #: must differ. Default: the host name.
    instance_id: str | None = None
    #: Join the group as a static member named ``instance_id`` (Kafka's ``group.instance.id``): a restart
    #: within the session timeout takes its partitions straight back, with no rebalance. Only for an
    #: explicit, unique instance id (two members with one id fence each other); a graceful stop leaves
    #: the group explicitly so its partitions move at once (docs/architecture.md#handover).
    static_membership: bool = False
    #: Address /metrics and /healthz listen on, instead of the ``metrics_host`` setting (a supervised worker's:
    #: 127.0.0.1, read by its supervisor).
    metrics_host: str | None = None
    fetch_timeout_ms: int = 100
    #: The broker answers a fetch once it has this many bytes, or after ``fetch_max_wait_ms``. Live
    #: traffic otherwise comes back a record or two per fetch, and aiokafka's (pure Python) protocol
    #: work per fetch takes the GIL from the engine; 20 ms is small beside a 1 s window.
    fetch_min_bytes: int = 65_536
    fetch_max_wait_ms: int = 20
    max_records: int = 500
    tick_interval_s: float = 0.1
    commit_interval_s: float = 0.2
    #: A topic-partition that delivers nothing for this long (of time spent fetching) stops holding
    #: back its partition's other topics (see fusionstream.consumers.service.intake).
    max_idle_ms: float = 1000.0
    #: When no owned topic-partition has had a fetch response for this long (wall time), the broker is down or
    #: unreachable: the service cannot tell a silent stream from an unread one, and its aligner's clock stands
    #: still (a fetch answers every ``fetch_max_wait_ms`` when all is well).
    unanswered_after_ms: float = 1000.0
    #: Fetching pauses above these bounds and resumes below half of them (backpressure).
    max_held_records: int = 100_000
    max_buffered_per_partition: int = 5_000
    max_backlog_windows: int | None = None  # default: settings.queue_windows
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    #: /healthz fails when windows wait this long without any prediction coming out.
    stall_after_s: float = 60.0
    #: Exactly-once: how long to wait for a committed transaction's offsets to become readable.
    visibility_timeout_s: float = 10.0
    #: Called with each prediction the broker acknowledged and its close → acknowledged milliseconds
    #: (``fusionstream bench`` times the service with it).
    on_acknowledged: Callable[[Prediction, float], None] | None = None
    #: Called per fetched topic-partition batch with the age in milliseconds of its first record
    #: (now minus the record's timestamp): how far intake runs behind the producers.
    on_fetched: Callable[[float], None] | None = None
    #: Called per fetched topic-partition batch with its first record (``fusionstream bench`` looks up when
    #: its producer was due to send it: records of a live feed reach the broker well after their timestamps).
    on_fetched_record: Callable[[ConsumerRecord], None] | None = None


__all__ = ["ServiceOptions"]
