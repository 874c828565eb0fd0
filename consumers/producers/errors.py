"""Errors of the producers (and the subscribers, which reach the same brokers)."""

from __future__ import annotations

from fusionstream.stream.errors import FusionStreamError

#: Said whenever a broker cannot be reached: the usual cause during development.
BROKER_HINT = "start a local one with `make kafka-start`, or set FUSIONSTREAM_BOOTSTRAP_SERVERS (or --bootstrap)"


class BrokerUnavailable(FusionStreamError):
    """No Kafka broker answers at the bootstrap address. Retriable: start it, or fix the address."""

    retriable = True

    def __init__(self, bootstrap: str, detail: str = "", hint: str = BROKER_HINT) -> None:
        self.bootstrap = bootstrap
        reason = f": {detail}" if detail else ""
        super().__init__(f"cannot reach Kafka at {bootstrap}{reason}; {hint}")


class PublishError(FusionStreamError):
    """A record the broker refused or never acknowledged (too large, topic gone, authorisation ...)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class RecogniserError(FusionStreamError):
    """The speech recognisers of ``--asr`` failed: could not start, or raised while decoding."""


__all__ = ["BROKER_HINT", "BrokerUnavailable", "PublishError", "RecogniserError"]
