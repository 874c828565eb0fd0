"""Digit frames drawn with OpenCV: one look per segment, a little camera jitter per frame.

Drawing a styled digit (background texture, clutter, an anti-aliased rotated glyph) costs
more than a frame budget allows, and a real camera watching a still scene changes only
by small motion and sensor noise. So :func:`segment_base` draws the segment's scene once
and :class:`Camera` derives each frame from it with a sub-pixel affine jitter, a
brightness flicker and Gaussian sensor noise (a few hundred microseconds at 96x96).

Every function takes the caller's ``numpy.random.Generator``: same generator state,
same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from fusionstream.stream.sources.glyph_styles import GlyphStyle, composite
from fusionstream.stream.sources.typefaces import draw as draw_typeface

Size = tuple[int, int]
"""``(width, height)`` in pixels, as OpenCV orders it."""

BBox = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)``, x1/y1 exclusive."""

SceneKind = Literal["clean", "blank", "occlude"]

#: Every Hershey font OpenCV has; italics are added at random on top.
FONTS: tuple[int, ...] = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
)

# Rec. 601 luma weights: contrast between digit and background is judged on brightness,
# because a red 3 on an equally bright green field is unreadable after JPEG's chroma subsampling.
_LUMA = np.array([0.299, 0.587, 0.114])
MIN_CONTRAST = 80.0  # luma levels between the digit colour and the background colour
_TRIANGULAR_STD = 255.0 / np.sqrt(6.0)


@dataclass(frozen=True, slots=True)
class Scene:
    """A segment's still scene; ``bbox`` is where the digit's ink is (None when no digit is visible)."""

    image: np.ndarray
    bbox: BBox | None


def segment_base(digit: int, kind: SceneKind, size: Size, rng: np.random.Generator, *,
                 typeface: str | None = None, style: GlyphStyle | None = None) -> Scene:
    """The still scene of one segment: the digit (``clean``), no digit (``blank``) or the digit under a box.

    ``typeface`` (one of :data:`.typefaces.TYPEFACES`) draws the digit in that TrueType typeface instead
    of a Hershey font, ``style`` outlines, hollows, shadows or blocks its ink (training augmentations);
    every other draw is the same.
    """
    def draw_digit(d: int, s: Size, r: np.random.Generator) -> Scene:
        return render_digit(d, s, r, typeface=typeface, style=style)

    return compose_scene(digit, kind, size, rng, draw_digit=draw_digit, draw_blank=render_blank, cover=occlude)


def compose_scene(
    digit: int,
    kind: SceneKind,
    size: Size,
    rng: np.random.Generator,
    *,
    draw_digit: Callable[[int, Size, np.random.Generator], Scene],
    draw_blank: Callable[[Size, np.random.Generator], np.ndarray],
    cover: Callable[[np.ndarray, BBox, np.random.Generator], np.ndarray],
) -> Scene:
    """A scene kind from a renderer's three drawing functions (every renderer means the same by
    ``blank`` and ``occlude``: an occluded digit is drawn, then covered where its ink is)."""
    if kind == "blank":
        return Scene(draw_blank(size, rng), None)
    scene = draw_digit(digit, size, rng)
    if kind == "occlude":
        return Scene(cover(scene.image, scene.bbox or (0, 0, size[0], size[1]), rng), None)
    return scene


