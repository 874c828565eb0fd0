"""aiokafka's log lines at the level they deserve.

aiokafka logs some ordinary, retried conditions at ERROR. The one every operator meets:
the first consumer group on a new broker asks for its coordinator before the broker has
created ``__consumer_offsets``, and aiokafka logs ``ERROR ... Group Coordinator Request
failed: [Error 15] CoordinatorNotAvailableError`` while it retries, as it should. An
ERROR there trains people to ignore ERRORs, so :func:`lower_routine_client_errors`
rewrites those records as INFO.
"""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaError

#: The logger and message format aiokafka uses for a failed coordinator lookup (aiokafka 0.12-0.14).
_COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
_COORDINATOR_LOOKUP_FAILED = "Group Coordinator Request failed: %s"


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
            record.msg = "group coordinator not available yet, retrying (normal on a new broker): %s"
            # The logger let the record through as an ERROR; as an INFO it must pass the level again.
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def lower_routine_client_errors() -> None:
    """Install the filter (once per process; calling it again changes nothing)."""
    logger = logging.getLogger(_COORDINATOR_LOGGER)
    if not any(isinstance(f, _RoutineCoordinatorLookup) for f in logger.filters):
        logger.addFilter(_RoutineCoordinatorLookup())


__all__ = ["lower_routine_client_errors"]
