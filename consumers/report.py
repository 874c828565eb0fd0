"""Scoring predictions against ground truth, and latency percentiles, for the demo and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.stream.aligner import last_instant
from fusionstream.stream.records import Record
from fusionstream.stream.sources.truth import GroundTruth
from fusionstream.stream.windows import WindowConfig


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 in the values' unit (0 when empty)."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


class WindowCensus:
    """Counts the windows a record sequence must produce: every window holding at least one record
    (of ``modalities``, when given: those of a model that uses a subset, whose pipeline ignores the others)."""

    def __init__(self, config: WindowConfig, modalities: Iterable[str] | None = None) -> None:
        self.config = config
        self.expected: set[tuple[str, int]] = set()
        self._modalities = None if modalities is None else frozenset(modalities)

    def watch(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            if self._modalities is None or record.modality.label in self._modalities:
                starts = self.config.starts_overlapping(record.t_start_ns, last_instant(record))
                self.expected.update((record.stream_id, s) for s in starts)
            yield record


def summarize(
    predictions: Sequence[Prediction],
    *,
    seconds: float,
    truth: GroundTruth | None = None,
    expected: set[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """The demo's summary: windows, accuracy (clear windows / all), latency, throughput, completeness."""
    summary: dict[str, Any] = {
        "windows": len(predictions),
        "accuracy": None,
        "accuracy_all": None,
        "latency_ms": percentiles([p.latency_ms for p in predictions]),
        "windows_per_s": round(len(predictions) / seconds, 2) if seconds > 0 else 0.0,
    }
    if expected is not None:
        seen = [(p.stream_id, p.t_start_ns) for p in predictions]
        summary["missing_windows"] = len(expected - set(seen))
        summary["duplicate_windows"] = len(seen) - len(set(seen))
    if truth is None:
        return summary
    clear_hits = clear_total = all_hits = all_total = 0
    for p in predictions:
        label = truth.label(p.stream_id, p.t_start_ns, p.t_end_ns)
        if label.digit is None:
            continue
        hit = p.label == str(label.digit)
        all_total += 1
        all_hits += hit
        if label.clear:
            clear_total += 1
            clear_hits += hit
    summary["accuracy"] = round(clear_hits / clear_total, 4) if clear_total else None
    summary["accuracy_all"] = round(all_hits / all_total, 4) if all_total else None
    summary["clear_windows"] = clear_total
    return summary
