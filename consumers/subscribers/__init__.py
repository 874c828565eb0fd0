"""Prediction subscribers: the client API, `fusionstream tail`, and a Faust app with per-stream tables.

:func:`subscribe` is an async iterator of :class:`PredictionRecord` over the predictions
topic; ``fusionstream tail`` prints it; :mod:`fusionstream.consumers.subscribers.faust_app` keeps
per-stream state tables and serves them over HTTP (it imports Faust, so it is not
imported here).
"""

from fusionstream.consumers.kafka.errors import BrokerAuthError, BrokerUnavailable
from fusionstream.consumers.subscribers.api import (
    DEFAULT_TOPIC,
    PredictionRecord,
    Subscription,
    parse_prediction,
    subscribe,
)
from fusionstream.consumers.subscribers.errors import BadPrediction

__all__ = ["DEFAULT_TOPIC", "BadPrediction", "BrokerAuthError", "BrokerUnavailable", "PredictionRecord",
           "Subscription", "parse_prediction", "subscribe"]
