"""Frozen embeddings of labelled windows, computed once and cached on disk (``train --encoders``).

Embedding windows with pretrained encoders is the expensive part of training a head (a ResNet per
frame, a transformer per transcript); fitting seven heads on the embeddings costs seconds. So the
windows of a data set are embedded once, exactly as serving embeds them — the declared preprocessing
(``engines/preprocess.py``) and the serving embedder (``consumers/pipeline/reuse.py``: a
per-frame video encoder embeds each sampled frame once and a window gets the mean of its frames',
each distinct transcript once) — and kept in ``--cache DIR`` as ``embeddings-<key>.npz``.

The key is a SHA-256 of everything the embeddings depend on: the bytes of every file the
declared modalities use (encoder graphs, tokenizer), their manifest entries (preprocessing, input
and output names, sizes, ``per_frame``), the window, and the data (the synthetic runs' configs, or
each clip's name, spans, size and mtime), plus :data:`CACHE_FORMAT`. Anything else — the version,
a head, the task, head epochs — can change and the cache still hits.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from rich.progress import Progress

from fusionstream.consumers.training.frozen_data import Part, data_key, labelled_windows
from fusionstream.engines.manifest import Manifest, TextPreprocess, load_manifest
from fusionstream.engines.preprocess import Preprocessor
from fusionstream.stream.sources.truth import CLEAR_SHARE

#: Bumped when what is cached (or how it is computed) changes: old files then stop matching.
CACHE_FORMAT = 1
#: A class is a multi-label target of a window it covers at least this share of.
TARGET_SHARE = 0.5
#: Multi-label scores count only windows where every class is clearly in or out (not cut by the edge).
CERTAIN_BELOW = 1.0 - CLEAR_SHARE


class EncoderSessions:
    """The declared encoders of a format-2 directory on ONNX Runtime, encoders-only directories included.

    Duck-types the part of the runtime of :func:`~fusionstream.engines.backends.open_runtime` that
    :class:`~fusionstream.consumers.pipeline.reuse.Embedder` uses (``preprocess``,
    ``modalities``, ``sizes``, ``embeds_frames``, ``encode``, ``encode_frames``): the runtime refuses
    a directory without a fusion head, which is exactly what a head is trained on.
    """

    def __init__(self, manifest: Manifest, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        self.preprocess = Preprocessor(manifest)
        self.modalities: tuple[str, ...] = tuple(manifest.modalities)
        self.sizes = {name: m.encoder.size for name, m in manifest.modalities.items()}
        video = manifest.modalities.get("video")
        self.embeds_frames = video is not None and video.encoder.per_frame
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        self._sessions = {
            name: ort.InferenceSession(str(manifest.directory / m.encoder.file), options,
                                       providers=["CPUExecutionProvider"])
            for name, m in manifest.modalities.items()
        }

    @property
    def frame_side(self) -> int:
        return self.manifest.frame_side

    def encode(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        spec = self.manifest.modalities[modality].encoder
        if len(next(iter(feed.values()))) == 0:
            return np.zeros((0, spec.size), np.float32)
        (out,) = self._sessions[modality].run([spec.output], feed)
        return np.asarray(out, dtype=np.float32)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        return self.encode("video", self.preprocess.video_feed(frames))


@dataclass
class EmbeddedSet:
    """Embedded windows: per declared modality ``float32 [N, size]`` (zeros where absent), the
    presence ``mask bool [N, declared]`` and the labels as per-class ``coverage float32 [N, C]``."""

    emb: dict[str, np.ndarray]
    mask: np.ndarray
    coverage: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.emb)

    @property
    def label(self) -> np.ndarray:
        """The class covering most of each window, -1 where none does (ties: the lower index)."""
        best = self.coverage.argmax(axis=1) if len(self) else np.zeros(0, np.int64)
        return np.where(self.coverage.max(axis=1, initial=0.0) > 0, best, -1).astype(np.int64)

    @property
    def clear(self) -> np.ndarray:
        """Windows one class covers at least ``CLEAR_SHARE`` of (``GroundTruth.label``'s rule)."""
        return self.coverage.max(axis=1, initial=0.0) >= CLEAR_SHARE

    @property
    def targets(self) -> np.ndarray:
        """Multi-label targets ``bool [N, C]``: every class covering at least half the window."""
        return self.coverage >= TARGET_SHARE

    @property
    def certain(self) -> np.ndarray:
        """Windows where no class is only partly in (every share ≤ 25 % or ≥ 75 %)."""
        c = self.coverage
        return ((c <= CERTAIN_BELOW) | (c >= CLEAR_SHARE)).all(axis=1)

    def select(self, index: np.ndarray) -> EmbeddedSet:
        return EmbeddedSet({m: e[index] for m, e in self.emb.items()}, self.mask[index], self.coverage[index],
                           self.classes)

    @classmethod
    def concat(cls, parts: Sequence[EmbeddedSet]) -> EmbeddedSet:
        first = parts[0]
        return cls({m: np.concatenate([p.emb[m] for p in parts]) for m in first.emb},
                   np.concatenate([p.mask for p in parts]), np.concatenate([p.coverage for p in parts]),
                   first.classes)

    def save(self, path: Path) -> None:
        # Written beside, then renamed: an interrupted run never leaves a truncated cache file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, mask=self.mask, coverage=self.coverage, classes=np.array(self.classes),
                 modalities=np.array(self.modalities), **{f"emb_{m}": e for m, e in self.emb.items()})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> EmbeddedSet:
        with np.load(path, allow_pickle=False) as data:
            modalities = [str(m) for m in data["modalities"]]
            return cls({m: data[f"emb_{m}"] for m in modalities}, data["mask"], data["coverage"],
                       tuple(str(c) for c in data["classes"]))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoders_key(manifest: Manifest) -> str:
    """A digest of the declared encoders: their files' bytes, their manifest entries, the window."""
    h = hashlib.sha256(f"fusionstream-embeddings-{CACHE_FORMAT}".encode())
    h.update(repr((manifest.window_ns, manifest.hop_ns)).encode())
    for name, modality in manifest.modalities.items():
        # the dataclass repr is every field (preprocessing, names, sizes, per_frame), deterministic
        h.update(repr((name, modality)).encode())
        h.update(_digest(manifest.directory / modality.encoder.file).encode())
        pre = modality.preprocess
        if isinstance(pre, TextPreprocess) and pre.tokenizer is not None:
            h.update(_digest(manifest.directory / pre.tokenizer).encode())
    return h.hexdigest()


