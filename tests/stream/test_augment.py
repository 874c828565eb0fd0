"""Render-time augmentation of the synthetic source, and SpecAugment in the audio encoder."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fusionstream.engines.encoders.audio import AudioEncoder, mask_axis
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Modality
from fusionstream.stream.sources import Corruption, SpeechBank, SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.augment import AUDIO_KINDS, Augmentation, reverberate
from fusionstream.stream.sources.render import segment_base

CONFIG = SyntheticConfig(streams=2, seconds=10.0, seed=3)


def _records(config: SyntheticConfig) -> list:
    return list(SyntheticAV(config).records())


def test_off_by_default_and_reproducible_when_on() -> None:
    assert not CONFIG.augment.active and Augmentation().active
    augmented = SyntheticConfig(streams=2, seconds=10.0, seed=3, augment=Augmentation())
    first, again = _records(augmented), _records(augmented)
    assert [r.payload for r in first] == [r.payload for r in again]  # the same seed, the same bytes
    plain = _records(CONFIG)
    source = SyntheticAV(augmented)
    # The plan (digits, segment times, corruption) does not move; the media do.
    plain_truth = SyntheticAV(CONFIG).truth
    assert all(source.truth.segments(sid) == plain_truth.segments(sid) for sid in source.stream_ids)
    audio = [r.payload for r in first if r.modality is Modality.AUDIO]
    assert audio != [r.payload for r in plain if r.modality is Modality.AUDIO]
    frames = [r.payload for r in first if r.modality is Modality.VIDEO]
    assert frames != [r.payload for r in plain if r.modality is Modality.VIDEO]


def test_words_stay_inside_their_segments_when_tempo_changes_their_length() -> None:
    config = SyntheticConfig(streams=2, seconds=30.0, seed=5, augment=Augmentation(tempo=1.0, pitch=0.0, reverb=0.0))
    source = SyntheticAV(config)
    truth = source.truth
    for sid in source.stream_ids:
        words = list(source.utterances(sid))
        assert words
        segments = truth.segments(sid)
        for word in words:
            segment = next(s for s in segments if s.t_start_ns <= word.t_start_ns < s.t_end_ns)
            assert segment.digit == word.digit
            assert word.t_end_ns <= segment.t_end_ns
        plain = list(SyntheticAV(SyntheticConfig(streams=2, seconds=30.0, seed=5)).utterances(sid))
        assert [w.t_end_ns - w.t_start_ns for w in words] != [w.t_end_ns - w.t_start_ns for w in plain]


def test_word_perturbations_change_pitch_tempo_and_level() -> None:
    clip = SpeechBank.load("train")[3][0].samples
    rng = np.random.default_rng(0)
    tempo = Augmentation(pitch=0.0, tempo=1.0, reverb=0.0, gain_db=0.0).word(clip, 16_000, rng)
    assert len(tempo) != len(clip)
    pitched = Augmentation(pitch=1.0, tempo=0.0, reverb=0.0, gain_db=0.0).word(clip, 16_000, np.random.default_rng(1))
    assert abs(len(pitched) - len(clip)) <= 0.02 * len(clip)  # a pitch shift keeps the length ...
    spectrum = lambda x: np.abs(np.fft.rfft(x, 16_000))  # noqa: E731
    centroid = lambda s: float((s * np.arange(len(s))).sum() / s.sum())  # noqa: E731
    assert abs(centroid(spectrum(pitched)) - centroid(spectrum(clip))) > 30  # ... and moves the spectrum
    none = Augmentation.none().word(clip, 16_000, rng)
    np.testing.assert_array_equal(none, clip)
    for _ in range(20):
        out = Augmentation().word(clip, 16_000, rng)
        assert out.dtype == np.float32 and np.abs(out).max() <= 1.0 and np.isfinite(out).all()


def test_reverberation_adds_a_decaying_tail_and_keeps_length() -> None:
    click = np.zeros(8000, np.float32)
    click[100] = 0.9
    wet = reverberate(click, 16_000, np.random.default_rng(2))
    assert len(wet) == len(click)
    assert np.abs(wet[:100]).max() < 1e-6  # nothing before the sound (FFT round-off aside)
    energy = np.square(wet[200:])
    assert energy.sum() > 0  # a tail after the direct sound ...
    assert energy[:1000].sum() > energy[-1000:].sum()  # ... that decays


def test_scene_perturbations_keep_shape_and_change_pixels() -> None:
    image = segment_base(7, "digit", (96, 96), np.random.default_rng(4)).image
    changed = 0
    for seed in range(20):
        out = Augmentation().scene(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        changed += int(not np.array_equal(out, image))
    assert changed >= 15
    np.testing.assert_array_equal(Augmentation.none().scene(image, np.random.default_rng(0)), image)


def test_cheap_jpeg_quality_is_used_on_the_wire() -> None:
    config = SyntheticConfig(streams=1, seconds=20.0, seed=9, augment=Augmentation(**{**_zero(), "low_jpeg": 1.0}))
    plain = SyntheticConfig(streams=1, seconds=20.0, seed=9)
    size = lambda c: sum(len(r.payload) for r in _records(c) if r.modality is Modality.VIDEO)  # noqa: E731
    assert size(config) < 0.8 * size(plain)
    frame = next(r for r in _records(config) if r.modality is Modality.VIDEO)
    decoded = decode_media(frame)
    assert decoded.image.shape == (96, 96, 3)  # type: ignore[union-attr]
    assert cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_COLOR) is not None


def _zero() -> dict[str, float]:
    return {name: 0.0 for name in Augmentation.rates()}


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError, match=r"Augmentation\.pitch"):
        Augmentation(pitch=1.5)
    with pytest.raises(ValueError, match="gain_db"):
        Augmentation(gain_db=-1.0)
    with pytest.raises(ValueError, match="not a probability"):
        Corruption(text_missing=-0.1)


def test_only_keeps_one_modalitys_kinds() -> None:
    audio, video = Augmentation().only("audio"), Augmentation().only("video")
    for name in AUDIO_KINDS:
        assert getattr(audio, name) == getattr(Augmentation(), name) and getattr(video, name) == 0.0
    assert video.typeface == Augmentation().typeface and video.affine == Augmentation().affine
    assert audio.typeface == audio.affine == 0.0 and audio.active and video.active
    with pytest.raises(ValueError, match="choose 'audio' or 'video'"):
        Augmentation().only("text")


def test_spec_augment_masks_only_while_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 40, 98)
    masked = mask_axis(x, 2, 2, 10)
    zero_frames = (masked == 0).all(dim=1)  # [B, frames]: whole frames zeroed
    assert zero_frames.any() and zero_frames.sum(dim=1).max() <= 20
    masked_bands = (mask_axis(x, 1, 2, 5) == 0).all(dim=2)
    assert masked_bands.any() and masked_bands.sum(dim=1).max() <= 10
    encoder = AudioEncoder(16, 16_000, 40)
    encoder.spec_augment = ((2, 5), (2, 10))
    wave = torch.randn(4, 16_000) * 0.1
    encoder.eval()
    with torch.no_grad():
        # Eval: no masks, the same output (to float noise: a loaded host's threads may sum in another order).
        np.testing.assert_allclose(encoder(wave).numpy(), encoder(wave).numpy(), rtol=1e-5, atol=1e-6)
        encoder.train()
        torch.manual_seed(1)
        first = encoder(wave)
        torch.manual_seed(2)
        assert (first - encoder(wave)).abs().max() > 1e-3  # training: fresh masks per call, far beyond noise
        encoder.spec_augment = None  # the masks made that difference, not training mode itself
        np.testing.assert_allclose(encoder(wave).numpy(), encoder(wave).numpy(), rtol=1e-5, atol=1e-6)
