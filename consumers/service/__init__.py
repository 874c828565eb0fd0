"""The Kafka inference service (`fusionstream serve`): consume, align, infer, publish, commit.

- :mod:`~consumers.service.service`: the service loop, rebalances, backpressure;
- :mod:`~consumers.service.offsets`: which offsets may be committed (at-least-once);
- :mod:`~consumers.service.checkpoint`: what is stored with each committed offset;
- :mod:`~consumers.service.publisher`: predictions, dead letters, transactions;
- :mod:`~consumers.service.metrics`: Prometheus metrics, ``/metrics`` and ``/healthz``.
"""

from consumers.service.checkpoint import Checkpoint
from consumers.service.main import run_service
from consumers.service.offsets import OffsetTracker
from consumers.service.service import InferenceService, ServiceOptions

__all__ = ["Checkpoint", "InferenceService", "OffsetTracker", "ServiceOptions", "run_service"]
