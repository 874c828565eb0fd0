"""The Kafka inference service (`fusionstream serve`): consume, align, infer, publish, commit.

- :mod:`~fusionstream.consumers.service.service`: the service's lifecycle and rebalances;
- :mod:`~fusionstream.consumers.service.feeder`: fetching, event-time intake, dead letters, backpressure;
- :mod:`~fusionstream.consumers.service.handover`: the one owner of what a rebalance hands over
  (partitions, streams, held offsets, published times, checkpoints);
- :mod:`~fusionstream.consumers.service.offsets`: which offsets may be committed (at-least-once);
- :mod:`~fusionstream.consumers.service.checkpoint`: what is stored with each committed offset;
- :mod:`~fusionstream.consumers.service.commits`: committing, and reading commits back;
- :mod:`~fusionstream.consumers.service.publisher`: predictions, dead letters, transactions;
- :mod:`~fusionstream.consumers.service.metrics`: Prometheus metrics, ``/metrics`` and ``/healthz``;
- :mod:`~fusionstream.consumers.service.health`: what ``/healthz`` and the gauges say;
- :mod:`~fusionstream.consumers.service.main`: ``serve`` as a process (signals, exit status, one-line errors).
"""

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.service.main import run_service
from fusionstream.consumers.service.offsets import OffsetTracker
from fusionstream.consumers.service.options import ServiceOptions
from fusionstream.consumers.service.service import InferenceService

__all__ = ["Checkpoint", "Handover", "InferenceService", "OffsetTracker", "ServiceOptions", "run_service"]
