"""Scoring predictions (and transcripts) against ground truth, and latency percentiles, for the demo and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.stream.aligner import last_instant
from fusionstream.stream.records import Encoding, Modality, Record
from fusionstream.stream.sources.speech import DIGIT_WORDS
from fusionstream.stream.sources.truth import GroundTruth
from fusionstream.stream.windows import WindowConfig

#: Words that name a digit: the digit words, "oh" (as recognisers write a spoken 0) and numerals.
DIGIT_NAMES: dict[str, int] = {
    **{word: d for d, word in enumerate(DIGIT_WORDS)}, "oh": 0, **{str(d): d for d in range(10)},
}


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
            if record.encoding is Encoding.PROGRESS:
                pass  # it moves a watermark but joins no window (docs/wire-format.md#progress)
            elif self._modalities is None or record.modality.label in self._modalities:
                starts = self.config.stream_starts(record.stream_id, record.t_start_ns, last_instant(record))
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
    summary.update(score_labels(((p.stream_id, p.t_start_ns, p.t_end_ns, p.label) for p in predictions), truth))
    return summary


def score_labels(labels: Iterable[tuple[str, int, int, str]], truth: GroundTruth) -> dict[str, Any]:
    """``accuracy`` over clear windows, ``accuracy_all`` over every window with a digit, and
    ``clear_windows``, of ``(stream_id, t_start_ns, t_end_ns, label)`` predictions (the demo's, or
    those `serve` published: scripts/score_predictions.py)."""
    clear_hits = clear_total = all_hits = all_total = 0
    for stream_id, t_start_ns, t_end_ns, predicted in labels:
        label = truth.label(stream_id, t_start_ns, t_end_ns)
        if label.digit is None:
            continue
        hit = predicted == str(label.digit)
        all_total += 1
        all_hits += hit
        if label.clear:
            clear_total += 1
            clear_hits += hit
    return {
        "accuracy": round(clear_hits / clear_total, 4) if clear_total else None,
        "accuracy_all": round(all_hits / all_total, 4) if all_total else None,
        "clear_windows": clear_total,
    }


def digit_named(word: str) -> int | None:
    """The digit ``word`` names (case and trailing punctuation aside), or None."""
    return DIGIT_NAMES.get(word.lower().strip(".,!?;:"))


class TranscriptCensus:
    """What the text modality carried: its words and progress records, scored against the truth.

    The same figures for the synthetic captions and for a recogniser's words, so the two compare:
    how many words name the digit shown when they were spoken, and how many segments had their
    digit named at least once (a transcript that says nothing scores 0 on the second).
    """

    def __init__(self) -> None:
        self.words: dict[str, list[tuple[int, str]]] = {}  # per stream: (mid time, word), in arrival order
        self.progress = 0

    def watch(self, records: Iterable[Record]) -> Iterator[Record]:
        from fusionstream.stream.media import decode_media
        from fusionstream.stream.records import TextSegment

        for record in records:
            if record.modality is Modality.TEXT:
                if record.encoding is Encoding.PROGRESS:
                    self.progress += 1
                elif isinstance(segment := decode_media(record), TextSegment):
                    mid = (record.t_start_ns + record.t_end_ns) // 2
                    self.words.setdefault(record.stream_id, []).extend((mid, w) for w in segment.text.split())
            yield record

    def summary(self, truth: GroundTruth | None = None, *, heard: int = 12) -> dict[str, Any]:
        """``words``, ``progress_records``, ``digit_words``, ``heard`` (the first words, in time order);
        with ``truth``: ``words_naming_true_digit`` and ``segments_named`` (shares, 0..1)."""
        words = [item for items in self.words.values() for item in items]
        # By time alone: a cue's words share one, and the sort is stable, so they stay in their order.
        first = sorted(next(iter(self.words.values()), []), key=lambda item: item[0])[:heard]
        out: dict[str, Any] = {
            "words": len(words),
            "progress_records": self.progress,
            "digit_words": sum(digit_named(w) is not None for _, w in words),
            "heard": " ".join(w for _, w in first),
        }
        if truth is None:
            return out
        placed = hits = segments = named = 0
        for sid in truth.stream_ids:
            spoken = sorted(self.words.get(sid, []))
            for segment in truth.segments(sid):
                inside = [w for t, w in spoken if segment.t_start_ns <= t < segment.t_end_ns]
                said = [digit_named(w) == segment.digit for w in inside]
                placed, hits = placed + len(said), hits + sum(said)
                segments, named = segments + 1, named + any(said)
        out["words_naming_true_digit"] = round(hits / placed, 4) if placed else None
        out["segments_named"] = round(named / segments, 4) if segments else None
        return out
