"""Digit scenes drawn with Pillow: the second renderer, for a held-out set the training renderer never drew.

:mod:`.render` (OpenCV) draws every training and default evaluation frame: Hershey stroke fonts
over flat, linear-gradient or blotchy backgrounds with line/circle/rectangle clutter. This module
draws the same scene kinds, from the same ``(digit, kind, size, rng)``, with nothing of that look:

- the digit in a typeface that ships inside Pillow, rasterised by Pillow's font engine
  (:mod:`.glyphs_alt`: TrueType Aileron through FreeType, or the bitmap font scaled up), solid,
  bold, outlined in a second colour or hollow, sometimes with a drop shadow;
- backgrounds of other kinds: radial and four-corner gradients, stripes, checkers, blurred blobs;
- other clutter: polygons, arcs, dot clusters and faint letters (never a digit), and now and then
  a glare streak across the digit;
- blank scenes: the scene without its digit, colour bars, a washed-out or a dark frame;
- occluders: rounded cards, ellipses or soft-edged blobs, flat or textured.

:class:`~fusionstream.stream.sources.camera_alt.AltCamera` then makes each frame with its own
camera noise. :func:`segment_base` returns the same :class:`~fusionstream.stream.sources.render.Scene`
as the OpenCV renderer's (``bbox`` where the digit's ink is, ``None`` when none is visible).

Every function takes the caller's ``numpy.random.Generator``: same generator state, same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fusionstream.stream.sources.glyphs_alt import aileron, digit_glyph
from fusionstream.stream.sources.render import BBox, Scene, SceneKind, Size, compose_scene

# Rec. 601 luma: digit and background are told apart by brightness (JPEG subsamples the colour).
_LUMA = np.array([0.299, 0.587, 0.114])
#: Luma levels between the digit's colour and the background's base colour; the textures move the
#: background by at most about 40 levels around its base, so at least 50 remain.
MIN_CONTRAST = 90.0
#: Distractor letters: none reads as a digit (no O, I, l, S, Z, B, G, g, q).
LETTERS = "AHKMNRVWXY#@&+*"
#: The colour bars of a "no signal" card (white, yellow, cyan, green, magenta, red, blue, black).
BARS = np.array([[235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16], [235, 16, 235], [235, 16, 16],
                 [16, 16, 235], [16, 16, 16]], np.float32)


def segment_base(digit: int, kind: SceneKind, size: Size, rng: np.random.Generator) -> Scene:
    """The still scene of one segment: the digit (``clean``), no digit (``blank``) or the digit hidden."""
    return compose_scene(digit, kind, size, rng, draw_digit=render_digit, draw_blank=render_blank, cover=occlude)


def render_digit(digit: int, size: Size, rng: np.random.Generator) -> Scene:
    """The digit in a Pillow typeface over one of this renderer's backgrounds and clutter."""
    bg, fg = _colours(rng)
    image = _scene(size, bg, rng)
    glyph = digit_glyph(digit, size, rng)
    u_shadow, u_glare = rng.random(2)
    ink = glyph.ink
    if u_shadow < 0.25:  # a drop shadow, down and to one side, darker than the background
        dx, dy = int(rng.integers(-3, 4)), int(rng.integers(1, 4))
        shadow = _blur(np.roll(ink, (dy, dx), axis=(0, 1)), float(rng.uniform(0.4, 1.5)))
        image = _paint(image, shadow, bg * np.float32(0.3))
        ink = np.maximum(ink, shadow)
    if glyph.edge is not None:
        image = _paint(image, glyph.edge, fg)
        image = _paint(image, glyph.fill, _inner_colour(fg, rng))
    else:
        image = _paint(image, glyph.fill, fg)
    if u_glare < 0.2:  # light reflected off the surface, across the digit
        image = _glare(image, rng)
    ys, xs = np.nonzero(ink > 0.25)
    width, height = size
    bbox: BBox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size else (
        0, 0, width, height)
    return Scene(_to_uint8(image), bbox)


