"""Latency of a runtime on synthetic windows: per graph and end to end (``fusionstream bench``'s
engine figures, and the inputs tests hold every backend to).

Inputs are random but well-formed raw window contents (RGB frames, audio, transcripts) prepared by
the model's own preprocessing, so they fit either format and any declared modality. Numbers are
medians over repeats after a warm-up, with every modality present (the worst case: nothing skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fusionstream.engines.backends.base import Runtime
from fusionstream.engines.manifest import AudioPreprocess, VideoPreprocess

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "hello", "camera")


def random_inputs(
    runtime: Runtime, rows: int, seed: int | np.random.Generator | None = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Each declared modality's encoder feed for ``rows`` windows (per-frame video: ``rows × frames``
    single frames), prepared by ``runtime.preprocess`` (``runtime`` must be active)."""
    rng = np.random.default_rng(seed)
    prep = runtime.preprocess
    assert prep is not None, "activate the runtime first"
    feeds: dict[str, dict[str, np.ndarray]] = {}
    for name, modality in runtime.manifest.modalities.items():
        pre = modality.preprocess
        if isinstance(pre, VideoPreprocess):
            assert prep.video is not None
            frames = [rng.integers(0, 256, (pre.height + 8, pre.width + 8, 3), dtype=np.uint8)
                      for _ in range(rows * pre.frames)]
            arrays = (prep.video.frames(frames) if modality.encoder.per_frame
                      else np.stack([prep.video.window(frames[i : i + pre.frames])
                                     for i in range(0, len(frames), pre.frames)]))
            feeds[name] = prep.video_feed(arrays)
        elif isinstance(pre, AudioPreprocess):
            loudness = rng.uniform(0.01, 1.0, (rows, 1))
            feeds[name] = prep.audio_feed((rng.random((rows, pre.samples)) * 2 - 1) * loudness)
        else:
            texts = [" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(rows)]
            feeds[name] = prep.text_feed(texts)
    return feeds


def embed(runtime: Runtime, feeds: dict[str, dict[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
    """``[rows, size]`` per modality: a per-frame video encoder's frames averaged per window."""
    out = {}
    for name, feed in feeds.items():
        emb = runtime.encode(name, feed)
        per_frame = name == "video" and runtime.embeds_frames
        out[name] = emb.reshape(rows, -1, emb.shape[1]).mean(axis=1) if per_frame else emb
    return out


def _median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure_latency(
    runtime: Runtime, batch_size: int, *, repeats: int = 30, warmup: int = 5, seed: int = 0
) -> dict[str, float]:
    """Median milliseconds per batch for each graph (each declared modality, ``fusion``), end to end
    (``total``: every encoder then the head, validation included) and per window (``per_window``).

    ``runtime`` must be active.
    """
    feeds = random_inputs(runtime, batch_size, seed)
    out = {name: _median_ms(lambda n=name: runtime.encode(n, feeds[n]), repeats, warmup) for name in feeds}
    mask = np.ones((batch_size, len(runtime.modalities)), np.float32)
    embeddings = embed(runtime, feeds, batch_size)
    out["fusion"] = _median_ms(lambda: runtime.fuse(embeddings, mask), repeats, warmup)
    out["total"] = _median_ms(lambda: runtime.fuse(embed(runtime, feeds, batch_size), mask), repeats, warmup)
    out["per_window"] = out["total"] / batch_size
    return out
