"""The one thin place for Kafka client code: consumers, producers and topic administration.

Everything else in ``consumers`` builds its clients here, so the settings that the
design depends on (range assignment, manual commits, idempotent acks=all
producers, co-partitioned topics, SASL/TLS on every client) are decided once.
"""

from typing import TYPE_CHECKING

from fusionstream.lazy import lazy_exports

if TYPE_CHECKING:
    from fusionstream.consumers.kafka.admin import (
        TopicLayoutError,
        check_copartitioned,
        delete_topics,
        ensure_topics,
        make_admin,
    )
    from fusionstream.consumers.kafka.clients import (
        CommitTimedOut,
        commit_within,
        leave_group,
        make_consumer,
        make_producer,
    )
    from fusionstream.consumers.kafka.errors import BrokerAuthError, MissingTopicsError

# Imported when first read: a subscriber needs the consumer's parts, not the admin client and the settings.
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(("TopicLayoutError", "check_copartitioned", "delete_topics", "ensure_topics", "make_admin"),
                    "admin"),
    **dict.fromkeys(("CommitTimedOut", "commit_within", "leave_group", "make_consumer", "make_producer"), "clients"),
    "BrokerAuthError": "errors", "MissingTopicsError": "errors",
})

__all__ = [
    "BrokerAuthError", "CommitTimedOut", "MissingTopicsError", "TopicLayoutError", "check_copartitioned",
    "commit_within", "delete_topics", "ensure_topics", "leave_group", "make_admin", "make_consumer", "make_producer",
]
