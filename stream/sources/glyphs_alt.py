"""Digit glyphs drawn by Pillow's font engine, for the second renderer (:mod:`.render_alt`).

The training renderer draws OpenCV's Hershey stroke fonts; these glyphs come from the two
typefaces that ship inside Pillow itself, so they need no system font on any machine:

- **Aileron** (``ImageFont.load_default(size=N)``, Pillow >= 10.1): an outline TrueType sans
  rasterised by FreeType, anti-aliased, made bold with FreeType's stroker;
- Pillow's **bitmap** font (``ImageFont.load_default_imagefont()``): 5x7-pixel digits scaled up
  with nearest-neighbour, so they keep their square pixels (a dot-matrix or LCD look).

On top of the typeface, per segment: the style (solid, bold, two-colour outlined, hollow), a
width stretch, a synthetic italic shear, a rotation, the size and the place. The result is the
glyph's coverage, one float32 mask per ink colour, placed in the frame.

Every function takes the caller's ``numpy.random.Generator``, and draws the same number of values
whatever the digit: same generator state, same glyph geometry for any digit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fusionstream.stream.sources.render import Size

Style = Literal["solid", "outlined", "hollow"]

#: The typefaces and how often each is drawn.
TYPEFACES: tuple[tuple[str, float], ...] = (("aileron", 0.7), ("bitmap", 0.3))
#: Glyph ink height as a share of the frame's shorter side (OpenCV's renderer: 0.35-0.72 of the text box).
HEIGHT_SHARE = (0.4, 0.78)
#: Rotation, degrees, either way.
MAX_ANGLE_DEG = 25.0


@dataclass(frozen=True, slots=True)
class Glyph:
    """A placed digit: ``fill`` is the coverage of its main colour, ``edge`` of its outline colour
    (``None`` for a single-colour style); both HxW float32 in [0, 1]."""

    fill: np.ndarray
    edge: np.ndarray | None
    style: Style

    @property
    def ink(self) -> np.ndarray:
        """Everything the digit covers, whatever the colour."""
        return self.fill if self.edge is None else np.maximum(self.fill, self.edge)


@functools.lru_cache(maxsize=64)
def aileron(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's own TrueType font (Aileron Regular) at ``size`` pixels per em."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # a Pillow built without FreeType
        raise RuntimeError("the pillow renderer needs Pillow built with FreeType (ImageFont.load_default(size=N))")
    return font


@functools.lru_cache(maxsize=1)
def _bitmap() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


def digit_glyph(digit: int, size: Size, rng: np.random.Generator) -> Glyph:
    """The digit in a random Pillow typeface, style, stretch, shear, rotation, size and place."""
    width, height = size
    short = min(width, height)
    u_face, u_style, u_bold = rng.random(3)
    target_h = rng.uniform(*HEIGHT_SHARE) * short
    stretch = float(rng.uniform(0.75, 1.3))
    shear = float(rng.uniform(-0.35, 0.35)) if rng.random() < 0.35 else 0.0
    angle = float(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG))
    u_x, u_y = rng.random(2)

    style: Style = "solid" if u_style < 0.6 else "outlined" if u_style < 0.85 else "hollow"
    if u_face < TYPEFACES[0][1]:
        fill, edge = _aileron_masks(str(digit), target_h, style, u_bold)
    else:
        fill, edge = _bitmap_masks(str(digit), target_h, style, u_bold)
    ink = fill if edge is None else np.maximum(fill, edge)
    matrix = _placement(ink, size, stretch, shear, angle, u_x, u_y)
    placed_fill = _warp(fill, matrix, size)
    placed_edge = None if edge is None else _warp(edge, matrix, size)
    if style == "hollow":  # only the outline is drawn: the inside shows the background
        assert placed_edge is not None
        placed_fill, placed_edge = np.clip(placed_edge - placed_fill, 0.0, 1.0), None
    return Glyph(placed_fill, placed_edge, style)


def _aileron_masks(text: str, target_h: float, style: Style, u_bold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The glyph's fill (and outline) coverage, cropped to the ink: TrueType Aileron through FreeType."""
    size = max(8, round(target_h / 0.72))  # Aileron's digits are about 0.72 of the em tall
    font = aileron(size)
    # Bold through FreeType's stroker; an outline is a wider stroke drawn under the fill.
    bold = int(u_bold * max(1, size // 14) + 0.5) if style == "solid" else 0
    edge_w = max(1, round(size / 18 + u_bold * size / 18)) if style != "solid" else 0
    pad = 4 + bold + edge_w
    box = font.getbbox(text, stroke_width=bold + edge_w)
    canvas = (box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad)
    origin = (pad - box[0], pad - box[1])

    def draw(stroke: int) -> np.ndarray:
        image = Image.new("L", canvas, 0)
        ImageDraw.Draw(image).text(origin, text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        return np.asarray(image, np.float32) / 255.0

    fill = draw(bold)
    if style == "solid":
        return _crop(fill, None)
    return _crop(fill, draw(edge_w))


def _bitmap_masks(text: str, target_h: float, style: Style, u_bold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The glyph's coverage from Pillow's bitmap font: 5x7 pixels scaled up without smoothing."""
    small = Image.new("L", (12, 14), 0)
    ImageDraw.Draw(small).text((1, 1), text, font=_bitmap(), fill=255)
    box = small.getbbox()
    assert box is not None, f"Pillow's bitmap font has no ink for {text!r}"
    small = small.crop(box)
    scale = max(1.0, target_h / small.height)
    big = small.resize((max(1, round(small.width * scale)), max(1, round(small.height * scale))),
                       Image.Resampling.NEAREST)
    pad = 2 + round(scale)
    framed = Image.new("L", (big.width + 2 * pad, big.height + 2 * pad), 0)
    framed.paste(big, (pad, pad))
    if style == "solid" and u_bold >= 0.5:  # dots that bleed into each other
        framed = framed.filter(ImageFilter.MaxFilter(3))
    fill = np.asarray(framed, np.float32) / 255.0
    if style == "solid":
        return _crop(fill, None)
    grow = 2 * max(1, round(0.4 * scale)) + 1  # an outline about half a dot wide
    edge = np.asarray(framed.filter(ImageFilter.MaxFilter(grow)), np.float32) / 255.0
    return _crop(fill, edge)


def _crop(fill: np.ndarray, edge: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    ink = fill if edge is None else edge
    ys, xs = np.nonzero(ink > 0.0)
    rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    return np.pad(fill[rows, cols], 1), None if edge is None else np.pad(edge[rows, cols], 1)


def _placement(ink: np.ndarray, size: Size, stretch: float, shear: float, angle: float, u_x: float,
               u_y: float) -> np.ndarray:
    """The 2x3 matrix from glyph pixels to frame pixels: stretch, shear, rotate, shrink to fit, place."""
    width, height = size
    gh, gw = ink.shape
    rad = np.deg2rad(angle)
    rotate = np.array([[np.cos(rad), np.sin(rad)], [-np.sin(rad), np.cos(rad)]])
    linear = rotate @ np.array([[1.0, -shear], [0.0, 1.0]]) @ np.diag([stretch, 1.0])
    corners = np.array([[0, 0], [gw, 0], [0, gh], [gw, gh]], np.float64) - (gw / 2.0, gh / 2.0)
    spread = corners @ linear.T
    half_w, half_h = np.abs(spread).max(axis=0)
    zoom = min(1.0, 0.95 * width / (2 * half_w), 0.95 * height / (2 * half_h))
    linear *= zoom
    half_w, half_h = half_w * zoom, half_h * zoom
    cx = half_w + u_x * (width - 2 * half_w)
    cy = half_h + u_y * (height - 2 * half_h)
    offset = np.array([cx, cy]) - linear @ np.array([gw / 2.0, gh / 2.0])
    return np.hstack([linear, offset[:, None]])


def _warp(mask: np.ndarray, matrix: np.ndarray, size: Size) -> np.ndarray:
    """``mask`` moved into the frame by ``matrix`` (Pillow's affine transform takes the inverse)."""
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    image = Image.fromarray(np.round(mask * 255.0).astype(np.uint8), "L")
    placed = image.transform(size, Image.Transform.AFFINE, tuple(inverse.ravel()), Image.Resampling.BICUBIC)
    return np.asarray(placed, np.float32) / 255.0


__all__ = ["HEIGHT_SHARE", "MAX_ANGLE_DEG", "TYPEFACES", "Glyph", "Style", "aileron", "digit_glyph"]
