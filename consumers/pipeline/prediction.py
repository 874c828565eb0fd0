"""The prediction record: what the service publishes for each window (docs/predictions.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MODALITY_NAMES = ("video", "audio", "text")
#: ``json.dumps(value, separators=(",", ":"))`` builds this encoder at every call; one per prediction
#: published adds up. Same output.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Prediction:
    """One window's prediction and how long it took.

    ``latency_ms`` runs from the moment the aligner closed the window to the moment
    the engine returned; ``queue_ms`` and ``inference_ms`` split it. The end-to-end
    capture→publish figure is added when the record is published.
    """

    stream_id: str
    t_start_ns: int
    t_end_ns: int
    label: str
    score: float
    scores: dict[str, float]
    mask: tuple[bool, bool, bool]
    coverage: tuple[float, float, float]
    model_version: str
    closed_by: str
    queue_ms: float
    inference_ms: float
    latency_ms: float
    batch_size: int
    refs: tuple[Any, ...] = ()
    #: ``time.perf_counter_ns()`` when the aligner closed the window (not published: it is
    #: this process's clock), so later stages can time close → acknowledged.
    closed_at_ns: int = 0
    #: Multi-label models (format 2): every class at or above its threshold → its score, best first.
    #: ``None`` for other tasks, and then not published.
    labels: dict[str, float] | None = None
    #: Embedding models (format 2): the fused vector. ``None`` for other tasks, and then not published.
    embedding: tuple[float, ...] | None = None
    #: Predictions of this window made before this one (docs/predictions.md#revisions): 0; 1 for the final
    #: that follows a provisional prediction, or an amended final without one; 2 for an amended final after both.
    revision: int = 0
    #: False for a provisional prediction (revisions on; a final of the same window follows).
    final: bool = True

    @property
    def window_id(self) -> str:
        return f"{self.stream_id}@{self.t_start_ns}"

    def to_dict(self, *, capture_to_publish_ms: float | None = None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "window_id": self.window_id,
            "stream_id": self.stream_id,
            "t_start_ns": self.t_start_ns,
            "t_end_ns": self.t_end_ns,
            "label": self.label,
            "score": round(self.score, 6),
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "modalities": dict(zip(MODALITY_NAMES, self.mask, strict=True)),
            "coverage": dict(zip(MODALITY_NAMES, (round(c, 4) for c in self.coverage), strict=True)),
            "model_version": self.model_version,
            "closed_by": self.closed_by,
            "latency_ms": {
                "capture_to_publish": None if capture_to_publish_ms is None else round(capture_to_publish_ms, 3),
                "queue": round(self.queue_ms, 3),
                "inference": round(self.inference_ms, 3),
                "close_to_prediction": round(self.latency_ms, 3),
            },
            "batch_size": self.batch_size,
            "revision": self.revision,
            "final": self.final,
        }
        # Only the tasks that have them: a single-label prediction is published as it always was.
        if self.labels is not None:
            value["labels"] = {k: round(v, 6) for k, v in self.labels.items()}
        if self.embedding is not None:
            value["embedding"] = [round(v, 6) for v in self.embedding]
        return value

    def to_json(self, *, capture_to_publish_ms: float | None = None) -> bytes:
        return _ENCODE(self.to_dict(capture_to_publish_ms=capture_to_publish_ms)).encode()
