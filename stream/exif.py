"""A JPEG's EXIF orientation: how the camera held the frame, applied to its pixels as viewers apply it.

A phone or a rotated camera stores the sensor's pixels as they are and says in its EXIF data (tag 0x0112
of the first image directory) how to turn them upright; a browser, an image viewer and OpenCV's
``imread`` all turn them. The intake reads the tag while it walks the header segments (once per header
block a camera repeats) and the decoded pixels are turned the same way, whichever decoder made them.
A damaged EXIF block is ignored (orientation 1): it says nothing about whether the image decodes.
"""

from __future__ import annotations

import numpy as np

EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112
_SHORT = 3
#: Orientations whose upright image is the stored one transposed (its height and width swapped).
_TRANSPOSED = frozenset({5, 6, 7, 8})


def exif_orientation(app1_body: bytes) -> int:
    """The orientation (1-8) an APP1 segment's EXIF data gives, 1 when it gives none or cannot be read."""
    if not app1_body.startswith(EXIF_PREFIX):
        return 1
    tiff = app1_body[len(EXIF_PREFIX):]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for entry in range(min(int.from_bytes(tiff[ifd : ifd + 2], order), 512)):
        at = ifd + 2 + 12 * entry
        if at + 12 > len(tiff):
            return 1
        if int.from_bytes(tiff[at : at + 2], order) == _ORIENTATION_TAG:
            if int.from_bytes(tiff[at + 2 : at + 4], order) != _SHORT:
                return 1
            value = int.from_bytes(tiff[at + 8 : at + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def oriented_shape(height: int, width: int, orientation: int) -> tuple[int, int]:
    """The upright image's ``(height, width)``."""
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (H x W x C) turned upright, as OpenCV's ``imread`` turns them (its ``ApplyExifOrientation``)."""
    if orientation <= 1 or orientation > 8:
        return pixels
    if orientation in _TRANSPOSED:
        pixels = pixels.swapaxes(0, 1)
    flip = {2: (slice(None), slice(None, None, -1)), 3: (slice(None, None, -1), slice(None, None, -1)),
            4: (slice(None, None, -1),), 6: (slice(None), slice(None, None, -1)),
            7: (slice(None, None, -1), slice(None, None, -1)), 8: (slice(None, None, -1),)}.get(orientation)
    if flip is not None:
        pixels = pixels[flip]
    return np.ascontiguousarray(pixels)
