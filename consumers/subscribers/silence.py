"""When a subscription's broker stops answering, and when it answers again, said once each.

aiokafka says next to nothing while a broker is away from a consumer that only fetches: a subscriber app
that logs at WARNING saw one line in a 41 s outage, or none without a group, and could not tell that it
was cut off from a quiet topic. The fetches' own answers tell: aiokafka notes when the broker last
answered a fetch of each assigned partition (``last_poll_timestamp``), with records or without.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger("fusionstream.consumers.subscribers")

#: Seconds without an answer to any fetch before it is said: fetches wait at most 0.5 s for records, so a
#: healthy broker answers several times a second, and a leader moving between brokers takes a few seconds.
SILENT_AFTER_S = 10.0


class BrokerSilence:
    """Watches one consumer's fetches; :meth:`check` after each poll logs the two changes."""

    def __init__(self, bootstrap: str, clock: Callable[[], float] = time.time) -> None:
        self._bootstrap = bootstrap
        self._clock = clock
        self._since_s: float | None = None  # when the last answer came, while silence is reported

    def check(self, consumer: AIOKafkaConsumer) -> None:
        answered = self._last_answer_s(consumer)
        if answered is None:
            return  # nothing assigned, or not fetched yet: no answer to miss
        silent_s = self._clock() - answered
        if self._since_s is None and silent_s >= SILENT_AFTER_S:
            self._since_s = answered
            log.warning("the broker at %s has not answered for %.0f s: waiting for it (the subscription goes on "
                        "where it was when it is back)", self._bootstrap, silent_s)
        elif self._since_s is not None and answered > self._since_s:
            log.warning("the broker at %s answers again, after %.0f s", self._bootstrap, answered - self._since_s)
            self._since_s = None

    @staticmethod
    def _last_answer_s(consumer: AIOKafkaConsumer) -> float | None:
        from aiokafka.errors import IllegalStateError

        try:
            assigned = consumer.assignment()
            stamps = [consumer.last_poll_timestamp(tp) for tp in assigned]
        except (AssertionError, IllegalStateError):  # assignment changing under us: next time
            return None
        known = [ms for ms in stamps if ms is not None]
        return max(known) / 1000 if known else None


__all__ = ["SILENT_AFTER_S", "BrokerSilence"]
