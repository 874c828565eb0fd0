"""Window contents → arrays: text hashing, frame preprocessing, rows and batches."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from tinymodels import tiny_spec

from fusionstream.engines.errors import InputError
from fusionstream.engines.features import Batch, Row, frames_to_array, make_row, random_batch, text_to_ids
from fusionstream.engines.spec import ModelSpec

SPEC = ModelSpec(version="test", fusion="concat")  # the default geometry: K=4, 64×64, 4096 buckets, 256 ids


# -- text ------------------------------------------------------------------------------------


def test_text_ids_are_hashed_character_ngrams_of_padded_words() -> None:
    ids = text_to_ids("Seven", SPEC)
    grams = [" s", "se", "ev", "ve", "en", "n ", " se", "sev", "eve", "ven", "en ", " sev", "seve", "even", "ven "]
    expected = [zlib.crc32(g.encode()) % (SPEC.text_buckets - 1) + 1 for g in grams]
    assert ids.dtype == np.int64 and ids.shape == (SPEC.text_max_len,)
    assert ids[: len(grams)].tolist() == expected
    assert not ids[len(grams) :].any()  # zero padding


def test_text_ids_ignore_case_punctuation_and_spacing() -> None:
    a = text_to_ids("seven, EIGHT!", SPEC)
    b = text_to_ids("  Seven   eight ", SPEC)
    np.testing.assert_array_equal(a, b)
    assert 0 < (a != 0).sum() < SPEC.text_max_len


def test_text_ids_are_in_range_and_truncated() -> None:
    spec = tiny_spec(text_buckets=7, text_max_len=10)
    ids = text_to_ids("the quick brown fox jumps over the lazy dog " * 5, spec)
    assert ids.shape == (10,) and ids.min() >= 1 and ids.max() <= 6  # full: no padding left


def test_empty_text_is_all_padding() -> None:
    assert not text_to_ids("", SPEC).any()
    assert not text_to_ids(" ... ", SPEC).any()
    with pytest.raises(InputError):
        text_to_ids(b"bytes", SPEC)  # type: ignore[arg-type]


def test_text_ids_do_not_depend_on_the_process_hash_seed() -> None:
    # Python's str hash is salted per process; the ids must be the same in every worker forever.
    code = (
        "from fusionstream.engines.features import text_to_ids; from fusionstream.engines.spec import ModelSpec; "
        "print(text_to_ids('five six seven', ModelSpec(version='x', fusion='gmu'))[:30].tolist())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(text_to_ids("five six seven", SPEC)[:30].tolist())


# -- frames ----------------------------------------------------------------------------------


def frame(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


@pytest.mark.parametrize("size", [(64, 64), (480, 640), (20, 30)], ids=["exact", "shrink", "grow"])
def test_frames_become_k_channel_first_images_in_unit_range(size: tuple[int, int]) -> None:
    frames = [frame(*size, (255, 0, 128))] * 4
    out = frames_to_array(frames, SPEC)
    assert out.dtype == np.float32 and out.shape == (4, 3, 64, 64)
    np.testing.assert_allclose(out[:, 0], 1.0)  # RGB order kept, channel first
    np.testing.assert_allclose(out[:, 1], 0.0)
    np.testing.assert_allclose(out[:, 2], 128 / 255, rtol=1e-6)


@pytest.mark.parametrize(
    ("count", "picked"), [(1, [0, 0, 0, 0]), (2, [0, 0, 1, 1]), (8, [0, 2, 5, 7]), (4, [0, 1, 2, 3])]
)
def test_other_frame_counts_are_resampled_evenly(count: int, picked: list[int]) -> None:
    frames = [frame(64, 64, (i, i, i)) for i in range(count)]
    out = frames_to_array(frames, SPEC)
    np.testing.assert_allclose(out[:, 0, 0, 0] * 255, picked, atol=1e-4)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [np.zeros((64, 64), np.uint8)],
        [np.zeros((64, 64, 4), np.uint8)],
        [np.zeros((64, 64, 3), np.float32)],
        ["not an image"],
    ],
    ids=["none", "gray", "rgba", "float", "str"],
)
def test_bad_frames_raise(bad: list[np.ndarray]) -> None:
    with pytest.raises(InputError):
        frames_to_array(bad, SPEC)


# -- rows and batches ------------------------------------------------------------------------


def test_make_row_fills_absent_modalities_with_zeros() -> None:
    spec = tiny_spec()
    row = make_row(spec, text="four")
    assert row.mask.tolist() == [0.0, 0.0, 1.0]
    assert not row.video.any() and not row.audio.any() and row.text.any()
    assert row.video.shape == spec.input_shapes["video"] and row.audio.shape == spec.input_shapes["audio"]

    audio = np.linspace(-1, 1, spec.samples_per_window)
    row = make_row(spec, frames=[frame(8, 8, (1, 2, 3))], audio=audio, text="x", mask=[True, False, True])
    assert row.mask.tolist() == [1.0, 0.0, 1.0] and not row.audio.any()  # the mask wins over given data
    with pytest.raises(InputError, match="marks audio present"):
        make_row(spec, mask=[0, 1, 0])
    with pytest.raises(InputError, match="audio must have shape"):
        make_row(spec, audio=audio[:-1])


def test_stack_and_check() -> None:
    spec = tiny_spec()
    rows = [make_row(spec, text="one"), make_row(spec, audio=np.zeros(spec.samples_per_window))]
    batch = Batch.stack(rows)
    assert len(batch) == 2 and batch.mask.tolist() == [[0, 0, 1], [0, 1, 0]]
    batch.check(spec)
    assert len(Batch.stack([tuple(r) for r in rows])) == 2
    with pytest.raises(InputError, match="rows must have shape"):
        batch.check(SPEC)
    with pytest.raises(InputError, match="empty"):
        Batch.stack([])
    with pytest.raises(InputError, match="do not stack"):
        Batch.stack([rows[0], Row(rows[1].video[:1], *rows[1][1:])])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("video", lambda b: b.video.astype(np.float64), "video must be float32"),
        ("audio", lambda b: b.audio[:, None], "audio must be float32 with 2"),
        ("text", lambda b: b.text.astype(np.int32), "text must be int64"),
        ("mask", lambda b: b.mask[:2], "disagree on the batch size"),
        ("mask", lambda b: b.mask * 0.5, "only 0"),
        ("mask", lambda b: b.mask[:, :2], r"\[B, 3\]"),
        ("video", lambda b: b.video.tolist(), "numpy array"),
    ],
)
def test_batch_validation(field: str, value: object, message: str) -> None:
    good = random_batch(tiny_spec(), 3, 0)
    fields = {name: getattr(good, name) for name in ("video", "audio", "text", "mask")}
    fields[field] = value(good)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        Batch(**fields)


def test_random_batch_is_well_formed_and_seeded() -> None:
    spec = tiny_spec()
    a, b = random_batch(spec, 5, 7), random_batch(spec, 5, 7)
    a.check(spec)
    np.testing.assert_array_equal(a.text, b.text)
    assert (random_batch(spec, 4, 0, p_present=1.0).mask == 1).all()