def render_blank(size: Size, rng: np.random.Generator) -> np.ndarray:
    """A frame with nothing to read: the scene without a digit, colour bars, washed out, or dark."""
    width, height = size
    u = rng.random()
    if u < 0.45:  # the scene without its digit
        bg, _ = _colours(rng)
        return _to_uint8(_scene(size, bg, rng))
    if u < 0.6:  # "no signal": colour bars, in a random order, at a random brightness
        order = rng.permutation(len(BARS))[: int(rng.integers(5, 9))]
        columns = (np.arange(width) * len(order) // width)
        image = np.broadcast_to(BARS[order][columns][None], (height, width, 3)) * np.float32(rng.uniform(0.6, 1.0))
        return _to_uint8(image)
    base = rng.uniform(215, 255, 3) if u < 0.8 else rng.uniform(0, 35, 3)  # blown out, or a covered lens
    return _to_uint8(_radial(size, base.astype(np.float32), rng, spread=18.0))


def occlude(image: np.ndarray, bbox: BBox, rng: np.random.Generator) -> np.ndarray:
    """The image with an opaque object over all of ``bbox`` and a random margin: a card, an ellipse
    or a soft-edged blob (opaque over the margin, its edge fading outside it), flat or textured."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = bbox
    # Random margins, so the cover's outline does not trace the digit's extent.
    mx, my = 3 + rng.uniform(0.1, 0.45) * (x1 - x0), 3 + rng.uniform(0.1, 0.45) * (y1 - y0)
    left, right, top, bottom = (float(rng.uniform(3.0, m)) for m in (mx, mx, my, my))
    box = (x0 - left, y0 - top, x1 + right, y1 + bottom)
    shape, texture = int(rng.integers(3)), int(rng.integers(3))
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if shape == 1:  # an ellipse through the box's corners (sqrt 2 times its half sides) covers all of it
        cx, cy, hw, hh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        draw.ellipse((cx - 1.42 * hw, cy - 1.42 * hh, cx + 1.42 * hw, cy + 1.42 * hh), fill=255)
    else:  # rounded corners no wider than the margins, so the bbox's corners stay covered
        radius = float(rng.uniform(0.0, min(left, right, top, bottom)))
        draw.rounded_rectangle(box, radius=radius, fill=255)
    alpha = np.asarray(mask, np.float32) / 255.0
    if shape == 2:  # a blob out of focus: opaque inside, its edge fading out
        alpha = np.maximum(alpha, _blur(alpha, float(rng.uniform(1.5, 4.0))))
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    cover = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if texture == 1:
        cover = cover + _stripes(size=(width, height), rng=rng, amplitude=float(rng.uniform(15, 35)))
    elif texture == 2:
        grain = rng.normal(0.0, float(rng.uniform(8, 20)), (height // 2 + 1, width // 2 + 1)).astype(np.float32)
        smooth = Image.fromarray(grain, "F").resize((width, height), Image.Resampling.BILINEAR)
        cover = cover + np.asarray(smooth, np.float32)[..., None]
    a = alpha[..., None]
    return _to_uint8(image.astype(np.float32) * (1.0 - a) + cover * a)


# -- scenes and backgrounds -------------------------------------------------------------------------


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background base colour and a digit colour at least :data:`MIN_CONTRAST` luma levels apart."""
    bg = rng.uniform(0, 255, 3)
    candidates = rng.uniform(0, 255, (24, 3))
    far = np.abs((candidates - bg) @ _LUMA) >= MIN_CONTRAST
    # The first candidate far enough; on a mid-grey background maybe none: black or white, whichever is further.
    fallback = np.zeros(3) if float(_LUMA @ bg) > 127 else np.full(3, 255.0)
    fg = candidates[int(np.argmax(far))] if far.any() else fallback
    return bg.astype(np.float32), fg.astype(np.float32)


def _inner_colour(edge: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An outlined digit's fill: any colour clearly apart from its outline."""
    colour = rng.uniform(0, 255, 3)
    if abs(float(_LUMA @ (colour - edge))) < 60.0:
        colour = np.zeros(3) if float(_LUMA @ edge) > 127 else np.full(3, 255.0)
    return colour.astype(np.float32)


def _scene(size: Size, bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A background around ``bg`` with 0-4 distractors: HxWx3 float32."""
    image = _background(size, bg, rng)
    return _clutter(image, bg, rng, count=int(rng.integers(0, 5)))


def _background(size: Size, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    width, height = size
    kind = int(rng.integers(5))
    if kind == 0:
        return _radial(size, base, rng, spread=45.0)
    if kind == 1:  # four corners of their own colours, blended bilinearly
        corners = base + rng.uniform(-40.0, 40.0, (2, 2, 3)).astype(np.float32)
        ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
        top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
        bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
        return top * (1 - ys) + bottom * ys
    if kind == 2:
        return base + _stripes(size, rng, amplitude=float(rng.uniform(12.0, 30.0)))
    if kind == 3:  # a checker, possibly turned
        cell = float(rng.uniform(3.0, 14.0))
        u, v = _turned_grid(size, float(rng.uniform(0.0, np.pi / 2)))
        sign = ((np.floor(u / cell) + np.floor(v / cell)) % 2) * 2.0 - 1.0
        return base + (sign[..., None] * _tint(rng, float(rng.uniform(10.0, 28.0)))).astype(np.float32)
    # Blurred blobs: ellipses in colours near the base, out of focus.
    canvas = Image.new("RGB", size, tuple(int(c) for c in base))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(6, 16))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(3, width / 3), rng.uniform(3, height / 3)
        colour = np.clip(base + rng.uniform(-45.0, 45.0, 3), 0, 255)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(c) for c in colour))
    blurred = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(2.0, 6.0))))
    return np.asarray(blurred, np.float32)


def _radial(size: Size, base: np.ndarray, rng: np.random.Generator, *, spread: float) -> np.ndarray:
    """``base`` at a random centre, shading into another colour (up to ``spread`` levels away) outwards."""
    width, height = size
    other = base + rng.uniform(-spread, spread, 3).astype(np.float32)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(xs - cx, ys - cy)
    r = (r / max(float(r.max()), 1.0)) ** np.float32(rng.uniform(0.6, 2.0))
    return base * (1.0 - r[..., None]) + other * r[..., None]


def _turned_grid(size: Size, angle: float) -> tuple[np.ndarray, np.ndarray]:
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xs * cos + ys * sin, ys * cos - xs * sin


def _tint(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A colour direction of length ``amplitude`` (levels), for a texture's two tones."""
    direction = rng.uniform(-1.0, 1.0, 3) + 0.5  # mostly brightness, some hue
    return (direction / max(float(np.linalg.norm(direction)), 1e-6) * amplitude).astype(np.float32)


def _stripes(size: Size, rng: np.random.Generator, *, amplitude: float) -> np.ndarray:
    """Stripes at a random angle and period, soft (sine) or hard, as an HxWx3 offset."""
    period = float(rng.uniform(4.0, 20.0))
    u, _ = _turned_grid(size, float(rng.uniform(0.0, np.pi)))
    wave = np.sin(u * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi)))
    if rng.random() < 0.5:
        wave = np.sign(wave)
    return (wave[..., None] * _tint(rng, amplitude)).astype(np.float32)


def _clutter(image: np.ndarray, bg: np.ndarray, rng: np.random.Generator, *, count: int) -> np.ndarray:
    """``count`` distractors (polygon, arc, dot cluster, letter), mostly in colours near the background's."""
    height, width = image.shape[:2]
    canvas = Image.fromarray(_to_uint8(image))
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        near = rng.random() < 0.7  # distractors are usually fainter than the digit
        colour = np.clip(bg + rng.uniform(-60, 60, 3), 0, 255) if near else rng.uniform(0, 255, 3)
        fill = tuple(int(c) for c in colour)
        kind = int(rng.integers(4))
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        reach = float(rng.uniform(4, min(width, height) / 3))
        if kind == 0:  # a polygon of 3-6 corners
            corners = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = rng.uniform(0.5, 1.0, corners) * reach
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii, strict=True)],
                         fill=fill if rng.random() < 0.5 else None, outline=fill)
        elif kind == 1:  # an arc
            start = float(rng.uniform(0, 360))
            draw.arc((cx - reach, cy - reach, cx + reach, cy + reach), start, start + float(rng.uniform(60, 270)),
                     fill=fill, width=int(rng.integers(1, 3)))
        elif kind == 2:  # a cluster of dots
            for dx, dy in rng.normal(0.0, reach / 3, (int(rng.integers(3, 9)), 2)):
                r = float(rng.uniform(0.8, 2.2))
                draw.ellipse((cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r), fill=fill)
        else:  # a small letter, never a digit
            letter = LETTERS[int(rng.integers(len(LETTERS)))]
            font = aileron(max(8, round(reach * 0.8)))
            draw.text((cx - reach / 2, cy - reach / 2), letter, font=font, fill=fill)
    return np.asarray(canvas, np.float32)


def _glare(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft light band at a random angle, brightening what it crosses."""
    height, width = image.shape[:2]
    u, _ = _turned_grid((width, height), float(rng.uniform(0, np.pi)))
    centre = float(rng.uniform(u.min(), u.max()))
    band = np.exp(-(((u - centre) / np.float32(rng.uniform(3.0, 10.0))) ** 2)) * np.float32(rng.uniform(0.15, 0.35))
    return _paint(image, band, np.full(3, 255.0, np.float32))


def _paint(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return image * (1.0 - a) + np.asarray(colour, np.float32) * a


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    """A float mask in [0, 1] through Pillow's Gaussian blur."""
    image = Image.fromarray(np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8), "L")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(image, 0.0, 255.0).astype(np.uint8))


__all__ = ["BARS", "LETTERS", "MIN_CONTRAST", "occlude", "render_blank", "render_digit", "segment_base"]
