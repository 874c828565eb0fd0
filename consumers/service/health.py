"""What a running instance says about itself: ``/healthz`` and the gauges of its Prometheus metrics.

Both are refreshed by the service at every commit interval (and at state changes), from
the same few sources: its state, its partitions (the handover), the pipeline's backlog,
the consumer's positions. Reading them never touches Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError

from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.service.handover import Handover
from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.stream.records import Modality

#: Seconds without a fetch answered after which ``/healthz`` says the broker is not answering. Fetches wait
#: at most the consumer's fetch_max_wait (0.5 s) when nothing is new, so an idle topic still answers.
BROKER_SILENT_S = 5.0


class Health:
    """``/healthz``: running, in the group, engine alive and not stalled. Safe to read from any thread."""

    def __init__(self, instance_id: str, *, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.instance_id = instance_id
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._value: tuple[bool, dict[str, Any]] = (False, {"state": "starting"})
        self._stall = (0, clock())  # (predictions made, when that count last changed or the backlog was empty)

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) as /healthz reports them."""
        return self._value

    def update(self, *, state: str, joined: bool, partitions: set[int], engine_alive: bool,
               pipeline: Pipeline | None, broker_silent_s: float | None = None) -> None:
        detail: dict[str, Any] = {
            "state": state,
            "instance": self.instance_id,
            "assigned_partitions": sorted(partitions),
            "engine": "running" if engine_alive else "stopped",
        }
        ok = state == "running" and joined and engine_alive
        if pipeline is not None:
            backlog, made = pipeline.backlog(), pipeline.stats.predictions
            last_made, since = self._stall
            if made != last_made or backlog == 0:
                self._stall = (made, self._clock())
            elif (waited := self._clock() - since) > self.stall_after_s:
                detail["engine"] = f"stalled: {backlog} windows waiting, no prediction for {waited:.0f}s"
                ok = False
            detail["backlog_windows"] = backlog
        if not joined:
            detail["consumer"] = "waiting for a partition assignment"
        if broker_silent_s is not None:
            # Said, not judged: the instance is well while the broker is away (a restart would not help it).
            detail["broker"] = ("answering" if broker_silent_s < BROKER_SILENT_S
                                else f"no fetch answered for {broker_silent_s:.0f} s")
        self._value = (ok, detail)


class Gauges:
    """Sets the service's gauges, and the counters the pipeline keeps (encoded ahead, ignored, progress, partly
    late, degraded, failed), from their sources."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        #: Pipeline counter → the metric it feeds, and how much of it was already added there.
        self._counted = {"windows_warmed": metrics.encoded_ahead, "frames_warmed": metrics.frames_ahead,
                         "records_ignored": metrics.ignored,
                         "progress_records": metrics.progress, "records_partly_late": metrics.partly_late,
                         "windows_degraded": metrics.degraded, "windows_failed": metrics.failed,
                         "frames_damaged": metrics.frames_damaged}
        self._reported = dict.fromkeys(self._counted, 0)

    def reset(self) -> None:
        """A new pipeline counts from zero."""
        self._reported = dict.fromkeys(self._counted, 0)

    def update(self, consumer: AIOKafkaConsumer, pipeline: Pipeline, handover: Handover,
               broker_silent_s: float | None = None) -> None:
        m = self._metrics
        # consumer_lag is as the last answered fetch left it: flat while the service is cut off from its broker.
        m.broker_silent.set(broker_silent_s or 0.0)
        m.backlog.set(pipeline.backlog())
        for name, counter in self._counted.items():
            value = getattr(pipeline.stats, name)
            counter.inc(value - self._reported[name])
            self._reported[name] = value
        m.held.set(handover.held)
        m.open_streams.set(pipeline.aligner.stats.open_streams)
        m.text_wait_max.set(max(pipeline.aligner.wait_budgets(Modality.TEXT).values(), default=0) / 1e9)
        owned = handover.owned
        m.assigned.set(len(owned))
        m.paused.set(1 if consumer.paused() else 0)
        for tp in owned:
            try:
                highwater = consumer.highwater(TopicPartition(*tp))
            except (AssertionError, IllegalStateError):
                continue
            position = handover.next_offset(tp) or handover.last_committed(tp)
            if highwater is not None and position is not None:
                m.lag.labels(tp[0], str(tp[1])).set(max(highwater - position, 0))

    def forget(self, tps: Iterable[tuple[str, int]]) -> None:
        """Partitions no longer owned have no lag."""
        for tp in tps:
            with suppress(KeyError):
                self._metrics.lag.remove(tp[0], str(tp[1]))


__all__ = ["Gauges", "Health"]
