"""How a digit's ink is drawn: outlined, hollow, shadowed or blocky (a training augmentation).

The training renderer (:mod:`.render`) fills every digit with one flat colour. Text on real
screens is often drawn otherwise: captions and scoreboards outline their figures in a second
colour or drop a shadow behind them, titles use hollow (stroke-only) figures, clocks and LED
or pixel displays show blocky ones. A :class:`GlyphStyle` turns the digit's coverage mask into
such a drawing with OpenCV's morphology and resizing, in whichever typeface the digit came in; the
second held-out renderer's typefaces and drawing engine stay unseen. ``Augmentation.glyph_style``
is off in the shipped recipe: it helped the small ablation, not the full recipe
(docs/training.md, "Glyph styles and a strided first block").

A style's parameters are drawn up front from a generator of its own
(:meth:`GlyphStyle.random`), so a segment drawn with a style makes every other draw of its
scene exactly as it would without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

StyleKind = Literal["outlined", "hollow", "shadow", "blocky"]
STYLE_KINDS: tuple[StyleKind, ...] = ("outlined", "hollow", "shadow", "blocky")
#: Ring width of an outline, as a share of the digit's ink height.
RING = (0.05, 0.12)
#: Shadow offset, as a share of the ink height, each axis.
SHADOW = (0.04, 0.1)
#: Rows of "pixels" a blocky digit is drawn with (a 5×7 font has 7; fewer leave a rotated digit unreadable).
BLOCK_ROWS = (7, 12)

Colour = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class GlyphStyle:
    """One way of drawing a digit's ink; :meth:`random` draws one."""

    kind: StyleKind
    #: Outline width or shadow offset as a share of the ink height; blocky: rows of blocks.
    size: float
    #: The shadow's direction (unit x, y) and, for ``shadow``, how soft its edge is (0 sharp, 1 soft).
    direction: tuple[float, float] = (1.0, 1.0)
    softness: float = 0.0
    #: A second colour's brightness offset from the digit's, used for an outline or a shadow.
    contrast: float = 1.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> GlyphStyle:
        kind = STYLE_KINDS[int(rng.integers(len(STYLE_KINDS)))]
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = (float(np.cos(angle)), float(np.sin(angle)))
        if kind == "blocky":
            size = float(rng.integers(BLOCK_ROWS[0], BLOCK_ROWS[1] + 1))
        elif kind == "shadow":
            size = float(rng.uniform(*SHADOW))
        else:
            size = float(rng.uniform(*RING))
        return cls(kind, size, direction, float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.5, 1.0)))

    def apply(self, image: np.ndarray, alpha: np.ndarray, fg: Colour) -> tuple[np.ndarray, np.ndarray]:
        """``image`` (HxWx3 uint8, the background) with the digit of coverage ``alpha`` (HxW float32
        in [0, 1]) drawn in this style and colour ``fg``; also the coverage of everything drawn."""
        ink_h = _ink_height(alpha)
        if ink_h == 0:
            return composite(image, alpha, fg), alpha
        second = _second_colour(fg, self.contrast)
        if self.kind == "blocky":
            blocks = _blocky(alpha, int(self.size))
            return composite(image, blocks, fg), blocks
        if self.kind == "shadow":
            shift = max(1.0, self.size * ink_h)
            matrix = np.float32([[1, 0, self.direction[0] * shift], [0, 1, self.direction[1] * shift]])
            shadow = cv2.warpAffine(alpha, matrix, alpha.shape[::-1], flags=cv2.INTER_LINEAR)
            if self.softness > 0.5:
                shadow = cv2.GaussianBlur(shadow, (0, 0), 0.3 * shift)
            drawn = composite(composite(image, shadow, second), alpha, fg)
            return drawn, np.maximum(alpha, shadow)
        width = max(1, round(self.size * ink_h))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
        outer = cv2.dilate(alpha, kernel)
        if self.kind == "outlined":
            return composite(composite(image, outer, second), alpha, fg), outer
        # hollow: only the ring around the ink; where the ink was shows the background
        ring = np.clip(outer - alpha, 0.0, 1.0)
        return composite(image, ring, fg), outer


def _ink_height(alpha: np.ndarray) -> int:
    rows = np.flatnonzero((alpha > 0.25).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def composite(image: np.ndarray, alpha: np.ndarray, colour: Colour) -> np.ndarray:
    """``colour`` laid over ``image`` (HxWx3 uint8) with coverage ``alpha`` (HxW float32 in [0, 1])."""
    a = alpha[..., None]
    return (image.astype(np.float32) * (1.0 - a) + np.asarray(colour, np.float32) * a).astype(np.uint8)


def _second_colour(fg: Colour, contrast: float) -> Colour:
    """A colour far from ``fg`` in brightness (dark under a bright digit, bright under a dark one)."""
    luma = 0.299 * fg[0] + 0.587 * fg[1] + 0.114 * fg[2]
    target = (1.0 - contrast) * 255.0 if luma > 127 else contrast * 255.0
    return (round(target), round(target), round(target))


def _blocky(alpha: np.ndarray, rows: int) -> np.ndarray:
    """The digit redrawn from a grid of ``rows`` rows of square blocks (a pixel or LED font)."""
    ys, xs = np.nonzero(alpha > 0.25)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = alpha[y0:y1, x0:x1]
    block = max(1.0, (y1 - y0) / rows)
    cols = max(1, round((x1 - x0) / block))
    grid = cv2.resize(crop, (cols, rows), interpolation=cv2.INTER_AREA) > 0.2
    out = np.zeros_like(alpha)
    out[y0:y1, x0:x1] = cv2.resize(grid.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return out


__all__ = ["STYLE_KINDS", "GlyphStyle", "StyleKind", "composite"]
