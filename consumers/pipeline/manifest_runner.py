"""Closed windows → predictions for a format-2 model (docs/model-format.md); runs on the engine thread.

The counterpart of :class:`~fusionstream.consumers.pipeline.runner.WindowRunner` for any model a
format-2 manifest describes: the declared modalities only (``modalities``; the pipeline ignores
records of the others), each encoder with its own preprocessing and embedding size
(:class:`~fusionstream.consumers.pipeline.manifest_embed.ManifestEmbedder`), the fusion head with
its activation, and one prediction per window per task:

- ``single_label``: ``label``, ``score``, ``scores``, as format 1;
- ``multi_label``: ``labels`` (every class at or above its threshold, with its score, best first),
  ``label``/``score`` the best class, ``scores`` every class;
- ``embedding``: ``embedding`` (the fused vector); ``label`` empty, ``score`` 0, ``scores`` empty.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fusionstream.consumers.pipeline.manifest_embed import ManifestEmbedder
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import ClosedWindow
from fusionstream.engines.backends.manifest_onnx import ManifestRuntime
from fusionstream.engines.manifest import Manifest
from fusionstream.engines.spec import MODALITIES
from fusionstream.stream.windows import Window


class ManifestRunner:
    """Embeds a batch of windows (reusing shared frames and transcripts), fuses, and makes predictions."""

    def __init__(self, runtime: ManifestRuntime, *, reuse: bool = True) -> None:
        self.runtime = runtime
        self.spec: Manifest = runtime.manifest
        self.task = runtime.task
        #: The modalities the model uses; the pipeline feeds the aligner only these.
        self.modalities: tuple[str, ...] = runtime.modalities
        #: The side sampled JPEG frames are decoded at, at least.
        self.frame_side = runtime.frame_side
        self.embed = ManifestEmbedder(runtime, reuse=reuse)
        self._declared = tuple(name in self.modalities for name in MODALITIES)

    def prepare(self, windows: Sequence[Window]) -> None:
        """Encode open windows whose data is complete, ahead of their close (``ManifestEmbedder.warm``)."""
        self.embed.warm(windows)

    def run(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
        started = time.perf_counter_ns()
        embeddings, mask = self.embed([c.window for c in closed])
        outputs = self.runtime.fuse(embeddings, mask)
        finished = time.perf_counter_ns()
        inference_ms = (finished - started) / 1e6
        predictions = []
        for item, fields in zip(closed, self._outputs(outputs), strict=True):
            window = item.window
            present = tuple(bool(p and d) for p, d in zip(window.mask, self._declared, strict=True))
            predictions.append(
                Prediction(
                    stream_id=window.stream_id,
                    t_start_ns=window.t_start_ns,
                    t_end_ns=window.t_end_ns,
                    mask=present,  # type: ignore[arg-type]
                    coverage=window.coverage,
                    model_version=self.spec.version,
                    closed_by=window.closed_by,
                    queue_ms=(started - item.closed_at_ns) / 1e6,
                    inference_ms=inference_ms,
                    latency_ms=(finished - item.closed_at_ns) / 1e6,
                    batch_size=len(closed),
                    refs=window.refs,
                    closed_at_ns=item.closed_at_ns,
                    **fields,
                )
            )
        return predictions

    def _outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Per row, the task's prediction fields (label, score, scores, labels, embedding)."""
        rows = outputs.tolist()  # Python floats in one call
        if self.task.kind == "embedding":
            return [{"label": "", "score": 0.0, "scores": {}, "embedding": tuple(row)} for row in rows]
        classes = self.task.classes
        out = []
        for row, top in zip(rows, np.argmax(outputs, axis=1).tolist(), strict=True):
            fields: dict[str, Any] = {"label": classes[top], "score": row[top],
                                      "scores": dict(zip(classes, row, strict=True))}
            if self.task.kind == "multi_label":
                above = [(score, i) for i, (score, threshold) in enumerate(zip(row, self.task.thresholds, strict=True))
                         if score >= threshold]
                fields["labels"] = {classes[i]: score for score, i in sorted(above, key=lambda s: (-s[0], s[1]))}
            out.append(fields)
        return out
