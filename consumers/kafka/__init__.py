"""The one thin place for Kafka client code: consumers, producers and topic administration.

Everything else in ``consumers`` builds its clients here, so the settings that the
design depends on (range assignment, manual commits, idempotent acks=all
producers, co-partitioned topics) are decided once.
"""

from fusionstream.consumers.kafka.admin import TopicLayoutError, delete_topics, ensure_topics
from fusionstream.consumers.kafka.clients import make_consumer, make_producer

__all__ = ["TopicLayoutError", "delete_topics", "ensure_topics", "make_consumer", "make_producer"]