def embed_part(runtime: EncoderSessions, part: Part, classes: Sequence[str]) -> EmbeddedSet:
    """Every window of one part, embedded as serving embeds it, with its label coverage."""
    from fusionstream.consumers.pipeline.reuse import Embedder

    # A fresh embedder per part: its frame and transcript reuse is keyed by (stream, time) and
    # (stream, text), and two synthetic runs have streams of the same names and times.
    embedder = Embedder(cast(Any, runtime), reuse=True)
    pieces: list[EmbeddedSet] = []
    for windows, cover in labelled_windows(part, runtime.manifest, len(classes), runtime.frame_side):
        emb, mask = embedder(windows)
        pieces.append(EmbeddedSet(emb, mask > 0.5, cover, tuple(classes)))
    if not pieces:
        empty = {m: np.zeros((0, s), np.float32) for m, s in runtime.sizes.items()}
        return EmbeddedSet(empty, np.zeros((0, len(runtime.modalities)), bool),
                           np.zeros((0, len(classes)), np.float32), tuple(classes))
    return EmbeddedSet.concat(pieces)


def _embed_in_worker(directory: str, part: Part, classes: tuple[str, ...]) -> EmbeddedSet:
    # One ONNX Runtime thread per process: the processes are the parallelism.
    return embed_part(EncoderSessions(load_manifest(directory), threads=1), part, classes)


def embed_parts(
    manifest: Manifest,
    parts: Sequence[Part],
    classes: Sequence[str],
    *,
    what: str,
    progress: Progress,
    cache: Path | None = None,
    workers: int = 1,
) -> tuple[EmbeddedSet, bool]:
    """The embedded windows of ``parts`` and whether they came from the cache."""
    key = hashlib.sha256((encoders_key(manifest) + data_key(parts, classes)).encode()).hexdigest()[:20]
    path = cache / f"embeddings-{key}.npz" if cache is not None else None
    if path is not None and path.is_file():
        data = EmbeddedSet.load(path)
        progress.add_task(f"{what} (cached)", total=1, completed=1, info=f"{len(data)} windows")
        return data, True
    task = progress.add_task(f"embedding {what}", total=len(parts), info="")
    done: list[EmbeddedSet] = []

    def finished(part_set: EmbeddedSet) -> None:
        done.append(part_set)
        progress.update(task, advance=1, info=f"{sum(len(d) for d in done)} windows")

    if workers <= 1 or len(parts) <= 1:
        runtime = EncoderSessions(manifest)
        for part in parts:
            finished(embed_part(runtime, part, classes))
    else:
        # spawn, not fork: a forked child of a process with ONNX Runtime or torch threads can deadlock.
        with ProcessPoolExecutor(min(workers, len(parts)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_embed_in_worker, str(manifest.directory), p, tuple(classes)) for p in parts]
            for future in futures:
                finished(future.result())
    data = EmbeddedSet.concat(done)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
    return data, False


__all__ = ["CACHE_FORMAT", "EmbeddedSet", "EncoderSessions", "embed_part", "embed_parts", "encoders_key"]
