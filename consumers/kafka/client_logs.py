"""aiokafka's log lines at the level they deserve.

aiokafka logs some ordinary, retried conditions at ERROR. The one every operator meets:
the first consumer group on a new broker asks for its coordinator before the broker has
created ``__consumer_offsets``, and aiokafka logs ``ERROR ... Group Coordinator Request
failed: [Error 15] CoordinatorNotAvailableError`` while it retries, as it should. An
ERROR there trains people to ignore ERRORs, so :func:`lower_routine_client_errors`
rewrites those records as INFO.

The other: a broker that restarts or goes away. Every client logs each failed connection, metadata
request and fetch at ERROR, many times a second while it retries (47,000 lines in a 14 s broker
restart; a broker that lost its data: each metadata refresh's "topic not found", 158,000 lines a
minute); :class:`_BrokerAway` lets the first of each kind through (as a WARNING, or INFO for retried
lookups) and then one per ``REPEAT_S`` with how many it held back, so an outage is a few lines, not a
flood.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from aiokafka.errors import KafkaError

#: The logger and message format aiokafka uses for a failed coordinator lookup (aiokafka 0.12-0.14).
_COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
_COORDINATOR_LOOKUP_FAILED = "Group Coordinator Request failed: %s"
_ROUTINE_LOOKUP = "group coordinator not available yet, retrying (normal on a new broker): %s"


class _RoutineCoordinatorLookup(logging.Filter):
    """Lowers a *retriable* coordinator lookup failure to INFO; anything else passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if (
            record.levelno > logging.INFO
            and record.msg == _COORDINATOR_LOOKUP_FAILED
            and len(args) == 1
            and isinstance(args[0], KafkaError)
            and args[0].retriable
        ):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg = _ROUTINE_LOOKUP
            # The logger let the record through as an ERROR; as an INFO it must pass the level again.
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


#: What aiokafka logs over and over while a broker is away or has lost its state (aiokafka 0.12-0.14):
#: (logger, message) -> the level the lines that pass are logged at.
_BROKER_AWAY = {
    ("aiokafka", "Unable connect to node with id %s: %s"): logging.WARNING,
    ("aiokafka", "Unable to update metadata from %s"): logging.WARNING,
    ("aiokafka", "Unable to request metadata from node with id %s: %r"): logging.WARNING,
    ("aiokafka", 'Unable to request metadata from "%s:%s": %s'): logging.WARNING,
    ("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s"): logging.WARNING,
    # Each metadata refresh while a topic is missing (a broker that lost its data: 158,000 lines a minute).
    ("aiokafka.cluster", "Topic %s not found in cluster metadata"): logging.WARNING,
    ("aiokafka.consumer.group_coordinator", "Heartbeat session expired - marking coordinator dead"): logging.WARNING,
    ("aiokafka.consumer.group_coordinator", "Marking the coordinator dead (node %s)for group %s."): logging.WARNING,
    # Retried lookups, ten a second while the coordinator moves or restarts (INFO, but a flood).
    ("aiokafka.consumer.group_coordinator", _ROUTINE_LOOKUP): logging.INFO,
    ("aiokafka.producer.sender", "Discovered coordinator %s for group id %s"): logging.INFO,
    # The producer's retries, about ten a second each, while a partition has no leader (262 lines in 26 s).
    ("aiokafka.producer.sender", "Got error produce response: %s"): logging.WARNING,
    # Heartbeats and requests to a coordinator that went away: retried, so not ERRORs.
    ("aiokafka.consumer.group_coordinator", "Heartbeat send request failed: %s. Will retry."): logging.WARNING,
    ("aiokafka.consumer.group_coordinator", "Error sending %s to node %s [%s] -- marking coordinator dead"):
        logging.WARNING,
    # As the broker comes back (about 110 lines in 3 s).
    ("aiokafka.consumer.group_coordinator",
     "OffsetCommit failed for group %s because group is initializing (%s), will retry"): logging.INFO,
    ("aiokafka.consumer.group_coordinator",
     "OffsetCommit failed for group %s due to a coordinator error (%s), will find new coordinator and retry"):
        logging.INFO,
    # One per partition of a commit the group refused because it moved on while this member stood still (a
    # freeze past the session): the member rejoins, and the caller says what it means (12 ERRORs in 20 ms).
    ("aiokafka.consumer.group_coordinator", "OffsetCommit failed for group %s due to group error (%s), will rejoin"):
        logging.WARNING,
    # Each partition of a topic deleted under the consumer, every try until the group rebalances (116 ERRORs
    # in 10 s from an operator's deleted input topic).
    ("aiokafka.consumer.group_coordinator", "OffsetCommit failed for group %s on partition %s with offset %s: %s"):
        logging.WARNING,
}
#: What aiokafka logs too quietly: (logger, message) -> what an operator is to read after it.
_RAISED = {
    # Records deleted (retention, delete-records) before the consumer read them: lost input, said only at INFO.
    ("aiokafka.consumer.fetcher", "Fetch offset %s is out of range for partition %s, resetting offset"):
        " (records deleted before this client read them, by the topic's retention or an operator: they are "
        "skipped, and windows of their time are missing)",
}
#: Seconds between two lines of one kind while a broker stays away.
REPEAT_S = 10.0


