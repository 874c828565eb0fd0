"""Sample-rate conversion for audio chunks whose source rate differs from the model's."""

from __future__ import annotations

import numpy as np


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Linear-interpolation resampling of a mono chunk, keeping its duration.

    Each chunk is resampled on its own (chunks may arrive out of order), so a
    stateful polyphase filter would not help; for the log-mel features the
    encoder computes, linear interpolation is accurate enough.
    """
    if rate_in == rate_out or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    n_out = round(len(samples) * rate_out / rate_in)
    if rate_out < rate_in:
        # Average over the input span of each output sample first, so frequencies
        # above the new Nyquist fold in less.
        factor = rate_in / rate_out
        width = max(1, int(factor))
        kernel = np.full(width, 1.0 / width, dtype=np.float32)
        samples = np.convolve(samples, kernel, mode="same")
    positions = (np.arange(n_out, dtype=np.float64) + 0.5) * rate_in / rate_out - 0.5
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
