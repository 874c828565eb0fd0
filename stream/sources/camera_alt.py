"""The second renderer's camera: another sensor and lens than :class:`~fusionstream.stream.sources.render.Camera`.

The training renderer's camera jitters the scene by a sub-pixel rotation and shift, flickers its
brightness and adds signal-independent noise. This one models a cheaper camera held by hand:

- **hand shake and motion blur**: a shift of up to a pixel or so each frame, smeared along a
  per-segment direction over a few pixels (no rotation);
- **lens vignetting**: corners darker than the centre, the centre a little off the frame's;
- **sensor noise**: Gaussian read noise plus shot noise that grows with the brightness, and
  low-frequency chroma noise (colour blotches, the luma left alone);
- **processing**: white-balance gains per channel, a gamma, auto-exposure hunting a little from
  frame to frame, and a low-quality JPEG pass in the camera (often 4:2:0, sometimes 4:4:4)
  before the stream's own encoding.

:meth:`AltCamera.random` draws a segment's camera, :meth:`AltCamera.frame` one frame from the
still scene; both take the caller's ``numpy.random.Generator``: same state, same bytes.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

#: In-camera JPEG quality range (the stream then encodes at its own quality, 80 by default).
JPEG_QUALITY = (20, 60)


@dataclass(frozen=True, slots=True)
class AltCamera:
    """Per-segment camera behaviour; :meth:`frame` makes one frame of a still scene."""

    shake_px: float
    blur_px: float  # motion blur length; under 1 means none
    blur_angle_deg: float
    vignette: float  # darkening in the corners, 0-1
    vignette_centre: tuple[float, float]  # offset from the frame's centre, as a share of its size
    white_balance: tuple[float, float, float]
    gamma: float
    read_noise: float  # levels
    shot_noise: float  # variance per level of signal
    chroma_noise: float  # levels
    exposure_jitter: float
    jpeg_quality: int  # 0: no in-camera JPEG
    jpeg_subsampling: int  # Pillow's: 0 = 4:4:4, 2 = 4:2:0

    @classmethod
    def random(cls, rng: np.random.Generator) -> AltCamera:
        wb = rng.uniform(0.85, 1.15, 3)
        return cls(
            shake_px=float(rng.uniform(0.0, 1.2)),
            blur_px=float(rng.uniform(1.0, 4.0)) if rng.random() < 0.5 else 0.0,
            blur_angle_deg=float(rng.uniform(0.0, 180.0)),
            vignette=float(rng.uniform(0.0, 0.5)),
            vignette_centre=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
            white_balance=(float(wb[0]), float(wb[1]), float(wb[2])),
            gamma=float(rng.uniform(0.75, 1.35)),
            read_noise=float(rng.uniform(1.0, 5.0)),
            shot_noise=float(rng.uniform(0.0, 0.12)),
            chroma_noise=float(rng.uniform(0.0, 8.0)),
            exposure_jitter=float(rng.uniform(0.0, 0.06)),
            jpeg_quality=int(rng.integers(*JPEG_QUALITY)) if rng.random() < 0.7 else 0,
            jpeg_subsampling=2 if rng.random() < 0.75 else 0,
        )

    def frame(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``base`` (HxWx3 uint8 RGB) as this camera sees it this frame, HxWx3 uint8 RGB."""
        height, width = base.shape[:2]
        shift = np.clip(rng.normal(0.0, self.shake_px / 2 + 1e-6, 2), -self.shake_px, self.shake_px)
        length = self.blur_px * float(rng.uniform(0.7, 1.3))
        exposure = 1.0 + float(rng.uniform(-self.exposure_jitter, self.exposure_jitter))
        matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        moved = cv2.warpAffine(base, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        image = moved.astype(np.float32)
        if length >= 1.0:
            image = cv2.filter2D(image, -1, _motion_kernel(round(length * 4) / 4, round(self.blur_angle_deg)),
                                 borderType=cv2.BORDER_REPLICATE)
        gain = _vignette(height, width, self.vignette, self.vignette_centre) * np.float32(exposure)
        image *= gain[..., None]
        # Read noise plus shot noise (its variance proportional to the signal), per channel.
        sigma = np.sqrt(np.float32(self.read_noise**2) + np.float32(self.shot_noise) * image)
        image += rng.standard_normal(image.shape, dtype=np.float32) * sigma
        if self.chroma_noise > 0.0:  # colour blotches a quarter of the frame's resolution, zero mean over channels
            low = rng.standard_normal((max(1, height // 4), max(1, width // 4), 3), dtype=np.float32)
            low -= low.mean(axis=2, keepdims=True)
            image += cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR) * np.float32(self.chroma_noise)
        raw = np.clip(image + 0.5, 0, 255).astype(np.uint8)  # the sensor's 8-bit values
        out = cv2.LUT(raw, _tone_curve(self.white_balance, self.gamma))
        return _jpeg(out, self.jpeg_quality, self.jpeg_subsampling) if self.jpeg_quality else out


@functools.lru_cache(maxsize=256)
def _motion_kernel(length: float, angle_deg: int) -> np.ndarray:
    """A normalised line of ``length`` pixels at ``angle_deg``, anti-aliased (float32, odd size)."""
    size = 2 * int(np.ceil(length / 2)) + 1
    kernel = np.zeros((size * 4, size * 4), np.float32)  # drawn 4x larger, then averaged down
    centre = size * 2 - 0.5
    dx, dy = np.cos(np.deg2rad(angle_deg)) * length * 2, np.sin(np.deg2rad(angle_deg)) * length * 2
    cv2.line(kernel, (round(centre - dx), round(centre - dy)), (round(centre + dx), round(centre + dy)), 1.0, 2)
    kernel = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / max(float(kernel.sum()), 1e-6)


@functools.lru_cache(maxsize=64)
def _tone_curve(white_balance: tuple[float, float, float], gamma: float) -> np.ndarray:
    """The camera's processing as a lookup table (1x256x3 uint8): white-balance gains, then the gamma."""
    levels = np.arange(256, dtype=np.float64)[:, None] * np.asarray(white_balance)[None, :] / 255.0
    return np.round(255.0 * np.clip(levels, 0.0, 1.0) ** gamma).astype(np.uint8)[None]


@functools.lru_cache(maxsize=64)
def _vignette(height: int, width: int, strength: float, centre: tuple[float, float]) -> np.ndarray:
    """Gain per pixel, 1 at the (offset) centre, falling as cos^4 of the field angle to ``1 - strength``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = xs / max(width - 1, 1) - 0.5 - centre[0]
    dy = ys / max(height - 1, 1) - 0.5 - centre[1]
    r2 = (dx * dx + dy * dy) / np.float32(0.5)  # 1 at a corner of a centred vignette
    falloff = 1.0 / (1.0 + r2) ** 2  # cos^4 of a field angle whose tangent is r
    falloff = (falloff - 0.25) / 0.75  # 0 at r = 1
    return (1.0 - np.float32(strength) * (1.0 - falloff)).astype(np.float32)


def _jpeg(image: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    """``image`` through Pillow's JPEG encoder and back: the camera's own compression."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), np.uint8)


__all__ = ["JPEG_QUALITY", "AltCamera"]
