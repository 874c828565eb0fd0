"""The intake check of JPEG frames and their lazy decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fusionstream.stream.errors import BadRecord
from fusionstream.stream.jpeg import LazyJpeg, check_jpeg, decode_jpeg, decode_jpeg_reduced, reduction


def picture(height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(height, width) // 3, (250, 200, 40), -1)
    return np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray | None = None, *flags: int) -> bytes:
    ok, data = cv2.imencode(".jpg", picture() if image is None else image, list(flags))
    assert ok
    return data.tobytes()


def segment(data: bytes, marker: int) -> int:
    """Offset of the first segment with this marker."""
    i = 2
    while data[i + 1] != marker:
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return i


@pytest.mark.parametrize(
    "flags",
    [(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (cv2.IMWRITE_JPEG_OPTIMIZE, 1)],
    ids=["baseline", "progressive", "optimized"],
)
def test_real_jpegs_pass_with_their_size(flags: tuple[int, ...]) -> None:
    assert check_jpeg(jpeg(None, *flags)) == (48, 64)
    assert check_jpeg(jpeg(picture(30, 20)[:, :, 0])) == (30, 20)  # grey: one component


def broken(kind: str) -> bytes:
    data = bytearray(jpeg())
    sof, dqt, dht, sos = (segment(bytes(data), m) for m in (0xC0, 0xDB, 0xC4, 0xDA))
    if kind == "truncated":
        return bytes(data[: len(data) // 2])
    if kind == "no-soi":
        return bytes(data[2:])
    if kind == "second-soi":
        return bytes(data[:2] + b"\xff\xd8" + data[2:])
    if kind == "runs-past-end":
        data[dqt + 2 : dqt + 4] = (len(data)).to_bytes(2, "big")
    elif kind == "bad-quant-table":
        data[dqt + 4] = 0x27  # precision 2
    elif kind == "zero-height":
        data[sof + 5 : sof + 7] = b"\x00\x00"
    elif kind == "bad-sampling":
        data[sof + 11] = 0x00
    elif kind == "bad-huffman":
        data[dht + 5 : dht + 21] = bytes([0, 255, 255] + [0] * 13)
    elif kind == "unknown-component":
        data[sos + 5] = 77
    elif kind == "no-scan":
        return bytes(data[:sos] + b"\xff\xd9")
    return bytes(data)


@pytest.mark.parametrize(
    "kind",
    ["truncated", "no-soi", "second-soi", "runs-past-end", "bad-quant-table", "zero-height", "bad-sampling",
     "bad-huffman", "unknown-component", "no-scan"],
)
def test_malformed_jpegs_are_refused_at_intake(kind: str) -> None:
    data = broken(kind)
    with pytest.raises(BadRecord) as refused:
        check_jpeg(data)
    assert refused.value.reason == "bad-jpeg" and refused.value.detail


def test_a_size_claim_beyond_8k_is_refused_before_anything_is_allocated() -> None:
    data = bytearray(jpeg())
    sof = segment(bytes(data), 0xC0)
    data[sof + 5 : sof + 9] = (65535).to_bytes(2, "big") * 2  # a 3 KB frame claiming 65535 x 65535
    with pytest.raises(BadRecord, match="pixels"):
        LazyJpeg(bytes(data))


def test_progressive_frames_beyond_full_hd_are_refused_and_full_hd_ones_pass() -> None:
    """Every progressive frame is decoded at intake, at ten times a baseline frame's cost: a 195 kB progressive 8K
    frame at 30 fps held its partition back for minutes (an outside tester). Baseline frames keep the 8K limit."""
    small = picture(8, 8)

    def frame(height: int, width: int, progressive: int) -> bytes:
        return jpeg(cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST),
                    cv2.IMWRITE_JPEG_PROGRESSIVE, progressive)

    assert check_jpeg(frame(1080, 1920, 1)) == (1080, 1920)
    assert check_jpeg(frame(1088, 1920, 0)) == (1088, 1920)
    with pytest.raises(BadRecord, match="progressive JPEG of 1920x1088, more than 2,073,600 pixels") as refused:
        LazyJpeg(frame(1088, 1920, 1))
    assert refused.value.reason == "bad-jpeg" and "send baseline JPEG" in refused.value.detail


def test_a_missing_quantisation_table_is_refused() -> None:
    data = bytearray(jpeg())
    while b"\xff\xdb" in data:
        i = segment(bytes(data), 0xDB)
        del data[i : i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")]
    with pytest.raises(BadRecord, match="quantisation"):
        check_jpeg(bytes(data))


def test_lazy_jpeg_decodes_once_and_matches_the_eager_decode() -> None:
    data = jpeg()
    lazy = LazyJpeg(data)
    assert not lazy.decoded and lazy.shape == (48, 64, 3)
    first = lazy.decode()
    assert lazy.decoded and lazy.decode() is first and not lazy.failed
    np.testing.assert_array_equal(first, decode_jpeg(data))
    with pytest.raises(BadRecord):
        LazyJpeg(broken("truncated"))


def test_mutated_jpegs_rarely_pass_the_check_and_never_break_decoding() -> None:
    # What passes the intake check must either decode, or (rarely) come out black and flagged:
    # never an exception in the pipeline's decode step.
    originals = [jpeg(picture(48 + 8 * k, 64)) for k in range(4)]
    for original in originals:  # their header blocks decode: damage after them takes the fast path
        LazyJpeg(original)
    rng = np.random.default_rng(7)
    passed = escaped = 0
    for n in range(3000):
        data = bytearray(originals[n % len(originals)])
        if n % 3 == 0:
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif n % 3 == 1:
            data[int(rng.integers(2, 220))] = int(rng.integers(256))
        else:
            i = int(rng.integers(len(data)))
            data[i : i + 20] = rng.bytes(int(rng.integers(1, 20)))
        try:
            lazy = LazyJpeg(bytes(data))
        except BadRecord:
            continue
        passed += 1
        # The fast path (no decode at intake) never admits a frame libjpeg refuses.
        assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None
        pixels = lazy.decode()
        assert pixels.shape == lazy.shape and pixels.dtype == np.uint8
        escaped += lazy.failed
    assert passed > 1000  # most damage is in the entropy-coded data, which libjpeg survives
    assert escaped <= 0.03 * 3000


def test_frames_like_one_that_decoded_are_admitted_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[int] = []  # the intake's check decodes (full decodes come later, when sampled)
    real_imdecode = cv2.imdecode

    def imdecode(buffer: np.ndarray, flags: int) -> np.ndarray | None:
        if flags & ~cv2.IMREAD_IGNORE_ORIENTATION == cv2.IMREAD_REDUCED_GRAYSCALE_8:
            decodes.append(flags)
        return real_imdecode(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    first = jpeg(picture(72, 88))  # a size no other test uses: its header block is new here
    LazyJpeg(first)
    assert len(decodes) == 1  # a header block never decoded before: decoded at eighth scale

    rng = np.random.default_rng(3)
    later = jpeg(np.clip(picture(72, 88) + rng.integers(0, 60, (72, 88, 3)), 0, 255).astype(np.uint8))
    assert later != first and later.startswith(first[: segment(first, 0xDA)])  # same encoder, same headers
    lazy = LazyJpeg(later)
    assert len(decodes) == 1  # admitted on its header block alone
    np.testing.assert_array_equal(lazy.decode(), decode_jpeg(later))

    # A marker segment inside the scan (a progressive frame's next scan, or damage) is decoded to be sure.
    scan = segment(later, 0xDA) + 2 + int.from_bytes(later[segment(later, 0xDA) + 2 :][:2], "big")
    middle = (scan + len(later)) // 2
    while later[middle - 1] == 0xFF:  # not between a 0xFF and the byte it goes with
        middle += 1
    LazyJpeg(later[:middle] + b"\xff\xfe\x00\x04ok" + later[middle:])
    assert len(decodes) == 2


@pytest.mark.parametrize(
    ("height", "width", "min_side", "factor"),
    [(720, 1280, 64, 8), (720, 1280, 96, 4), (1080, 1920, 96, 8), (288, 384, 64, 4), (96, 96, 64, 1),
     (128, 128, 64, 2), (127, 128, 64, 2), (126, 128, 64, 1), (720, 1280, 0, 1), (40, 40, 64, 1)],
)
def test_the_reduction_is_the_largest_that_keeps_both_sides_covered(
    height: int, width: int, min_side: int, factor: int
) -> None:
    assert reduction(height, width, min_side) == factor


def test_a_large_frame_decodes_small_and_close_to_the_full_decode_shrunk() -> None:
    data = jpeg(cv2.resize(picture(72, 96), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC))  # 384 x 288
    small = decode_jpeg(data, min_side=64)
    assert small.shape == (72, 96, 3)  # a quarter: 1/8 would be 36 high, under 64
    full = decode_jpeg(data)
    assert full.shape == (288, 384, 3)
    shrunk = cv2.resize(full, (96, 72), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - shrunk).mean() < 2.0  # grey levels of 255
    # A lazy frame keeps what it decoded for the requests it serves, and decodes again for a larger one.
    lazy = LazyJpeg(data)
    assert lazy.decode(64).shape == (72, 96, 3) and lazy.decode(48) is lazy.decode(64)
    assert lazy.decode(0).shape == (288, 384, 3) and lazy.decode(64) is lazy.decode(0)


@pytest.mark.parametrize("sampling", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
def test_libjpeg_turbo_through_simplejpeg_gives_opencvs_pixels(monkeypatch: pytest.MonkeyPatch, sampling: int) -> None:
    """Frames decode through simplejpeg (faster), with exactly the pixels OpenCV's decode gives, at every
    reduction; and what simplejpeg would only warn about is OpenCV's to decide, as before."""
    from fusionstream.stream import jpeg as module

    assert module.simplejpeg is not None, "simplejpeg is a dependency"
    frames = [jpeg(picture(h, w), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling) for h, w in
              [(96, 96), (100, 75), (37, 53), (288, 384), (481, 641)]]
    rng = np.random.default_rng(5)
    damaged = []
    for original in frames[:3]:
        scan = segment(original, 0xDA) + 20
        data = bytearray(original)
        for _ in range(3):
            data[int(rng.integers(scan, len(data) - 2))] ^= 0x55
        damaged.append(bytes(data))
    fast = {}
    for data in frames + damaged:
        for factor in (1, 2, 4, 8):
            fast[data, factor] = decode_jpeg_reduced(data, factor, check_jpeg(data))
    used = []
    real = module.simplejpeg.decode_jpeg
    monkeypatch.setattr(module.simplejpeg, "decode_jpeg", lambda *a, **k: used.append(1) or real(*a, **k))
    assert decode_jpeg_reduced(frames[0], 1).shape == (96, 96, 3) and used
    monkeypatch.setattr(module, "simplejpeg", None)
    for (data, factor), pixels in fast.items():
        try:
            expected = decode_jpeg_reduced(data, factor)
        except BadRecord:
            continue  # refused by OpenCV; the frame would have been refused at intake
        np.testing.assert_array_equal(pixels, expected, err_msg=f"factor {factor}, {len(data)} bytes")
