"""Digit glyphs from TrueType typefaces, rasterised by OpenCV: a training augmentation.

The training renderer (:mod:`.render`) draws OpenCV's Hershey stroke fonts, a handful of
single-line designs. A video encoder trained on them alone learns those strokes and reads other
typefaces poorly (docs/training.md). This module gives training other shapes: the outlines of the
serif, sans-serif, monospaced and italic typefaces that ship inside matplotlib's wheel (DejaVu,
STIX, Computer Modern) and of the open typefaces that small PyPI font packages carry (Open Sans,
Source Sans and Serif, Caladea, Hanken Grotesk, Fredoka, Amatic, Intuitive: humanist and grotesque
sans, old-style serifs, rounded, hand-drawn and condensed figures), read with matplotlib's FreeType
binding and filled with OpenCV's anti-aliased polygon fill. All of them come with the ``train``
extra: nothing is installed on the system and nothing is downloaded at run time.

The second held-out renderer (:mod:`.render_alt`) draws Pillow's own typefaces (Aileron and the
bitmap font) with Pillow's FreeType rasteriser; none of them is in :data:`TYPEFACES`, so that
held-out set stays unseen.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import cv2
import numpy as np

#: matplotlib's bundled typefaces that draw all ten digits (its other files are symbol and
#: fallback fonts). cmmi10's digits are old-style figures.
MATPLOTLIB_TYPEFACES: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)
#: The font packages of the ``train`` extra: import package, the folder inside it, and the files
#: used (a few weights and slants of each family, not every one: weights of one design look alike).
FONT_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ttf_opensans": ("ttf", ("OpenSans-Regular.ttf", "OpenSans-Bold.ttf", "OpenSans-Italic.ttf",
                             "OpenSans-Light.ttf", "OpenSans-ExtraBoldItalic.ttf")),
    "font_source_sans_pro": ("files", ("SourceSansPro-Regular.ttf", "SourceSansPro-Black.ttf",
                                       "SourceSansPro-It.ttf", "SourceSansPro-ExtraLight.ttf",
                                       "SourceSansPro-SemiboldIt.ttf")),
    "font_source_serif_pro": ("files", ("SourceSerifPro-Regular.ttf", "SourceSerifPro-Black.ttf",
                                        "SourceSerifPro-It.ttf", "SourceSerifPro-Light.ttf",
                                        "SourceSerifPro-BoldIt.ttf")),
    "font_caladea": ("files", ("Caladea-Regular.ttf", "Caladea-Bold.ttf", "Caladea-Italic.ttf",
                               "Caladea-BoldItalic.ttf")),
    "font_hanken_grotesk": ("files", ("HankenGrotesk-Regular.otf", "HankenGrotesk-Bold.otf",
                                      "HankenGrotesk-LightItalic.otf", "HankenGrotesk-SemiBoldItalic.otf")),
    "font_fredoka_one": ("files", ("FredokaOne-Regular.ttf",)),
    "font_amatic_sc": ("files", ("AmaticSC-Regular.ttf", "AmaticSC-Bold.ttf")),
    "font_intuitive": ("files", ("Intuitive.ttf",)),
}
PACKAGED_TYPEFACES: tuple[str, ...] = tuple(name for _, names in FONT_PACKAGES.values() for name in names)
#: Every typeface training draws from (file names are unique across the sources).
TYPEFACES: tuple[str, ...] = MATPLOTLIB_TYPEFACES + PACKAGED_TYPEFACES
#: The pools an :class:`~.augment.Augmentation` can draw from: ``matplotlib`` alone is the recipe
#: of v2026.12.05.2, kept for the ablation (docs/training.md).
TYPEFACE_POOLS: dict[str, tuple[str, ...]] = {"all": TYPEFACES, "matplotlib": MATPLOTLIB_TYPEFACES}
_PACKAGE_OF = {name: package for package, (_, names) in FONT_PACKAGES.items() for name in names}
_EM = 256  # outline size in FreeType pixels: fine enough that a 96-pixel glyph never shows facets
_SUBPIXEL_BITS = 4  # cv2.fillPoly's fixed-point shift: 1/16-pixel vertex precision


class TypefacesUnavailable(ImportError):
    """matplotlib or a font package (the ``train`` extra) is not installed, so its typefaces cannot be read."""


def require_typefaces(pool: str = "all") -> None:
    """Raise a one-line :class:`TypefacesUnavailable` (an ImportError) unless every typeface of
    ``pool`` (a key of :data:`TYPEFACE_POOLS`) can be read."""
    _font_dir()
    for package in sorted({_PACKAGE_OF[name] for name in TYPEFACE_POOLS[pool] if name in _PACKAGE_OF}):
        _package_dir(package)


def typeface_path(typeface: str) -> Path:
    """The file of one of :data:`TYPEFACES`."""
    package = _PACKAGE_OF.get(typeface)
    return (_package_dir(package) if package else _font_dir()) / typeface


@functools.cache
def _package_dir(package: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise TypefacesUnavailable(
            f"video typeface augmentation needs the font package {package}: pip install 'fusionstream[train]'"
        ) from exc
    assert module.__file__ is not None
    return Path(module.__file__).parent / FONT_PACKAGES[package][0]


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

    font = FT2Font(str(typeface_path(typeface)))
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


__all__ = ["FONT_PACKAGES", "MATPLOTLIB_TYPEFACES", "PACKAGED_TYPEFACES", "TYPEFACES", "TYPEFACE_POOLS",
           "TypefacesUnavailable", "draw", "outline", "require_typefaces", "typeface_path"]
