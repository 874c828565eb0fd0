"""Errors of talking to the cluster that a user has to fix, each with the fix in its message.

A broker that does not answer (yet) is :class:`BrokerUnavailable`, shared by producers, subscribers and the
service; the others are the ones no amount of waiting mends.
"""

from __future__ import annotations

from fusionstream.stream.errors import FusionStreamError

#: Said whenever a broker cannot be reached: the usual cause during development.
BROKER_HINT = ("start a local one with `make kafka-start`, or give its address: --bootstrap, "
               "FUSIONSTREAM_BOOTSTRAP_SERVERS or bootstrap_servers in the --config file")


class BrokerUnavailable(FusionStreamError):
    """No Kafka broker answers at the bootstrap address. Retriable: start it, or fix the address."""

    retriable = True

    def __init__(self, bootstrap: str, detail: str = "", hint: str = BROKER_HINT) -> None:
        self.bootstrap = bootstrap
        reason = f": {detail}" if detail else ""
        super().__init__(f"cannot reach Kafka at {bootstrap}{reason}; {hint}")


class BrokerAuthError(FusionStreamError):
    """The broker refused this client's SASL authentication or TLS handshake; retrying cannot help."""


class MissingTopicsError(FusionStreamError):
    """Topics the service needs do not exist, and it may not create them (``create_topics`` off, or the
    cluster refused: ACLs, a creation policy)."""


def explain_denial(exc: BaseException) -> str | None:
    """What an ACL refusal from aiokafka means and how to mend it (None for any other error): they said only
    ``[Error 30] GroupAuthorizationFailedError: fusionstream``, naming neither the resource kind nor the fix."""
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
        TransactionalIdAuthorizationFailed,
    )

    text = str(exc)
    name = text.split(": ", 1)[1] if ": " in text else ""
    said = {
        GroupAuthorizationFailedError: f"the broker refuses this client the consumer group {name!r} (an ACL): grant "
        "its principal READ on that group, or set FUSIONSTREAM_GROUP_ID to one it may use",
        TopicAuthorizationFailedError: f"the broker refuses this client topic {name or '(unnamed)'} (an ACL): grant "
        "its principal DESCRIBE on every topic it uses, READ on those it reads and WRITE on those it publishes to "
        "(serve: the predictions and dead-letter topics)",
        TransactionalIdAuthorizationFailed: f"the broker refuses this client the transactional id {name!r} (an ACL; "
        "exactly-once uses <group_id>.<instance_id>): grant its principal WRITE on transactional ids with the "
        "group id as prefix, or serve at-least-once",
        ClusterAuthorizationFailedError: "the broker refuses this client a cluster operation (an ACL): producers "
        "here are idempotent and need IDEMPOTENT_WRITE on the cluster",
    }
    return next((message for kind, message in said.items() if isinstance(exc, kind)), None)


__all__ = ["BROKER_HINT", "BrokerAuthError", "BrokerUnavailable", "MissingTopicsError", "explain_denial"]
