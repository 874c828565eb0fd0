"""Typeface augmentation: digits drawn from TrueType outlines (matplotlib's and font packages'), in training only."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from fusionstream.stream.records import Modality
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.augment import Augmentation
from fusionstream.stream.sources.render import segment_base
from fusionstream.stream.sources.typefaces import (
    MATPLOTLIB_TYPEFACES,
    PACKAGED_TYPEFACES,
    TYPEFACES,
    draw,
    outline,
)

TYPEFACE_ONLY = dataclasses.replace(Augmentation.none(), typeface=1.0)


@pytest.mark.parametrize("typeface", TYPEFACES)
def test_every_typeface_draws_every_digit_with_its_counters(typeface: str) -> None:
    assert len(outline(typeface, 8)) >= 3  # the outer contour and both bowls
    for digit in range(10):
        canvas = np.zeros((120, 120), np.uint8)
        draw(canvas, typeface, digit, 80.0, (60.0, 60.0))
        ys, xs = np.nonzero(canvas > 127)
        assert 76 <= ys.max() - ys.min() + 1 <= 82, (typeface, digit)  # the ink is as high as asked
        assert abs((ys.min() + ys.max()) / 2 - 60) <= 2 and abs((xs.min() + xs.max()) / 2 - 60) <= 2
        if digit == 0:  # the counter is empty: a filled-in zero would cover most of its box
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert ys.size < 0.75 * box, typeface


def test_emboldening_thickens_the_strokes() -> None:
    thin, bold = np.zeros((120, 120), np.uint8), np.zeros((120, 120), np.uint8)
    draw(thin, "DejaVuSans.ttf", 7, 80.0, (60.0, 60.0))
    draw(bold, "DejaVuSans.ttf", 7, 80.0, (60.0, 60.0), embolden=4)
    assert (bold > 127).sum() > 1.2 * (thin > 127).sum()


def test_a_typeface_changes_the_glyph_and_nothing_else_of_the_scene() -> None:
    hershey = segment_base(3, "clean", (96, 96), np.random.default_rng(1))
    serif = segment_base(3, "clean", (96, 96), np.random.default_rng(1), typeface="cmr10.ttf")
    assert hershey.bbox is not None and serif.bbox is not None
    assert not np.array_equal(hershey.image, serif.image)
    # Same background and clutter: the corners, away from the glyph, mostly agree.
    same = np.all(hershey.image == serif.image, axis=2)
    assert same.mean() > 0.5


def test_typeface_augmentation_moves_only_the_frames() -> None:
    plain = list(SyntheticAV(SyntheticConfig(streams=2, seconds=12.0, seed=11)).records())
    config = SyntheticConfig(streams=2, seconds=12.0, seed=11, augment=TYPEFACE_ONLY)
    augmented, again = list(SyntheticAV(config).records()), list(SyntheticAV(config).records())
    assert [r.payload for r in augmented] == [r.payload for r in again]
    for modality in (Modality.AUDIO, Modality.TEXT):
        assert [r.payload for r in augmented if r.modality is modality] == \
               [r.payload for r in plain if r.modality is modality]
    frames = [r.payload for r in augmented if r.modality is Modality.VIDEO]
    assert len(frames) == len([r for r in plain if r.modality is Modality.VIDEO])
    assert frames != [r.payload for r in plain if r.modality is Modality.VIDEO]


def test_half_the_segments_keep_their_hershey_scene() -> None:
    """The typeface is drawn from the segment's own generator, so a segment left in a Hershey font
    renders byte for byte as without augmentation."""
    half = dataclasses.replace(Augmentation.none(), typeface=0.5)
    plain = SyntheticAV(SyntheticConfig(streams=1, seconds=60.0, seed=2))
    mixed = SyntheticAV(SyntheticConfig(streams=1, seconds=60.0, seed=2, augment=half))

    sid = plain.stream_ids[0]
    segments = plain.truth.segments(sid)
    by_segment: dict[int, list[bool]] = {}
    video = [[r for r in s.records() if r.modality is Modality.VIDEO] for s in (plain, mixed)]
    assert len(video[0]) == len(video[1])
    for a, b in zip(*video, strict=True):
        index = next(i for i, s in enumerate(segments) if s.t_start_ns <= a.t_start_ns < s.t_end_ns)
        by_segment.setdefault(index, []).append(a.payload == b.payload)
    assert all(all(same) or not any(same) for same in by_segment.values())  # one scene per segment
    kept = [all(same) for same in by_segment.values()]
    assert 0 < sum(kept) < len(kept)


def test_typefaces_stay_out_of_the_held_out_renderer() -> None:
    assert not any("aileron" in name.lower() for name in TYPEFACES)  # Pillow's own typeface
    with pytest.raises(ValueError, match="held-out renderer"):
        SyntheticConfig(renderer="pillow", augment=TYPEFACE_ONLY)
    with pytest.raises(ValueError, match="not a probability"):
        Augmentation(typeface=1.5)


def test_a_missing_training_library_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusionstream.stream.sources import typefaces

    typefaces._font_dir.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `train` extra were not installed
    try:
        with pytest.raises(ImportError, match=r"pip install 'fusionstream\[train\]'") as caught:
            TYPEFACE_ONLY.require()
        assert "\n" not in str(caught.value)
        Augmentation.none().require()  # nothing active, nothing needed
    finally:
        typefaces._font_dir.cache_clear()


def test_a_missing_font_package_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusionstream.stream.sources import typefaces

    typefaces._package_dir.cache_clear()
    monkeypatch.setitem(sys.modules, "font_caladea", None)
    try:
        with pytest.raises(ImportError, match=r"font_caladea: pip install 'fusionstream\[train\]'") as caught:
            TYPEFACE_ONLY.require()
        assert "\n" not in str(caught.value)
        # The recipe before the font packages needs matplotlib alone.
        dataclasses.replace(TYPEFACE_ONLY, typeface_pool="matplotlib").require()
    finally:
        typefaces._package_dir.cache_clear()


def test_the_pool_decides_which_typefaces_a_segment_can_get() -> None:
    rng = np.random.default_rng(5)
    every = {TYPEFACE_ONLY.pick_typeface(rng) for _ in range(3000)}
    assert every == set(TYPEFACES)  # each is drawn, the font packages' too
    assert set(PACKAGED_TYPEFACES) <= every and not set(PACKAGED_TYPEFACES) & set(MATPLOTLIB_TYPEFACES)
    older = dataclasses.replace(TYPEFACE_ONLY, typeface_pool="matplotlib")
    assert {older.pick_typeface(rng) for _ in range(1000)} == set(MATPLOTLIB_TYPEFACES)
    with pytest.raises(ValueError, match="typeface_pool"):
        Augmentation(typeface_pool="system")