def render_digit(digit: int, size: Size, rng: np.random.Generator, *, typeface: str | None = None,
                 style: GlyphStyle | None = None) -> Scene:
    """A digit in a random Hershey font (or ``typeface``), scale, thickness, rotation, position and
    colour, over clutter; solid, or drawn in ``style``."""
    width, height = size
    bg_colour, fg_colour = _colours(rng)
    image = _background(size, bg_colour, rng)
    _clutter(image, bg_colour, rng, count=int(rng.integers(0, 6)))

    alpha = _digit_mask(digit, size, rng, typeface)
    if style is None:
        image = composite(image, alpha, fg_colour)
    else:
        image, alpha = style.apply(image, alpha, fg_colour)
    ys, xs = np.nonzero(alpha > 0.25)
    bbox: BBox = (
        (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size else (0, 0, width, height)
    )

    # An occasional thin line over the digit: real scenes are not all clean foreground.
    if rng.random() < 0.3:
        _clutter(image, bg_colour, rng, count=1, shapes=("line",), max_thickness=1)
    return Scene(image, bbox)


def render_blank(size: Size, rng: np.random.Generator) -> np.ndarray:
    """A frame with nothing to read: a covered lens, an empty scene, or static."""
    width, height = size
    kind = rng.choice(3, p=(0.3, 0.45, 0.25))
    if kind == 0:  # lens cap / dark or flat picture
        colour = rng.integers(0, 256, 3) if rng.random() < 0.5 else rng.integers(0, 40, 3)
        return np.broadcast_to(colour.astype(np.uint8), (height, width, 3)).copy()
    if kind == 1:  # the scene without its digit
        bg_colour, _ = _colours(rng)
        image = _background(size, bg_colour, rng)
        _clutter(image, bg_colour, rng, count=int(rng.integers(0, 6)))
        return image
    # Static: coarse or fine noise, grey or coloured.
    cells = int(rng.integers(4, max(5, min(width, height) // 2)))
    channels = 3 if rng.random() < 0.5 else 1
    noise = rng.integers(0, 256, (cells, cells, channels), dtype=np.uint8)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(np.broadcast_to(noise.reshape(height, width, -1), (height, width, 3)))


def occlude(image: np.ndarray, bbox: BBox, rng: np.random.Generator) -> np.ndarray:
    """The image with a box (flat or textured) hiding all of ``bbox`` plus a random margin."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = bbox
    # Margins past the ink: the per-frame jitter moves the scene by a pixel or two, and a box
    # that hugs the glyph would leave its outline readable.
    mx = 2 + int(rng.uniform(0.1, 0.5) * (x1 - x0))
    my = 2 + int(rng.uniform(0.1, 0.5) * (y1 - y0))
    left, right = int(rng.integers(2, mx + 1)), int(rng.integers(2, mx + 1))
    top, bottom = int(rng.integers(2, my + 1)), int(rng.integers(2, my + 1))
    bx0, by0 = max(0, x0 - left), max(0, y0 - top)
    bx1, by1 = min(width, x1 + right), min(height, y1 + bottom)
    out = image.copy()
    colour = rng.integers(0, 256, 3).astype(np.float32)
    patch = np.broadcast_to(colour, (by1 - by0, bx1 - bx0, 3))
    if rng.random() < 0.4:  # a textured object rather than a flat card
        patch = patch + rng.normal(0.0, 25.0, (by1 - by0, bx1 - bx0, 1)).astype(np.float32)
    out[by0:by1, bx0:bx1] = np.clip(patch, 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True, slots=True)
class Camera:
    """Per-segment camera behaviour; :meth:`frame` makes one frame of a still scene."""

    max_shift_px: float
    max_angle_deg: float
    noise_sigma: float
    flicker: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Camera:
        return cls(
            max_shift_px=float(rng.uniform(0.0, 1.5)),
            max_angle_deg=float(rng.uniform(0.0, 1.5)),
            noise_sigma=float(rng.uniform(1.0, 6.0)),
            flicker=float(rng.uniform(0.0, 0.05)),
        )

    def frame(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``base`` moved by a small random rigid motion, with flicker and sensor noise (HxWx3 uint8)."""
        height, width = base.shape[:2]
        shift = rng.uniform(-self.max_shift_px, self.max_shift_px, 2)
        angle = rng.uniform(-self.max_angle_deg, self.max_angle_deg)
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
        matrix[:, 2] += shift
        moved = cv2.warpAffine(base, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        gain = 1.0 + rng.uniform(-self.flicker, self.flicker)
        # Sensor noise as the sum of two uniform bytes (triangular, std 255/sqrt(6)): close enough
        # to Gaussian for a camera, and a third of the cost of standard_normal, the frame's largest.
        raw = np.frombuffer(rng.bytes(2 * moved.size), np.uint8).reshape(2, *moved.shape)
        noise = raw[0].astype(np.float32)
        noise += raw[1]
        noise -= 255.0
        noise *= np.float32(self.noise_sigma / _TRIANGULAR_STD)
        noise += moved.astype(np.float32) * np.float32(gain)
        return np.clip(noise, 0.0, 255.0).astype(np.uint8)


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background colour and a digit colour that differ enough in brightness to be read."""
    bg = rng.integers(0, 256, 3)
    for _ in range(32):
        fg = rng.integers(0, 256, 3)
        if abs(float(_LUMA @ (fg - bg))) >= MIN_CONTRAST:
            break
    else:  # rare: a mid-grey background; fall back to black or white, whichever is further
        fg = np.zeros(3, np.int64) if float(_LUMA @ bg) > 127 else np.full(3, 255, np.int64)
    return _rgb(bg), _rgb(fg)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


def _background(size: Size, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Plain, gradient or low-frequency textured background around ``colour``."""
    width, height = size
    base = np.asarray(colour, np.float32)
    kind = rng.integers(3)
    if kind == 0:
        image = np.broadcast_to(base, (height, width, 3))
    elif kind == 1:
        other = base + rng.uniform(-50.0, 50.0, 3).astype(np.float32)
        direction = rng.uniform(0.0, 2.0 * np.pi)
        xs, ys = np.meshgrid(np.linspace(-0.5, 0.5, width), np.linspace(-0.5, 0.5, height))
        ramp = (np.cos(direction) * xs + np.sin(direction) * ys + 0.5).astype(np.float32)[..., None]
        image = base * (1.0 - ramp) + other * ramp
    else:
        cells = int(rng.integers(3, 9))
        blobs = rng.normal(0.0, 22.0, (cells, cells, 3)).astype(np.float32)
        image = base + cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image, 0, 255).astype(np.uint8)


def _clutter(
    image: np.ndarray,
    bg_colour: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    count: int,
    shapes: tuple[str, ...] = ("line", "circle", "rectangle"),
    max_thickness: int = 2,
) -> None:
    """Draw ``count`` random lines/circles/rectangles in place, mostly in colours near the background's."""
    height, width = image.shape[:2]
    for _ in range(count):
        if rng.random() < 0.7:  # distractors are usually fainter than the digit
            colour = np.clip(np.asarray(bg_colour) + rng.integers(-70, 71, 3), 0, 255)
        else:
            colour = rng.integers(0, 256, 3)
        col = _rgb(colour)
        thickness = int(rng.integers(1, max_thickness + 1))
        shape = shapes[int(rng.integers(len(shapes)))]
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if shape == "line":
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, p1, p2, col, thickness, cv2.LINE_AA)
        elif shape == "circle":
            radius = int(rng.integers(2, max(3, min(width, height) // 4)))
            cv2.circle(image, p1, radius, col, thickness if rng.random() < 0.7 else -1, cv2.LINE_AA)
        else:
            p2 = (
                p1[0] + int(rng.integers(-width // 3, width // 3)),
                p1[1] + int(rng.integers(-height // 3, height // 3)),
            )
            cv2.rectangle(image, p1, p2, col, thickness, cv2.LINE_AA)


def _hershey(glyph: np.ndarray, digit: int, short: int, rng: np.random.Generator) -> None:
    """Draw the digit in a random Hershey font, centred on the canvas ``glyph``."""
    canvas_h, canvas_w = glyph.shape
    font = FONTS[int(rng.integers(len(FONTS)))] | (cv2.FONT_ITALIC if rng.random() < 0.2 else 0)
    text = str(digit)
    _, unit_h = cv2.getTextSize(text, font, 1.0, 1)[0]
    scale = rng.uniform(0.35, 0.72) * short / unit_h
    thickness = int(rng.integers(1, max(2, round(scale * 2.0)) + 1))
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    org = (round(canvas_w / 2 - text_w / 2), round(canvas_h / 2 + text_h / 2))
    cv2.putText(glyph, text, org, font, scale, 255, thickness, cv2.LINE_AA)


def _digit_mask(digit: int, size: Size, rng: np.random.Generator, typeface: str | None = None) -> np.ndarray:
    """Float32 HxW coverage in [0, 1] of the digit glyph: random font, scale, thickness, rotation, place."""
    width, height = size
    short = min(width, height)
    # Draw on a canvas twice the frame size so no glyph is clipped before it is measured.
    canvas_w, canvas_h = 2 * width, 2 * height
    glyph = np.zeros((canvas_h, canvas_w), np.uint8)
    if typeface is None:
        _hershey(glyph, digit, short, rng)
    else:
        # The same ink heights as the Hershey glyphs; a heavier weight now and then, as Hershey's thickness.
        embolden = int(rng.integers(1, max(2, round(short / 24)) + 1)) if rng.random() < 0.35 else 0
        draw_typeface(glyph, typeface, digit, rng.uniform(0.35, 0.72) * short, (canvas_w / 2, canvas_h / 2),
                       embolden)
    gx, gy, gw, gh = cv2.boundingRect(glyph)

    angle = float(rng.uniform(-25.0, 25.0))
    rad = np.deg2rad(angle)
    cos, sin = abs(np.cos(rad)), abs(np.sin(rad))
    half_w = 0.5 * (gw * cos + gh * sin)
    half_h = 0.5 * (gw * sin + gh * cos)
    # Shrink a glyph that would not fit once rotated (wide italic or script fonts at large scales).
    zoom = min(1.0, 0.95 * width / (2 * half_w), 0.95 * height / (2 * half_h))
    half_w, half_h = half_w * zoom, half_h * zoom
    cx = rng.uniform(half_w, width - half_w) if width > 2 * half_w + 1 else width / 2
    cy = rng.uniform(half_h, height - half_h) if height > 2 * half_h + 1 else height / 2

    matrix = cv2.getRotationMatrix2D((gx + gw / 2.0, gy + gh / 2.0), angle, zoom)
    matrix[0, 2] += cx - (gx + gw / 2.0)
    matrix[1, 2] += cy - (gy + gh / 2.0)
    placed = cv2.warpAffine(glyph, matrix, (width, height), flags=cv2.INTER_LINEAR)
    return placed.astype(np.float32) * np.float32(1.0 / 255.0)


__all__ = [
    "FONTS",
    "MIN_CONTRAST",
    "BBox",
    "Camera",
    "Scene",
    "SceneKind",
    "Size",
    "compose_scene",
    "occlude",
    "render_blank",
    "render_digit",
    "segment_base",
]
