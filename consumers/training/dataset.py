"""Labelled window sets, made by running sources through the serving aligner and featuriser.

Training must see exactly what serving sees, so a window set is built from the
same ``Aligner`` and ``Featurizer`` the pipeline uses. Arrays are kept compact
(uint8 frames, float16 audio) so tens of thousands of windows fit in memory.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionstream.consumers.pipeline.featurize import Featurizer
from fusionstream.engines.features import Batch
from fusionstream.engines.spec import MODALITIES, ModelSpec
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Record
from fusionstream.stream.sources import GroundTruth, SyntheticAV, SyntheticConfig
from fusionstream.stream.windows import Window, WindowConfig

CHUNK = 64


@dataclass(slots=True)
class WindowSet:
    """Featurised windows with labels; ``label`` is -1 where no digit covers the window."""

    video: np.ndarray  # uint8 [N, K, 3, S, S]
    audio: np.ndarray  # float16 [N, samples]
    text: np.ndarray  # int16 [N, L]
    mask: np.ndarray  # bool [N, len(MODALITIES)]
    label: np.ndarray  # int64 [N]
    clear: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, index: np.ndarray | slice, mask: np.ndarray | None = None) -> Batch:
        """Float model inputs for the selected rows, optionally with another presence mask."""
        return Batch(
            video=self.video[index].astype(np.float32) / 255.0,
            audio=self.audio[index].astype(np.float32),
            text=self.text[index].astype(np.int64),
            mask=(self.mask[index] if mask is None else mask).astype(np.float32),
        )

    def select(self, index: np.ndarray) -> WindowSet:
        return WindowSet(*(getattr(self, f)[index] for f in self.__slots__))  # type: ignore[attr-defined]

    @classmethod
    def concat(cls, parts: Sequence[WindowSet]) -> WindowSet:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))  # type: ignore[attr-defined]

    def save(self, path: Path) -> None:
        np.savez(path, **{f: getattr(self, f) for f in self.__slots__})  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: Path) -> WindowSet:
        with np.load(path) as data:
            return cls(*(data[f] for f in cls.__slots__))  # type: ignore[attr-defined]


def window_config_for(spec: ModelSpec) -> WindowConfig:
    """The aligner settings a model was trained with (offline data arrives in order: no lateness)."""
    return WindowConfig(
        window_ns=spec.window_ns,
        hop_ns=spec.hop_ns,
        frames_per_window=spec.frames_per_window,
        sample_rate=spec.sample_rate,
        lateness_ns=0,
    )


def windows_of(records: Iterable[Record], config: WindowConfig, *, lazy_jpeg: bool = False) -> Iterable[Window]:
    """Every window of an in-order record sequence, closed by watermark, then flushed (with
    ``lazy_jpeg``, JPEG frames stay undecoded: ``fusionstream.stream.media.decode_media``)."""
    aligner = Aligner(config)
    for record in records:
        aligner.add(decode_media(record, lazy_jpeg=lazy_jpeg), 0)
        yield from aligner.poll(0)
    yield from aligner.flush()


def featurize_windows(
    windows: Iterable[Window], spec: ModelSpec, truth: GroundTruth | None
) -> WindowSet:
    """Featurise and label windows in chunks (labels from ``truth``; -1 without it)."""
    featurize = Featurizer(spec)
    parts: list[WindowSet] = []
    chunk: list[Window] = []

    def emit() -> None:
        batch = featurize(chunk)
        labels = [truth.label(w.stream_id, w.t_start_ns, w.t_end_ns) if truth else None for w in chunk]
        parts.append(
            WindowSet(
                video=np.round(batch.video * 255).astype(np.uint8),
                audio=batch.audio.astype(np.float16),
                text=batch.text.astype(np.int16),
                mask=batch.mask.astype(bool),
                label=np.array([-1 if t is None or t.digit is None else t.digit for t in labels], np.int64),
                clear=np.array([bool(t and t.clear) for t in labels]),
            )
        )
        chunk.clear()

    for window in windows:
        chunk.append(window)
        if len(chunk) >= CHUNK:
            emit()
    if chunk:
        emit()
    return WindowSet.concat(parts) if parts else _empty(spec)


def _empty(spec: ModelSpec) -> WindowSet:
    k, s, n = spec.frames_per_window, spec.image_size, spec.window_ns * spec.sample_rate // 1_000_000_000
    return WindowSet(
        np.zeros((0, k, 3, s, s), np.uint8), np.zeros((0, n), np.float16), np.zeros((0, spec.text_max_len), np.int16),
        np.zeros((0, len(MODALITIES)), bool), np.zeros(0, np.int64), np.zeros(0, bool),
    )


def synthesize(spec: ModelSpec, config: SyntheticConfig) -> WindowSet:
    """One synthetic run, windowed and labelled."""
    source = SyntheticAV(config)
    return featurize_windows(windows_of(source.records(), window_config_for(spec)), spec, source.truth)


def synthesize_many(
    spec: ModelSpec,
    configs: Sequence[SyntheticConfig],
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> WindowSet:
    """Several synthetic runs in parallel processes (rendering and JPEG coding are CPU-bound)."""
    if workers <= 1:
        parts = []
        for config in configs:
            parts.append(synthesize(spec, config))
            if progress:
                progress(1)
        return WindowSet.concat(parts)
    # spawn, not fork: a forked child of a process with torch threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(synthesize, spec, config) for config in configs]
        parts = []
        for future in futures:
            parts.append(future.result())
            if progress:
                progress(1)
    return WindowSet.concat(parts)
