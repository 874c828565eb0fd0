"""JPEGs as real cameras deliver them: bytes after the end-of-image marker, and an EXIF orientation.

From an outside test with device-like media: an MJPEG-over-HTTP payload that kept its CRLF or part
boundary after ``FF D9`` lost every frame of its camera as ``bad-jpeg`` "no end-of-image marker
(truncated)", which it was not; a frame stored sideways with EXIF Orientation 6 was fed to the model
sideways (OpenCV turned it, simplejpeg did not: the result depended on the decoder that ran).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fusionstream.stream import wire
from fusionstream.stream.errors import BadRecord
from fusionstream.stream.exif import exif_orientation
from fusionstream.stream.jpeg import LazyJpeg, check_jpeg, decode_jpeg
from fusionstream.stream.media import decode_wire
from fusionstream.stream.records import Encoding, Frame, Modality, Record


def picture(height: int = 48, width: int = 80) -> np.ndarray:
    """Asymmetric, so every turn and mirror gives other pixels."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 3, : width // 4] = (250, 40, 40)
    cv2.circle(image, (width * 3 // 4, height * 2 // 3), height // 5, (40, 220, 90), -1)
    image[:, width // 2] = (255, 255, 255)
    return image


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def with_exif(data: bytes, orientation: int, order: str = "big") -> bytes:
    """``data`` with an APP1 EXIF segment holding one entry, Orientation, right after SOI."""
    mark = b"MM" if order == "big" else b"II"
    tiff = mark + (42).to_bytes(2, order) + (8).to_bytes(4, order) + (1).to_bytes(2, order)
    tiff += (0x0112).to_bytes(2, order) + (3).to_bytes(2, order) + (1).to_bytes(4, order)
    tiff += orientation.to_bytes(2, order) + b"\x00\x00" + (0).to_bytes(4, order)
    body = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def opencv_upright(data: bytes) -> np.ndarray:
    """What OpenCV's own reader shows: it applies the EXIF orientation."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def record(payload: bytes) -> bytes:
    return wire.encode(Record("cam-01", Modality.VIDEO, 1, 10**18, 10**18 + 66_000_000, Encoding.JPEG, payload, {}))


@pytest.mark.parametrize("suffix", [b"\r\n", b"\r\n--myboundary\r\n", b"GARBAGE!", b"\xff" * 64, b"\x00" * 4096,
                                    bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8))],
                         ids=["crlf", "mjpeg-boundary", "text", "ff-fill", "zero-padding", "random"])
def test_bytes_after_the_end_of_image_marker_are_not_the_images(suffix: bytes) -> None:
    clean = jpeg(picture())
    framed = clean + suffix
    assert check_jpeg(framed) == (48, 80)
    lazy = LazyJpeg(framed)
    assert lazy.data == clean, "the frame's bytes end at its end-of-image marker"
    np.testing.assert_array_equal(lazy.decode(), decode_jpeg(clean))
    np.testing.assert_array_equal(decode_jpeg(framed), decode_jpeg(clean))
    item = decode_wire(record(framed), lazy_jpeg=True)
    assert isinstance(item, Frame)
    np.testing.assert_array_equal(item.image.decode(), decode_jpeg(clean))


def test_a_truncated_frame_is_still_refused_whatever_follows_the_cut() -> None:
    clean = jpeg(picture())
    for cut in (clean[: len(clean) // 2], clean[: len(clean) // 2] + b"\r\n--myboundary\r\n"):
        with pytest.raises(BadRecord, match="no end-of-image marker"):
            LazyJpeg(cut)
    # An end-of-image marker before the image's scan (an EXIF thumbnail's) is not the image's end.
    thumbnail = b"Exif\x00\x00" + b"\x00" * 8 + jpeg(picture(8, 8))
    head = clean[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with pytest.raises(BadRecord, match="no end-of-image marker"):
        check_jpeg(head + clean[2 : len(clean) // 2])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["big", "little"])
def test_the_exif_orientation_turns_the_frame_as_opencvs_reader_does(orientation: int, order: str) -> None:
    data = with_exif(jpeg(picture()), orientation, order)
    upright = opencv_upright(data)
    assert upright.shape[:2] == ((80, 48) if orientation >= 5 else (48, 80))
    np.testing.assert_array_equal(decode_jpeg(data), upright)
    lazy = LazyJpeg(data)
    assert lazy.orientation == orientation and lazy.shape == upright.shape
    np.testing.assert_array_equal(lazy.decode(), upright)
    # Decoded smaller for a small model: still upright (the size the reduction gives, turned).
    small = LazyJpeg(data).decode(min_side=16)
    assert small.shape == (upright.shape[0] // 2, upright.shape[1] // 2, 3), small.shape


def test_exif_that_cannot_be_read_leaves_the_frame_as_stored() -> None:
    data = with_exif(jpeg(picture()), 6)
    at = data.index(b"Exif")
    damaged = bytearray(data)
    damaged[at + 6 : at + 8] = b"XX"  # not a TIFF byte order
    assert exif_orientation(bytes(damaged[at:])) == 1
    assert decode_jpeg(bytes(damaged)).shape == (48, 80, 3)
    assert exif_orientation(b"Exif\x00\x00MM\x00\x2a\x00\x00\xff\xff") == 1  # its directory past the end
    assert exif_orientation(b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05") == 1  # entries cut off


def damaged(clean: bytes) -> bytes:
    """A frame that lost the second half of its scan: libjpeg decodes it, the lost part grey, with a warning."""
    return clean[: len(clean) * 2 // 3] + b"\xff\xd9"


def test_a_damaged_frame_decodes_grey_where_data_is_missing_without_a_line_on_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    clean = jpeg(cv2.resize(picture(), (320, 192)))
    lazy = LazyJpeg(damaged(clean))
    pixels = lazy.decode()
    assert lazy.damage is not None and "premature end" in lazy.damage.lower(), lazy.damage
    assert not lazy.failed and pixels.shape == (192, 320, 3)
    np.testing.assert_array_equal(pixels, opencv_upright(damaged(clean)))  # what libjpeg gives through OpenCV
    capfd.readouterr()
    LazyJpeg(damaged(clean)).decode()
    assert capfd.readouterr().err == "", "libjpeg's warning is kept, not printed per frame"
    assert LazyJpeg(clean).decode() is not None and LazyJpeg(clean).damage is None


def test_damaged_frames_are_one_warning_per_stream_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    from fusionstream.consumers.pipeline import frames
    from fusionstream.stream.windows import Window

    clean = jpeg(cv2.resize(picture(), (320, 192)))

    def window(stream_id: str, start: int) -> Window:
        images = (LazyJpeg(damaged(clean)), LazyJpeg(clean))
        return Window(stream_id, start, start + 10**9, frames=images, frame_times_ns=(start, start + 1),
                      audio=np.zeros(16, np.float32), audio_gaps=(), text=(), mask=(True, True, False),
                      coverage=(1.0, 1.0, 0.0), closed_by="watermark")

    with caplog.at_level("WARNING", logger=frames.__name__):
        done = frames.decode_sampled_frames([window("cam-damaged", t * 10**9) for t in range(5)]
                                            + [window("cam-other", 0)])
    assert [(found.damaged, found.failed) for _, _, found in done] == [(1, 0)] * 6  # counted for the metric
    lines = [r.getMessage() for r in caplog.records if r.name == frames.__name__]
    assert len(lines) == 2 and "stream cam-damaged: 1 sampled JPEG frame(s) damaged" in lines[0], lines
    assert "stream cam-other" in lines[1] and "premature end" in lines[0].lower()
