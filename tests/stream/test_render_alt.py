"""The second frame renderer (`SyntheticConfig(renderer="pillow")`): other pixels, the same streams otherwise.

A held-out set drawn by it is only an honest generalisation test if the renderer changes the
video pixels and nothing else (plan, ground truth, audio, text byte for byte), draws the digit
where the scene says (and no digit in blank or occluded scenes), and is as reproducible as the
rest of the source. All through real JPEG records.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fusionstream.stream import wire
from fusionstream.stream.media import decode_media
from fusionstream.stream.records import Modality, Record
from fusionstream.stream.sources import Corruption, SyntheticAV, SyntheticConfig, render_alt
from fusionstream.stream.sources.camera_alt import AltCamera
from fusionstream.stream.sources.renderers import RENDERERS, renderer

SHORT = SyntheticConfig(streams=2, seconds=12.0, seed=7)
PILLOW = SyntheticConfig(streams=2, seconds=12.0, seed=7, renderer="pillow")
SIZE = (96, 96)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _split(records: list[Record]) -> tuple[list[Record], list[bytes]]:
    """Video records, and every other record's wire bytes."""
    video = [r for r in records if r.modality is Modality.VIDEO]
    return video, [wire.encode(r) for r in records if r.modality is not Modality.VIDEO]


@pytest.fixture(scope="module")
def both() -> tuple[SyntheticAV, list[Record], SyntheticAV, list[Record]]:
    opencv, pillow = SyntheticAV(SHORT), SyntheticAV(PILLOW)
    return opencv, list(opencv.records()), pillow, list(pillow.records())


def test_pillow_changes_the_frames_only(both: tuple[SyntheticAV, list[Record], SyntheticAV, list[Record]]) -> None:
    opencv, cv_records, pillow, pil_records = both
    # The plan and ground truth are the same.
    assert opencv.truth.stream_ids == pillow.truth.stream_ids
    for sid in opencv.stream_ids:
        assert opencv.truth.segments(sid) == pillow.truth.segments(sid)
    # Audio and text, byte for byte on the wire.
    cv_video, cv_rest = _split(cv_records)
    pil_video, pil_rest = _split(pil_records)
    assert len(cv_rest) > 100 and cv_rest == pil_rest
    # The same frames at the same times, every one drawn differently; real JPEGs of the configured size.
    assert len(cv_video) == len(pil_video) > 100
    assert [(r.stream_id, r.seq, r.t_start_ns, r.t_end_ns) for r in cv_video] == [
        (r.stream_id, r.seq, r.t_start_ns, r.t_end_ns) for r in pil_video]
    assert all(a.payload != b.payload for a, b in zip(cv_video, pil_video, strict=True))
    assert all(r.payload[:2] == b"\xff\xd8" for r in pil_video)
    for a, b in zip(cv_video[::40], pil_video[::40], strict=True):
        cv_image, pil_image = (decode_media(r).image for r in (a, b))  # type: ignore[union-attr]
        assert pil_image.shape == cv_image.shape == (96, 96, 3)
        assert np.abs(cv_image.astype(np.int16) - pil_image).mean() > 10


def test_same_seed_same_bytes_other_seed_other_frames(
    both: tuple[SyntheticAV, list[Record], SyntheticAV, list[Record]],
) -> None:
    _, _, _, pil_records = both
    assert [wire.encode(r) for r in SyntheticAV(PILLOW).records()] == [wire.encode(r) for r in pil_records]
    other = SyntheticConfig(streams=2, seconds=12.0, seed=8, renderer="pillow")
    first = next(r for r in SyntheticAV(other).records() if r.modality is Modality.VIDEO)
    assert first.payload != next(r for r in pil_records if r.modality is Modality.VIDEO).payload


def test_the_digit_is_drawn_inside_its_bbox() -> None:
    """The draws do not depend on the digit: from one generator state, two digits give the same scene
    except for the glyph, so every pixel that differs is ink, and it lies in the two scenes' bboxes."""
    for seed in range(40):
        scenes = [render_alt.segment_base(digit, "clean", SIZE, _rng(seed)) for digit in (seed % 10, (seed + 3) % 10)]
        boxes = [s.bbox for s in scenes]
        assert all(b is not None for b in boxes), seed
        differ = np.abs(scenes[0].image.astype(np.int16) - scenes[1].image).max(axis=2) > 8
        assert differ.sum() > 30, seed  # two digits: visibly different ink
        inside = np.zeros(differ.shape, bool)
        for x0, y0, x1, y1 in boxes:  # type: ignore[misc]
            assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1], seed
            inside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True  # anti-aliasing below the bbox's cut
        assert not (differ & ~inside).any(), seed


def test_blank_and_occluded_scenes_show_no_digit() -> None:
    for seed in range(30):
        blanks = [render_alt.segment_base(digit, "blank", SIZE, _rng(seed)) for digit in range(10)]
        assert all(s.bbox is None for s in blanks)
        # Not one pixel depends on the digit.
        assert all(np.array_equal(s.image, blanks[0].image) for s in blanks), seed
        occluded = render_alt.segment_base(seed % 10, "occlude", SIZE, _rng(seed))
        assert occluded.bbox is None and occluded.image.shape == (96, 96, 3)
    # The cover is opaque over the bbox: what was under it does not show.
    bbox = (30, 20, 60, 70)
    for seed in range(30):
        under = [_rng(1000 + k).integers(0, 256, (96, 96, 3), dtype=np.uint8) for k in range(2)]
        covered = [render_alt.occlude(image, bbox, _rng(seed)) for image in under]
        assert np.array_equal(covered[0][20:70, 30:60], covered[1][20:70, 30:60]), seed
        assert not np.array_equal(covered[0], covered[1])  # the rest of the scene still shows


def test_clean_stream_frames_follow_their_segments() -> None:
    """Through the camera and JPEG: a segment's frames are alike, consecutive segments (other digits) are not."""
    config = SyntheticConfig(streams=1, seconds=30.0, seed=4, corruption=Corruption.none(), renderer="pillow")
    source = SyntheticAV(config)
    frames: dict[int, list[np.ndarray]] = {}
    for r in source.records():
        if r.modality is Modality.VIDEO:
            segment = source.truth.segment_at("cam-00", r.t_start_ns)
            assert segment is not None and segment.video_state == "clean"
            frames.setdefault(segment.t_start_ns, []).append(decode_media(r).image.astype(np.float32))  # type: ignore[union-attr]
    assert len(frames) > 8
    within = [np.abs(f[0] - f[-1]).mean() for f in frames.values()]
    across = [np.abs(frames[a][0] - frames[b][0]).mean() for a, b in itertools.pairwise(frames)]
    assert max(within) < min(across)


def test_camera_is_reproducible_and_noisy() -> None:
    base = render_alt.segment_base(5, "clean", SIZE, _rng(3)).image
    camera = AltCamera.random(_rng(4))
    first, again = camera.frame(base, _rng(5)), camera.frame(base, _rng(5))
    assert np.array_equal(first, again) and first.dtype == np.uint8 and first.shape == base.shape
    assert not np.array_equal(first, camera.frame(base, _rng(6)))


def test_unknown_renderer_is_one_line_naming_the_choices() -> None:
    assert RENDERERS == ("opencv", "pillow") and SyntheticConfig().renderer == "opencv"
    with pytest.raises(ValueError, match=r"^unknown renderer 'blender': choose opencv or pillow$"):
        SyntheticConfig(renderer="blender")
    with pytest.raises(ValueError, match="choose opencv or pillow"):
        renderer("Pillow")
    assert renderer("pillow").name == "pillow"
