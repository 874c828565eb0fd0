"""The one pipeline: decode → align → micro-batch → infer → predictions.

The embedded demo feeds it from local sources; the Kafka service feeds it from
topics and publishes what comes out. Neither has a pipeline of its own.
"""

from fusionstream.consumers.pipeline.core import DeadLetter, Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction

__all__ = ["DeadLetter", "Pipeline", "Prediction"]
