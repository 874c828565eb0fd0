"""Closed windows → predictions, for any model directory on any backend; runs on the engine thread.

The runtime (``fusionstream.engines.backends.open_runtime``) is addressed by modality name only:
the declared modalities (``modalities``; the pipeline ignores records of the others), each encoder
with its own preprocessing and embedding size (:class:`~fusionstream.consumers.pipeline.reuse.Embedder`,
with the reuse of overlapping windows), the fusion head with its activation, and one prediction per
window per task:

- ``single_label`` (format 1, like the shipped model, is one): ``label``, ``score``, ``scores``;
- ``multi_label``: ``labels`` (every class at or above its threshold, with its score, best first),
  ``label``/``score`` the best class, ``scores`` every class;
- ``embedding``: ``embedding`` (the fused vector); ``label`` empty, ``score`` 0, ``scores`` empty.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.reuse import Embedder, EncoderRuntime
from fusionstream.engines.errors import first_line
from fusionstream.engines.manifest import FusionSpec, Manifest, TaskSpec
from fusionstream.engines.spec import MODALITIES
from fusionstream.stream.printable import printable
from fusionstream.stream.windows import Window

log = logging.getLogger(__name__)

#: Least seconds between two warnings that a failed batch is being run window by window.
ISOLATION_LOG_S = 60.0
#: Windows in a row whose data failed the engine (none predicted between them) that are taken for the engine's
#: fault after all, though it ran a harmless window: a preprocessing that fails on real inputs only, a device
#: that runs a small batch but not a real one. One bad caption costs a captions-only stream two or three.
MAX_UNPREDICTED_IN_ROW = 16
#: The harmless window's stream (numbered, so that no reuse cache answers for the encoders) and transcript.
PROBE_STREAM = "\x00fusionstream-probe-"
PROBE_TEXT = "one two three"


def _refs(refs: Sequence[Any], shown: int = 6) -> str:
    """The first records of a window, as ``topic[partition]@offset`` (Kafka refs), to find them by."""
    named = [f"{r[0]}[{r[1]}]@{r[2]}" if isinstance(r, tuple) and len(r) == 3 else str(r) for r in refs[:shown]]
    return ", ".join(named) + (f" and {len(refs) - shown} more" if len(refs) > shown else "") or "none"


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, 240)}"


class Runtime(EncoderRuntime, Protocol):
    """What the runner needs of a runtime: the embedder's part, the manifest and the fusion head."""

    name: str
    manifest: Manifest
    task: TaskSpec
    fusion: FusionSpec
    graph_seconds: dict[str, float]

    @property
    def frame_side(self) -> int: ...

    def fuse(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window and the monotonic instant the aligner closed it (for latency)."""

    window: Window
    closed_at_ns: int


class Runner:
    """Embeds a batch of windows (reusing shared frames and transcripts), fuses, and makes predictions."""

    def __init__(self, runtime: Runtime, *, reuse: bool = True) -> None:
        self.runtime = runtime
        self.spec: Manifest = runtime.manifest
        self.task = runtime.task
        #: The modalities the model uses; the pipeline feeds the aligner only these.
        self.modalities: tuple[str, ...] = runtime.modalities
        #: The side sampled JPEG frames are decoded at, at least (the video input's larger side).
        self.frame_side = runtime.frame_side
        self.embed = Embedder(runtime, reuse=reuse)
        self._isolated_said = -ISOLATION_LOG_S
        self._unpredicted_in_row = 0
        self._probes = 0
        self._declared = tuple(name in self.modalities for name in MODALITIES)
        #: Embeds frames open windows will sample (``Embedder.warm_frames``); ``None`` when the model's video
        #: encoder reads whole windows, or frames are not reused.
        self.prepare_frames: Callable[[Sequence[tuple[str, int]], Sequence[np.ndarray]], None] | None = (
            self.embed.warm_frames if self.embed.reuse_frames else None
        )

    def prepare(self, windows: Sequence[Window]) -> None:
        """Encode open windows whose data is complete, ahead of their close (``Embedder.warm``)."""
        self.embed.warm(windows)

    def run(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
        predictions = self._predict(closed)
        self._unpredicted_in_row = 0
        return predictions

    def _predict(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
        started = time.perf_counter_ns()
        embeddings, mask = self.embed([c.window for c in closed])
        outputs = self.runtime.fuse(embeddings, mask)
        if not np.isfinite(outputs).all():
            # Published, NaN is not JSON (a browser's or Java's parser refuses the record) and no class: a
            # window's data the model overflows on is isolated like one an encoder raises on.
            bad = int((~np.isfinite(outputs)).any(axis=tuple(range(1, outputs.ndim))).sum())
            raise FloatingPointError(f"the model gave non-finite outputs (NaN or infinity) for {bad} of "
                                     f"{len(closed)} windows")
        finished = time.perf_counter_ns()
        inference_ms = (finished - started) / 1e6
        predictions = []
        for item, fields in zip(closed, self._outputs(outputs), strict=True):
            window = item.window
            # A modality the model does not use is reported absent, whatever arrived of it.
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
                    revision=window.revision,
                    final=window.final,
                    **fields,
                )
            )
        return predictions

    def run_isolating(
        self, closed: Sequence[ClosedWindow], failure: Exception
    ) -> tuple[list[Prediction], int, list[Window]]:
        """After :meth:`run` raised ``failure`` on ``closed``: each window alone, and a window that fails alone
        again without each of its modalities in turn (``MODALITIES`` order), so that data one encoder cannot
        take (a caption, a frame) costs that window that modality, logged, and never stops the service in a
        restart loop on the same records. A window that fails however it is cut (its only modality's data, a
        captions-only stream's caption) gets no prediction if the engine still runs a harmless window
        (:meth:`_engine_runs`). Returns the predictions, how many windows lost a modality and the windows
        that get no prediction. Re-raises ``failure`` when the engine fails on the harmless window too, or after
        ``MAX_UNPREDICTED_IN_ROW`` windows in a row given up: the engine's fault."""
        predictions: list[Prediction] = []
        degraded, unpredicted = 0, []
        now = time.monotonic()
        if now - self._isolated_said >= ISOLATION_LOG_S:  # an engine that fails only on big batches shows
            self._isolated_said = now
            log.warning("a batch of %d windows failed (%s): running them one by one (said once a minute)",
                        len(closed), _described(failure))
        for item in closed:
            try:
                predictions += self.run([item])
                continue
            except Exception as alone:  # the window's own data, most likely: see which modality
                error = alone
            prediction, dropped = self._without_failing_modality(item)
            if prediction is None:
                if not self._engine_runs(item.window):
                    raise failure
                self._unpredicted_in_row += 1
                if self._unpredicted_in_row >= MAX_UNPREDICTED_IN_ROW:
                    log.error("%d windows in a row failed on their data and none was predicted: taking it for an "
                              "engine failure", self._unpredicted_in_row)
                    raise failure
                window = item.window
                unpredicted.append(window)
                log.error("window %d of stream %s fails the engine with its %s however it is cut (%s), and the "
                          "engine runs a harmless window: the data is at fault, so this window gets no prediction "
                          "(its records: %s)", window.t_start_ns, printable(window.stream_id),
                          " and ".join(self._used(window)) or "nothing", _described(error), _refs(window.refs))
                continue
            predictions.append(prediction)
            degraded += 1
            window = item.window
            log.error("the %s encoder failed on window %d of stream %s (%s): predicted without %s",
                      dropped, window.t_start_ns, printable(window.stream_id), _described(error), dropped)
        return predictions, degraded, unpredicted

    def _engine_runs(self, window: Window) -> bool:
        """Whether the engine predicts ``window`` made harmless, the whole way a window goes (preprocessing,
        the encoders it used, the head): black frames, silence, a plain transcript, in the same shapes. A
        device gone or a broken graph fails it as it failed the window; then the fault is the engine's."""
        self._probes += 1
        stream = f"{PROBE_STREAM}{self._probes}"
        probe = dataclasses.replace(
            window, stream_id=stream, refs=(), audio=np.zeros_like(window.audio),
            frames=tuple(np.zeros_like(f) if isinstance(f, np.ndarray) else f for f in window.frames),
            text=tuple(dataclasses.replace(s, stream_id=stream, text=PROBE_TEXT) for s in window.text),
        )
        try:
            self._predict([ClosedWindow(probe, time.perf_counter_ns())])
        except Exception as exc:
            log.error("the engine fails on a harmless window too (%s)", _described(exc))
            return False
        return True

    def _used(self, window: Window) -> list[str]:
        """The modalities the window holds that the model uses, in ``MODALITIES`` order."""
        return [m for c, m in enumerate(MODALITIES) if window.mask[c] and m in self.modalities]

    def _without_failing_modality(self, item: ClosedWindow) -> tuple[Prediction | None, str]:
        window = item.window
        present = [MODALITIES.index(name) for name in self._used(window)]
        for column in present if len(present) > 1 else ():  # one left: nothing to predict from without it
            mask = tuple(p and c != column for c, p in enumerate(window.mask))
            try:
                cut = dataclasses.replace(item, window=dataclasses.replace(window, mask=mask))
                return self.run([cut])[0], MODALITIES[column]
            except Exception:  # not this modality (or not this one alone): the next
                continue
        return None, ""

    def _outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Per row, the task's prediction fields (label, score, scores, labels, embedding)."""
        # Python floats in one call: converting numpy scalars one by one costs more than the fusion head.
        rows = outputs.tolist()
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
