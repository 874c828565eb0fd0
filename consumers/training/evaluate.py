"""Accuracy of a deployed model directory: fused, each modality alone, each modality removed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusionstream.consumers.training.dataset import WindowSet
from fusionstream.engines.backends.base import Backend

MODALITY_NAMES = ("video", "audio", "text")
BATCH = 128


@dataclass(frozen=True, slots=True)
class Evaluation:
    fused: float
    fused_all: float
    single: dict[str, float]
    without: dict[str, float]
    windows: int
    clear_windows: int
    ms_per_window: float

    def to_dict(self) -> dict[str, object]:
        return {
            "fused": round(self.fused, 4),
            "single": {k: round(v, 4) for k, v in self.single.items()},
            "without": {k: round(v, 4) for k, v in self.without.items()},
            "windows": self.clear_windows,
            "all_windows": self.windows,
            "fused_all": round(self.fused_all, 4),
            "ms_per_window": round(self.ms_per_window, 3),
        }


def predict(backend: Backend, data: WindowSet, mask: np.ndarray | None = None) -> np.ndarray:
    """Top class per window, in batches."""
    out = np.empty(len(data), dtype=np.int64)
    for start in range(0, len(data), BATCH):
        index = slice(start, start + BATCH)
        probs = backend.infer(data.batch(index, None if mask is None else mask[index]))
        out[index] = probs.argmax(axis=1)
    return out


def evaluate(backend: Backend, data: WindowSet, progress: Callable[[], None] | None = None) -> Evaluation:
    """Accuracy over clear windows (and over all labelled windows for the fused model)."""
    labelled = data.label >= 0
    clear = data.clear & labelled

    def accuracy(mask: np.ndarray | None, over: np.ndarray = clear) -> tuple[float, np.ndarray]:
        predicted = predict(backend, data, mask)
        if progress:
            progress()
        return float((predicted[over] == data.label[over]).mean()), predicted

    started = time.perf_counter()
    fused, predicted = accuracy(None)
    elapsed = time.perf_counter() - started
    fused_all = float((predicted[labelled] == data.label[labelled]).mean())
    single, without = {}, {}
    for i, name in enumerate(MODALITY_NAMES):
        only = np.zeros_like(data.mask)
        only[:, i] = data.mask[:, i]
        single[name] = accuracy(only)[0]
        removed = data.mask.copy()
        removed[:, i] = False
        without[name] = accuracy(removed)[0]
    return Evaluation(
        fused=fused,
        fused_all=fused_all,
        single=single,
        without=without,
        windows=int(labelled.sum()),
        clear_windows=int(clear.sum()),
        ms_per_window=1000 * elapsed / max(1, len(data)),
    )
