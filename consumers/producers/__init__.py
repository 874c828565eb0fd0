"""Producers: publish records from files, devices, captions or the synthetic source to the input topics.

:func:`publish` is the one place that turns records into Kafka messages (key = stream id,
timestamp = event time in ms, value = wire bytes, topic by modality); the
`fusionstream produce` commands (:mod:`fusionstream.consumers.producers.cli`) and the benchmarks
call it with the record iterators of :mod:`fusionstream.consumers.producers.sources`.
"""

from fusionstream.consumers.producers.errors import BrokerUnavailable, PublishError
from fusionstream.consumers.producers.publish import Published, prepare_topics, producer_for, publish, topics_of

__all__ = ["BrokerUnavailable", "PublishError", "Published", "prepare_topics", "producer_for", "publish", "topics_of"]
