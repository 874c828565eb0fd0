"""The embedding cache behind frame and caption reuse, and windows encoded ahead of their close."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fusionstream.consumers.pipeline.reuse import EmbeddingCache, WindowEmbedder
from fusionstream.engines.backends import load_backend
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.windows import WindowConfig


def test_the_cache_forgets_the_least_recently_used_row_first() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache(2)
    cache.put("a", np.zeros(2))
    cache.put("b", np.ones(2))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", np.full(2, 2.0))
    assert len(cache) == 2 and cache.get("b") is None
    np.testing.assert_array_equal(cache.get("a"), np.zeros(2))
    np.testing.assert_array_equal(cache.get("c"), np.full(2, 2.0))
    with pytest.raises(ValueError):
        EmbeddingCache(0)


def _windows(model_dir: Path, seconds: float = 4) -> list:
    from fusionstream.consumers.training.dataset import windows_of

    spec = ModelSpec.load(model_dir)
    config = WindowConfig(frames_per_window=spec.frames_per_window, sample_rate=spec.sample_rate)
    records = SyntheticAV(SyntheticConfig(streams=2, seconds=seconds, seed=11)).records()
    return [w for w in windows_of(records, config) if all(w.mask)]


def test_warmed_windows_embed_exactly_as_cold_ones(untrained_model: Path) -> None:
    spec = ModelSpec.load(untrained_model)
    windows = _windows(untrained_model)
    with load_backend("onnxruntime", untrained_model) as backend:
        cold = WindowEmbedder(backend, spec)(windows)
        warm = WindowEmbedder(backend, spec)
        warm.warm(windows[: len(windows) // 2])
        encoded_ahead = warm.stats.frames_encoded
        got = warm(windows)
    assert encoded_ahead > 0 and warm.audio_warm_hits == len(windows) // 2
    assert warm.stats.frames_needed == len(windows) * spec.frames_per_window  # warming needs nothing itself
    for a, b in zip(cold, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_window_whose_audio_changed_after_warming_is_encoded_again(untrained_model: Path) -> None:
    spec = ModelSpec.load(untrained_model)
    window = _windows(untrained_model)[0]
    # What a late chunk does: the window closes with other samples than it was warmed with.
    changed = dataclasses.replace(window, audio=np.roll(window.audio, 4000))
    with load_backend("onnxruntime", untrained_model) as backend:
        embedder = WindowEmbedder(backend, spec)
        embedder.warm([window])
        _, audio, _, _ = embedder([changed])
        _, expected, _, _ = WindowEmbedder(backend, spec)([changed])
        _, stale, _, _ = WindowEmbedder(backend, spec)([window])
    assert embedder.audio_warm_hits == 0
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-6)
    assert not np.allclose(audio, stale, atol=1e-3)  # the warmed embedding would have been wrong
