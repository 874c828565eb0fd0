"""Errors of the producers (and the subscribers, which reach the same brokers)."""

from __future__ import annotations

# Defined beside the other cluster errors, so a subscriber imports none of the producers' parts for them.
from fusionstream.consumers.kafka.errors import BROKER_HINT, BrokerUnavailable
from fusionstream.stream.errors import FusionStreamError


class PublishError(FusionStreamError):
    """A record the broker refused or never acknowledged (too large, topic gone, authorisation ...)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class RecogniserError(FusionStreamError):
    """The speech recognisers of ``--asr`` failed: could not start, or raised while decoding."""


__all__ = ["BROKER_HINT", "BrokerUnavailable", "PublishError", "RecogniserError"]
