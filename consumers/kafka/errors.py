"""Errors of talking to the cluster that a user has to fix, each with the fix in its message.

A broker that does not answer (yet) is :class:`~fusionstream.consumers.producers.errors.BrokerUnavailable`,
shared with the producers; these are the ones no amount of waiting mends.
"""

from __future__ import annotations

from fusionstream.stream.errors import FusionStreamError


class BrokerAuthError(FusionStreamError):
    """The broker refused this client's SASL authentication or TLS handshake; retrying cannot help."""


class MissingTopicsError(FusionStreamError):
    """Topics the service needs do not exist, and it may not create them (``create_topics`` off, or the
    cluster refused: ACLs, a creation policy)."""


__all__ = ["BrokerAuthError", "MissingTopicsError"]
