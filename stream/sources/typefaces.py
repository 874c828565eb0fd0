"""Digit glyphs from TrueType typefaces, rasterised by OpenCV: a training augmentation.

The training renderer (:mod:`.render`) draws OpenCV's Hershey stroke fonts, a handful of
single-line designs. A video encoder trained on them alone learns those strokes and reads other
typefaces poorly (docs/training.md). This module gives training other shapes: the outlines of the
serif, sans-serif, monospaced and italic typefaces that ship inside matplotlib's wheel (DejaVu,
STIX, Computer Modern), read with matplotlib's FreeType binding and filled with OpenCV's
anti-aliased polygon fill. Nothing is installed on the system and nothing is downloaded.

The second held-out renderer (:mod:`.render_alt`) draws Pillow's own typefaces (Aileron and the
bitmap font) with Pillow's FreeType rasteriser; none of them is in :data:`TYPEFACES`, so that
held-out set stays unseen.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

#: matplotlib's bundled typefaces that draw all ten digits (its other files are symbol and
#: fallback fonts). cmmi10's digits are old-style figures, a look no other typeface here has.
TYPEFACES: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)
_EM = 256  # outline size in FreeType pixels: fine enough that a 96-pixel glyph never shows facets
_SUBPIXEL_BITS = 4  # cv2.fillPoly's fixed-point shift: 1/16-pixel vertex precision


class TypefacesUnavailable(ImportError):
    """matplotlib (the ``train`` extra) is not installed, so its typefaces cannot be read."""


def require_typefaces() -> None:
    """Raise a one-line :class:`TypefacesUnavailable` (an ImportError) unless the typefaces can be read."""
    _font_dir()


@functools.cache
def _font_dir() -> Path:
    try:
        import matplotlib
    except ImportError as exc:
        raise TypefacesUnavailable(
            "video typeface augmentation needs matplotlib's bundled fonts: pip install 'fusionstream[train]'"
        ) from exc
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def outline(typeface: str, digit: int) -> tuple[np.ndarray, ...]:
    """The digit's closed contours in ``typeface``, y pointing down, its ink box at the origin,
    scaled so the ink is 1.0 high (holes are contours too; an even-odd fill draws them)."""
    from matplotlib.ft2font import FT2Font, LoadFlags
    from matplotlib.path import Path as MplPath

    font = FT2Font(str(_font_dir() / typeface))
    font.set_size(_EM, 72)
    font.load_char(ord(str(digit)), flags=LoadFlags.NO_HINTING)
    vertices, codes = font.get_path()
    polygons = MplPath(vertices, codes).to_polygons(closed_only=True)
    if not polygons:
        raise ValueError(f"{typeface} has no outline for the digit {digit}")
    points = np.concatenate(polygons)
    low, high = points.min(axis=0), points.max(axis=0)
    ink_h = float(high[1] - low[1])
    return tuple(np.column_stack(((p[:, 0] - low[0]) / ink_h, (high[1] - p[:, 1]) / ink_h)) for p in polygons)


def draw(canvas: np.ndarray, typeface: str, digit: int, height: float, centre: tuple[float, float],
         embolden: int = 0) -> None:
    """Fill the digit into ``canvas`` (HxW uint8) at ``height`` pixels of ink, centred on ``centre``;
    ``embolden`` > 0 also strokes the outline that many pixels wide (a heavier weight)."""
    contours = outline(typeface, digit)
    width = max(float(c[:, 0].max()) for c in contours) * height
    origin = np.array([centre[0] - width / 2.0, centre[1] - height / 2.0])
    scale = float(1 << _SUBPIXEL_BITS)
    fixed = [np.round((c * height + origin) * scale).astype(np.int32) for c in contours]
    cv2.fillPoly(canvas, fixed, 255, cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    if embolden > 0:
        cv2.polylines(canvas, fixed, True, 255, embolden, cv2.LINE_AA, shift=_SUBPIXEL_BITS)


__all__ = ["TYPEFACES", "TypefacesUnavailable", "draw", "outline", "require_typefaces"]
