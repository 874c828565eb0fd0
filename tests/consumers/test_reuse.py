"""The embedding cache behind frame and caption reuse, and windows encoded ahead of their close."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fusionstream.consumers.pipeline.reuse import Embedder, EmbeddingCache
from fusionstream.engines.backends import open_runtime
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
    with open_runtime("onnxruntime", untrained_model) as runtime:
        assert runtime.embeds_frames, "the format-1 per-frame graph is the video encoder: frames are reused"
        cold, cold_mask = Embedder(runtime)(windows)
        warm = Embedder(runtime)
        warm.warm(windows[: len(windows) // 2])
        encoded_ahead = warm.stats.frames_encoded
        got, mask = warm(windows)
    assert encoded_ahead > 0 and warm.audio_warm_hits == len(windows) // 2
    assert warm.stats.frames_needed == len(windows) * spec.frames_per_window  # warming needs nothing itself
    assert list(got) == ["video", "audio", "text"] and mask.shape == (len(windows), 3) and mask.all()
    np.testing.assert_array_equal(mask, cold_mask)
    for name in got:
        np.testing.assert_allclose(cold[name], got[name], rtol=0, atol=1e-6)


def test_reused_frames_and_transcripts_embed_as_whole_windows(untrained_model: Path) -> None:
    """Frame reuse (the per-frame graph, each frame once, the mean per window) gives what the whole-window
    encoders give, on windows where modalities come and go."""
    from fusionstream.consumers.training.dataset import windows_of

    spec = ModelSpec.load(untrained_model)
    config = WindowConfig(frames_per_window=spec.frames_per_window, sample_rate=spec.sample_rate)
    windows = list(windows_of(SyntheticAV(SyntheticConfig(streams=2, seconds=6, seed=4)).records(), config))
    with open_runtime("onnxruntime", untrained_model) as runtime:
        reused = Embedder(runtime)
        got, mask = reused(windows)
        whole, whole_mask = Embedder(runtime, reuse=False)(windows)
    assert not mask.all() and mask.any(axis=0).all(), "the synthetic source drops some modalities"
    np.testing.assert_array_equal(mask, whole_mask)
    assert reused.stats.frames_saved > 0.4 and reused.stats.texts_encoded < reused.stats.texts_needed
    for column, name in enumerate(got):
        np.testing.assert_allclose(got[name], whole[name], rtol=0, atol=1e-5)
        assert not got[name][mask[:, column] == 0].any(), f"{name}: an absent modality's row is not zero"


def test_a_window_whose_audio_changed_after_warming_is_encoded_again(untrained_model: Path) -> None:
    window = _windows(untrained_model)[0]
    # What a late chunk does: the window closes with other samples than it was warmed with.
    changed = dataclasses.replace(window, audio=np.roll(window.audio, 4000))
    with open_runtime("onnxruntime", untrained_model) as runtime:
        embedder = Embedder(runtime)
        embedder.warm([window])
        audio = embedder([changed])[0]["audio"]
        expected = Embedder(runtime)([changed])[0]["audio"]
        stale = Embedder(runtime)([window])[0]["audio"]
    assert embedder.audio_warm_hits == 0
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-6)
    assert not np.allclose(audio, stale, atol=1e-3)  # the warmed embedding would have been wrong