class _BrokerAway(logging.Filter):
    """One line per kind of broker-away message per ``REPEAT_S`` (with the count held back); the rest dropped."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # message -> (when one last went through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        level = _BROKER_AWAY.get((record.name, record.msg))
        if level is None:
            return True
        now = self._clock()
        last, held = self._last.get(record.msg, (-float("inf"), 0))
        if now - last < REPEAT_S:
            self._last[record.msg] = (last, held + 1)
            return False
        self._last[record.msg] = (now, 0)
        record.levelno, record.levelname = level, logging.getLevelName(level)
        suffix = f" ({held} more like it in the last {REPEAT_S:g} s)" if held else ""
        record.msg = f"{record.msg} (the client retries; one such line per {REPEAT_S:g} s){suffix}"
        return True


class _Raised(logging.Filter):
    """Logs :data:`_RAISED`'s lines as WARNINGs, with what they mean."""

    def filter(self, record: logging.LogRecord) -> bool:
        meaning = _RAISED.get((record.name, record.msg))
        if meaning is not None and record.levelno < logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = f"{record.msg}{meaning}"
        return True


def lower_routine_client_errors() -> None:
    """Install the filters (once per process; calling it again changes nothing), and keep aiokafka's own
    DEBUG lines off unless its logger's level was set on purpose."""
    client = logging.getLogger("aiokafka")
    if client.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() < logging.INFO:
        # FUSIONSTREAM_LOG_LEVEL=DEBUG is for fusionstream's lines; aiokafka's DEBUG is every request and
        # response on the wire (16,000 lines in 25 s of one service). Its logger's own level shows them.
        # (Only then: at WARNING, an INFO level here would let aiokafka's INFO lines through.)
        client.setLevel(logging.INFO)
    logger = logging.getLogger(_COORDINATOR_LOGGER)
    if not any(isinstance(f, _RoutineCoordinatorLookup) for f in logger.filters):
        logger.addFilter(_RoutineCoordinatorLookup())
    for name in sorted({name for name, _ in _RAISED}):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Raised) for f in logger.filters):
            logger.addFilter(_Raised())
    away = _BrokerAway()
    for name in sorted({name for name, _ in _BROKER_AWAY}):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _BrokerAway) for f in logger.filters):
            logger.addFilter(away)


@contextlib.contextmanager
def client_quiet() -> Iterator[None]:
    """aiokafka says nothing meanwhile: around a client's start, whose failure the caller raises as one
    line (its own ERROR line before it would say the same twice)."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


__all__ = ["client_quiet", "lower_routine_client_errors"]
