"""The Kafka inference service (`fusionstream serve`): consume, align, infer, publish, commit.

- :mod:`~fusionstream.consumers.service.service`: the service loop, rebalances, backpressure;
- :mod:`~fusionstream.consumers.service.offsets`: which offsets may be committed (at-least-once);
- :mod:`~fusionstream.consumers.service.checkpoint`: what is stored with each committed offset;
- :mod:`~fusionstream.consumers.service.publisher`: predictions, dead letters, transactions;
- :mod:`~fusionstream.consumers.service.metrics`: Prometheus metrics, ``/metrics`` and ``/healthz``.
"""

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.main import run_service
from fusionstream.consumers.service.offsets import OffsetTracker
from fusionstream.consumers.service.service import InferenceService, ServiceOptions

__all__ = ["Checkpoint", "InferenceService", "OffsetTracker", "ServiceOptions", "run_service"]
