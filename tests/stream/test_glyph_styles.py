"""Glyph-style augmentation: a digit outlined, hollow, shadowed or blocky, in training only."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from fusionstream.stream.records import Modality
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.augment import Augmentation
from fusionstream.stream.sources.glyph_styles import STYLE_KINDS, GlyphStyle
from fusionstream.stream.sources.render import segment_base

SIZE = (96, 96)
BACKGROUND = (40, 90, 160)
FOREGROUND = (240, 230, 200)
STYLE_ONLY = dataclasses.replace(Augmentation.none(), glyph_style=1.0)


def _digit_alpha(digit: int = 8) -> np.ndarray:
    """A thick solid digit's coverage, as the renderer hands it to a style."""
    canvas = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    cv2.putText(canvas, str(digit), (22, 78), cv2.FONT_HERSHEY_SIMPLEX, 2.4, 255, 9, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _background() -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), BACKGROUND, np.uint8)


def _style(kind: str, **fields: float) -> GlyphStyle:
    return dataclasses.replace(GlyphStyle.random(np.random.default_rng(0)), kind=kind, **fields)


def test_outlined_digit_keeps_its_fill_inside_a_ring_of_another_colour() -> None:
    alpha = _digit_alpha()
    image, drawn = _style("outlined", size=0.1, contrast=1.0).apply(_background(), alpha, FOREGROUND)
    ink, ring = alpha > 0.99, (drawn > 0.99) & (alpha < 0.01)
    assert ring.sum() > 0.3 * ink.sum()  # a ring as wide as a tenth of the digit's height
    assert np.abs(image[ink].astype(int) - FOREGROUND).max() <= 3
    # A bright digit gets a dark ring, so the ring reads against the digit whatever the background.
    assert image[ring].mean() < 40


def test_hollow_digit_shows_the_background_where_its_ink_was() -> None:
    alpha = _digit_alpha()
    image, drawn = _style("hollow", size=0.08).apply(_background(), alpha, FOREGROUND)
    ink, ring = alpha > 0.99, (drawn > 0.99) & (alpha < 0.01)
    assert np.abs(image[ink].astype(int) - BACKGROUND).max() <= 3
    assert np.abs(image[ring].astype(int) - FOREGROUND).max() <= 3
    assert ring.sum() > 0.3 * ink.sum()


def test_shadow_falls_on_the_side_it_is_cast_to() -> None:
    alpha = _digit_alpha()
    style = _style("shadow", size=0.08, direction=(1.0, 0.0), softness=0.0, contrast=1.0)
    image, drawn = style.apply(_background(), alpha, FOREGROUND)
    shadow = (drawn > 0.5) & (alpha < 0.01)
    xs_ink, xs_shadow = np.nonzero(alpha > 0.5)[1], np.nonzero(shadow)[1]
    assert xs_shadow.size > 0 and xs_shadow.max() > xs_ink.max()  # cast to the right, beyond the ink
    assert np.abs(image[alpha > 0.99].astype(int) - FOREGROUND).max() <= 3  # the digit is on top


@pytest.mark.parametrize("rows", [7, 12])
def test_blocky_digit_is_made_of_square_blocks(rows: int) -> None:
    alpha = _digit_alpha()
    _, drawn = _style("blocky", size=float(rows)).apply(_background(), alpha, FOREGROUND)
    assert set(np.unique(drawn)) <= {0.0, 1.0}  # hard-edged blocks, no anti-aliasing
    ys = np.flatnonzero(drawn.any(axis=1))
    ink_rows = np.flatnonzero((alpha > 0.25).any(axis=1))
    assert ys.min() >= ink_rows.min() and ys.max() <= ink_rows.max()
    # Rows of the drawing change only at block edges: at most `rows` distinct row patterns.
    patterns = {drawn[y].tobytes() for y in range(ink_rows.min(), ink_rows.max() + 1)}
    assert 3 <= len(patterns) <= rows
    # Still the digit: most of the blocks lie on its ink.
    assert (alpha[drawn > 0] > 0.1).mean() > 0.6


def test_every_kind_is_drawn_and_a_seed_gives_the_same_style() -> None:
    rng = np.random.default_rng(5)
    styles = [GlyphStyle.random(rng) for _ in range(200)]
    assert {s.kind for s in styles} == set(STYLE_KINDS)
    assert GlyphStyle.random(np.random.default_rng(9)) == GlyphStyle.random(np.random.default_rng(9))


@pytest.mark.parametrize("kind", STYLE_KINDS)
def test_the_scene_box_covers_everything_the_style_drew(kind: str) -> None:
    style = _style(kind, size=12.0 if kind == "blocky" else 0.1)
    plain = segment_base(6, "clean", SIZE, np.random.default_rng(3))
    styled = segment_base(6, "clean", SIZE, np.random.default_rng(3), style=style)
    assert styled.bbox is not None and plain.bbox is not None
    assert not np.array_equal(plain.image, styled.image)
    if kind in ("outlined", "hollow", "shadow"):  # these draw beyond the ink, never inside less of it
        x0, y0, x1, y1 = styled.bbox
        px0, py0, px1, py1 = plain.bbox
        assert x0 <= px0 and y0 <= py0 and x1 >= px1 and y1 >= py1
        assert (x1 - x0) * (y1 - y0) > (px1 - px0) * (py1 - py0)
    # An occluded scene hides the styled digit entirely: its box is what gets covered.
    covered = segment_base(6, "occlude", SIZE, np.random.default_rng(3), style=style)
    assert covered.bbox is None


def test_styles_move_only_the_frames_and_segments_left_flat_render_as_before() -> None:
    plain = SyntheticAV(SyntheticConfig(streams=1, seconds=40.0, seed=4))
    half = SyntheticAV(SyntheticConfig(streams=1, seconds=40.0, seed=4,
                                       augment=dataclasses.replace(Augmentation.none(), glyph_style=0.5)))
    for modality in (Modality.AUDIO, Modality.TEXT):
        assert [r.payload for r in half.records() if r.modality is modality] == \
               [r.payload for r in plain.records() if r.modality is modality]
    segments = plain.truth.segments(plain.stream_ids[0])
    video = [[r for r in s.records() if r.modality is Modality.VIDEO] for s in (plain, half)]
    by_segment: dict[int, list[bool]] = {}
    for a, b in zip(*video, strict=True):
        index = next(i for i, s in enumerate(segments) if s.t_start_ns <= a.t_start_ns < s.t_end_ns)
        by_segment.setdefault(index, []).append(a.payload == b.payload)
    kept = [all(same) for same in by_segment.values()]
    assert all(all(same) or not any(same) for same in by_segment.values())
    assert 0 < sum(kept) < len(kept)  # some segments styled, the others byte for byte as before


def test_styles_stay_out_of_the_held_out_renderer_and_rates_are_checked() -> None:
    with pytest.raises(ValueError, match=r"glyph_style augmentation .* held-out renderer"):
        SyntheticConfig(renderer="pillow", augment=STYLE_ONLY)
    with pytest.raises(ValueError, match="not a probability"):
        Augmentation(glyph_style=-0.1)
    assert Augmentation().glyph_style == 0  # off in the shipped recipe (docs/training.md)
    styled = Augmentation(glyph_style=0.3)
    assert styled.active and styled.only("audio").glyph_style == 0 and styled.only("video").glyph_style == 0.3
