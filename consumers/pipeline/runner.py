"""Turns closed windows into model inputs and predictions; runs on the engine thread."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.reuse import WindowEmbedder
from fusionstream.engines.spec import MODALITIES, ModelSpec
from fusionstream.stream.windows import Window

if TYPE_CHECKING:
    from fusionstream.engines.backends.base import Backend


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window and the monotonic instant the aligner closed it (for latency)."""

    window: Window
    closed_at_ns: int


class WindowRunner:
    """Embeds a batch of windows (reusing shared frames and captions), fuses, and labels the result."""

    #: The modalities the model uses (a format-1 model: all three).
    modalities: tuple[str, ...] = MODALITIES

    def __init__(self, backend: Backend, spec: ModelSpec, *, reuse: bool = True) -> None:
        self.backend = backend
        self.spec = spec
        self.embed = WindowEmbedder(backend, spec, reuse=reuse)
        #: The side sampled JPEG frames are decoded at, at least (the model's input side).
        self.frame_side = spec.image_size

    def prepare(self, windows: Sequence[Window]) -> None:
        """Encode open windows whose data is complete, ahead of their close (``WindowEmbedder.warm``)."""
        self.embed.warm(windows)

    def run(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
        started = time.perf_counter_ns()
        probs = self.backend.fuse(*self.embed([c.window for c in closed]))
        finished = time.perf_counter_ns()
        inference_ms = (finished - started) / 1e6
        classes = self.spec.classes
        predictions = []
        # Python floats in one call: converting numpy scalars one by one costs more than the fusion head.
        for item, row, top in zip(closed, probs.tolist(), np.argmax(probs, axis=1).tolist(), strict=True):
            window = item.window
            predictions.append(
                Prediction(
                    stream_id=window.stream_id,
                    t_start_ns=window.t_start_ns,
                    t_end_ns=window.t_end_ns,
                    label=classes[top],
                    score=row[top],
                    scores=dict(zip(classes, row, strict=True)),
                    mask=window.mask,
                    coverage=window.coverage,
                    model_version=self.spec.version,
                    closed_by=window.closed_by,
                    queue_ms=(started - item.closed_at_ns) / 1e6,
                    inference_ms=inference_ms,
                    latency_ms=(finished - item.closed_at_ns) / 1e6,
                    batch_size=len(closed),
                    refs=window.refs,
                    closed_at_ns=item.closed_at_ns,
                )
            )
        return predictions
