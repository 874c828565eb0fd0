"""Audio encoder: a log-mel front end built from fixed convolutions, then a small 2D CNN.

The STFT is a ``conv1d`` whose kernels are the real and imaginary parts of a Hann-windowed
DFT, and the mel filterbank is a constant matrix: plain Conv/MatMul/Log nodes that ONNX
Runtime and TensorRT both run, where ``torch.stft`` exports to ops TensorRT lacks.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from fusionstream.engines.encoders.image import pool_block, standardize
from fusionstream.engines.spec import AUDIO_HOP, AUDIO_N_FFT, AUDIO_POOLINGS

LOG_FLOOR = 1e-6


def hann_dft_basis(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary DFT kernels ``[n_fft // 2 + 1, n_fft]`` with a periodic Hann window.

    Row k of ``real + 1j * imag`` dotted with a frame gives bin k of ``rfft(hann * frame)``,
    the same as ``torch.stft(..., window=torch.hann_window(n_fft), center=False)``.
    """
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = 2 * np.pi * np.outer(np.arange(n_fft // 2 + 1), n) / n_fft
    return (window * np.cos(angle)).astype(np.float32), (-window * np.sin(angle)).astype(np.float32)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None, warp: float = 1.0,
) -> np.ndarray:
    """Triangular mel filters ``float32 [n_mels, n_fft // 2 + 1]`` on the HTK mel scale.

    Filters are area-normalised (Slaney style: each triangle scaled by ``2 / bandwidth``), so a
    wide high-frequency filter does not dominate the narrow low ones. A ``warp`` other than 1 reads
    the spectrum through :func:`vtlp_warp` (a training augmentation).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    bins = vtlp_warp(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1), warp, sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return weights.astype(np.float32)


#: Where VTLP's warp bends (Jaitly and Hinton use 4.8 kHz at 16 kHz): below it every frequency is
#: scaled by the warp factor; above it a straight line keeps the Nyquist frequency in place.
VTLP_BOUNDARY = 0.3


def vtlp_warp(hz: np.ndarray, alpha: float, sample_rate: int) -> np.ndarray:
    """Vocal tract length perturbation (Jaitly and Hinton, 2013): the frequency ``hz`` of a speaker is
    heard at in the spectrum of a speaker whose vocal tract is ``1 / alpha`` as long (formants
    ``alpha`` times higher), piecewise linear so that the band keeps its ends."""
    if alpha == 1.0:
        return hz
    nyquist = sample_rate / 2
    bend = VTLP_BOUNDARY * sample_rate * min(alpha, 1.0) / alpha
    upper = nyquist - (nyquist - alpha * bend) / (nyquist - bend) * (nyquist - hz)
    return np.where(hz <= bend, alpha * hz, upper)


class LogMel(nn.Module):
    """``wave [B, N]`` → ``log(mel power + 1e-6) [B, n_mels, frames]``.

    No padding: ``frames = 1 + (N - n_fft) // hop``.

    Always computes in float32, even inside an fp16 model: a full-scale tone reaches a power
    of ~1e4 per bin, and summing bins into a mel band can overflow float16.
    """

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int = AUDIO_N_FFT, hop: int = AUDIO_HOP) -> None:
        super().__init__()
        self.hop = hop
        self.bins = n_fft // 2 + 1
        self._spec = (sample_rate, n_mels, n_fft)
        real, imag = hann_dft_basis(n_fft)
        # Constants derived from the spec, not learned: non-persistent, so model.pt stays small.
        self.register_buffer("dft", torch.from_numpy(np.concatenate([real, imag])[:, None, :]), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(n_mels, n_fft, sample_rate)), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram of each waveform, in the input's dtype."""
        # .float() is a no-op in a float32 model (and in the exported graph); after .half() it
        # brings the computation back to float32.
        spec = nn.functional.conv1d(wave.float().unsqueeze(1), self.dft.float(), stride=self.hop)
        real, imag = spec[:, : self.bins], spec[:, self.bins :]
        power = real * real + imag * imag
        return torch.log(torch.matmul(self.mel.float(), power) + LOG_FLOOR).to(wave.dtype)

    def warped(self, wave: torch.Tensor, factors: tuple[float, float], levels: int = 9) -> torch.Tensor:
        """:meth:`forward` as another speaker's vocal tract would give it: each waveform's spectrum
        read through :func:`vtlp_warp` with a factor drawn from ``levels`` steps across ``factors``.
        A training augmentation: it never runs in eval mode, so never in an exported graph."""
        key = (*factors, levels, wave.device)
        if getattr(self, "_warp_key", None) != key:
            sample_rate, n_mels, n_fft = self._spec
            banks = [mel_filterbank(n_mels, n_fft, sample_rate, warp=a) for a in np.linspace(*factors, levels)]
            self._warp_banks = torch.from_numpy(np.stack(banks)).to(wave.device)
            self._warp_key = key
        spec = nn.functional.conv1d(wave.float().unsqueeze(1), self.dft.float(), stride=self.hop)
        real, imag = spec[:, : self.bins], spec[:, self.bins :]
        banks = self._warp_banks[torch.randint(levels, (wave.shape[0],), device=wave.device)]
        return torch.log(torch.bmm(banks, real * real + imag * imag) + LOG_FLOOR).to(wave.dtype)


class AudioEncoder(nn.Module):
    """``audio float32 [B, N]`` raw waveform in [-1, 1] → ``[B, embed_dim]``.

    Each window's log-mel is normalised on its own: subtracting the per-band mean over time
    removes any gain and microphone colouring (a gain g adds ``2 log g`` to every log-power),
    and dividing by the RMS deviation removes the spread, so loudness does not matter. Max-
    pooling blocks then find word parts wherever they fall in the window; the mean over the
    remaining time axis keeps the frequency layout.
    """

    def __init__(
        self, embed_dim: int, sample_rate: int, n_mels: int, channels: tuple[int, ...] = (32, 64, 96, 128),
        pooling: str = "mean", cepstra: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in AUDIO_POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: choose mean or mean+max")
        self.frontend = LogMel(sample_rate, n_mels)
        # Cepstral smoothing is tried by scripts/ablate.py only (docs/training.md: not in the recipe),
        # so ModelSpec does not carry it and a saved model never has it.
        self.cepstra = cepstra
        if cepstra:
            self.register_buffer("lifter", torch.from_numpy(cepstral_smoother(n_mels, cepstra)), persistent=False)
        widths = (1, *channels)
        self.features = nn.Sequential(*(pool_block(a, b) for a, b in itertools.pairwise(widths)))
        bands = n_mels // 2 ** len(channels)
        if bands < 1:
            raise ValueError(f"n_mels {n_mels} is too few for {len(channels)} pooling blocks")
        self.pooling = pooling
        self.proj = nn.Linear(channels[-1] * bands * (2 if pooling == "mean+max" else 1), embed_dim)

    #: SpecAugment while training (``train_encoders`` turns it on): masks per window of up to
    #: ``(count, width)`` mel bands and frames. Never in eval mode, so never in an exported graph.
    spec_augment: tuple[tuple[int, int], tuple[int, int]] | None = None
    #: Vocal tract length perturbation while training: the range of warp factors (``LogMel.warped``).
    vtlp: tuple[float, float] | None = None

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Embed a batch of waveforms."""
        x = self.frontend.warped(audio, self.vtlp) if self.training and self.vtlp else self.frontend(audio)
        x = x - x.mean(dim=-1, keepdim=True)
        if self.cepstra:
            x = torch.matmul(self.lifter.to(x.dtype), x)
        x = standardize(x, (1, 2), 1e-4)
        if self.training and self.spec_augment is not None:
            bands, frames = self.spec_augment
            x = mask_axis(mask_axis(x, 1, *bands), 2, *frames)
        x = self.features(x.unsqueeze(1))
        if self.pooling == "mean+max":  # where a word part is strongest, beside how much of it there is
            return self.proj(torch.cat([x.mean(dim=3).flatten(1), x.amax(dim=3).flatten(1)], dim=1))
        return self.proj(x.mean(dim=3).flatten(1))


def cepstral_smoother(n_mels: int, keep: int) -> np.ndarray:
    """``[n_mels, n_mels]``: a log-mel frame through its first ``keep`` cepstral coefficients and back
    (an orthonormal DCT-II, truncated): the spectral envelope (formants) stays, the ripple of a
    voice's harmonics across neighbouring bands (its pitch) goes."""
    n = np.arange(n_mels)
    basis = np.cos(np.pi * np.outer(np.arange(n_mels), n + 0.5) / n_mels) * np.sqrt(2.0 / n_mels)
    basis[0] /= np.sqrt(2.0)
    return (basis[:keep].T @ basis[:keep]).astype(np.float32)


def mask_axis(x: torch.Tensor, axis: int, count: int, width: int) -> torch.Tensor:
    """SpecAugment (Park et al., 2019): zero ``count`` random spans of up to ``width`` steps along
    ``axis`` (1: mel bands, 2: frames) of each ``[B, bands, frames]`` log-mel, independently per row.
    On a normalised log-mel, zero is the window's mean: the masked span carries no information."""
    size = x.shape[axis]
    steps = torch.arange(size, device=x.device)
    keep = torch.ones(x.shape[0], size, dtype=torch.bool, device=x.device)
    for _ in range(count):
        widths = torch.randint(0, width + 1, (x.shape[0], 1), device=x.device)
        starts = (torch.rand(x.shape[0], 1, device=x.device) * (size - widths + 1)).long()
        keep &= ~((steps >= starts) & (steps < starts + widths))
    shape = (x.shape[0], size, 1) if axis == 1 else (x.shape[0], 1, size)
    return x * keep.view(shape).to(x.dtype)
