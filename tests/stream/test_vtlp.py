"""Two audio front-end changes the ablation tries: VTLP (formants moved, only while training) and cepstral smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionstream.engines.encoders.audio import AudioEncoder, LogMel, cepstral_smoother, mel_filterbank, vtlp_warp

RATE = 16_000


def _tone(hz: float, rows: int = 3) -> torch.Tensor:
    t = np.arange(RATE) / RATE
    return torch.from_numpy((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32))[None].repeat(rows, 1)


def _loudest_band(log_mel: torch.Tensor) -> int:
    return int(log_mel[0].mean(dim=1).argmax())


def test_warp_scales_below_the_bend_and_keeps_the_band_ends() -> None:
    hz = np.linspace(0.0, RATE / 2, 81)
    for alpha in (0.85, 1.0, 1.18):
        warped = vtlp_warp(hz, alpha, RATE)
        assert warped[0] == 0.0 and warped[-1] == pytest.approx(RATE / 2)
        assert np.all(np.diff(warped) > 0)  # monotonic: no two frequencies land on one
        low = hz < 2000
        np.testing.assert_allclose(warped[low], alpha * hz[low])
    assert mel_filterbank(40, 400, RATE, warp=1.0) == pytest.approx(mel_filterbank(40, 400, RATE))


@pytest.mark.parametrize(("alpha", "hz"), [(0.85, 1000.0), (1.18, 1000.0), (1.18, 2500.0)])
def test_a_tone_is_heard_where_the_warp_moves_it(alpha: float, hz: float) -> None:
    frontend = LogMel(RATE, 40)
    with torch.no_grad():
        warped = frontend.warped(_tone(hz), (alpha, alpha), levels=1)
        # The warped tone sits in the band a tone at alpha * hz sits in unwarped, not where it was.
        assert _loudest_band(warped) == _loudest_band(frontend(_tone(alpha * hz)))
        assert _loudest_band(warped) != _loudest_band(frontend(_tone(hz)))
        # No warp is the plain front end, exactly.
        assert torch.equal(frontend.warped(_tone(hz), (1.0, 1.0), levels=1), frontend(_tone(hz)))


def test_the_encoder_warps_only_while_training() -> None:
    torch.manual_seed(0)
    encoder = AudioEncoder(16, RATE, 40, pooling="mean+max")
    encoder.vtlp = (0.85, 1.18)
    wave = torch.randn(8, RATE) * 0.1
    with torch.no_grad():
        encoder.eval()
        warped_off = AudioEncoder(16, RATE, 40, pooling="mean+max")
        warped_off.load_state_dict(encoder.state_dict())
        warped_off.eval()
        # In eval mode (and so in an exported graph) the warp is not there at all: the plain encoder's output.
        np.testing.assert_allclose(encoder(wave).numpy(), warped_off(wave).numpy(), rtol=1e-5, atol=1e-6)
        encoder.train()
        torch.manual_seed(1)
        first = encoder(wave)
        torch.manual_seed(2)
        assert (first - encoder(wave)).abs().max() > 1e-3  # a fresh factor per row and call
        encoder.vtlp = None
        np.testing.assert_allclose(encoder(wave).numpy(), encoder(wave).numpy(), rtol=1e-5, atol=1e-6)


def test_cepstral_smoothing_keeps_the_envelope_and_drops_the_harmonic_ripple() -> None:
    smoother = cepstral_smoother(40, 12)
    np.testing.assert_allclose(smoother @ smoother, smoother, atol=1e-5)  # a projection
    np.testing.assert_allclose(cepstral_smoother(40, 40), np.eye(40), atol=1e-5)
    bands = np.arange(40)
    envelope = np.cos(np.pi * (bands + 0.5) * 3 / 40)  # formant-like: three half-periods across the band
    ripple = 0.5 * np.cos(np.pi * (bands + 0.5) * 30 / 40)  # harmonics: a period of under three bands
    smoothed = smoother @ (envelope + ripple)
    np.testing.assert_allclose(smoothed, envelope, atol=1e-5)
    encoder = AudioEncoder(16, RATE, 40, cepstra=12)
    assert "lifter" not in encoder.state_dict()  # a constant of the architecture, not a weight
    assert encoder(torch.randn(2, RATE) * 0.1).shape == (2, 16)
