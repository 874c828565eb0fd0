"""JPEG frames checked at intake and decoded only when a window samples them.

A window samples K of the ~15 frames a second brings (4 of 15 by default), and overlapping
windows share their samples, so decoding every frame on arrival wastes most of the decoding
work. :func:`check_jpeg` walks the marker segments up to the start of the scan (a few
microseconds, no pixel work), and :class:`LazyJpeg` adds an eighth-scale decode that reads
the entropy-coded data (under half a full decode): what libjpeg refuses is refused at
intake, where a bad record can still go to the dead-letter topic. The pixels are decoded on
first use by a window, once, and no larger than the model needs (:func:`decode_jpeg`).

A camera writes the same header block (tables, frame and scan headers) into every frame, and
libjpeg refuses a frame only for what its marker segments say: damage in the entropy-coded
data costs pixels, with a warning, never the decode. So once a frame with a given header block
has decoded, later frames that start with the same block and carry no marker segment inside
their scan (a byte search) skip the eighth-scale decode: most of the intake's JPEG work.

OpenCV checks (its verdict on a frame is the refusal rule above); the sampled frames' pixels come
from libjpeg-turbo through simplejpeg, the same pixels without OpenCV's per-call work, turned
upright as the frame's EXIF orientation says (:mod:`fusionstream.stream.exif`). A frame's bytes
end at its end-of-image marker: what follows it (an MJPEG stream's CRLF or part boundary, a
buffer's padding) is not the image's, and is dropped.
"""

from __future__ import annotations

import re
import threading

import cv2
import numpy as np

from fusionstream.stream.errors import BadRecord
from fusionstream.stream.exif import exif_orientation, oriented, oriented_shape

try:
    # libjpeg-turbo straight to RGB without OpenCV's per-call work: a 96x96 frame in 39 us instead of 71,
    # a 1280x720 one in 2.9 ms instead of 5.4, the same pixels (docs/performance.md). Optional, so that an
    # environment with only the pure-Python dependencies (scripts/gpu_check.sh's) still decodes, with OpenCV.
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency; only a bare environment lacks it
    simplejpeg = None

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
#: The largest frame accepted (8K UHD). The size is the header's claim: a few hundred bytes can
#: declare 65535 x 65535, and libjpeg (or the black stand-in of a frame that fails) would allocate it.
MAX_PIXELS = 7680 * 4320
#: The largest progressive frame accepted (Full HD). Each progressive frame is decoded at intake (its later
#: scans are marker segments: module doc), and decoding one costs ten times a baseline one's work whatever
#: the scale (1920x1080: 46 ms against 4; 7680x4320: 0.8 s): a 195 kB progressive 8K frame at 30 fps held
#: its partition's streams back for minutes. Cameras write baseline frames.
MAX_PROGRESSIVE_PIXELS = 1920 * 1080
#: Start-of-frame markers of progressive JPEGs (Huffman and arithmetic, sequential and differential).
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS = 0xDA
_DQT = 0xDB
_DHT = 0xC4
_APP1 = 0xE1
#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
#: Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _bad(detail: str) -> BadRecord:
    return BadRecord("bad-jpeg", detail)


def check_jpeg(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from the frame header of a well-formed JPEG; ``BadRecord("bad-jpeg")`` if not.

    Checks the marker segments up to the first scan the way libjpeg reads them: lengths,
    quantisation and Huffman tables, the frame header's size, precision, components and
    sampling factors, and that the scan only names components and tables that exist.
    The entropy-coded data after it is not read (libjpeg survives damage there). The size is the
    stored image's, before its EXIF orientation turns it.
    """
    return _inspected(data)[0]


def _inspected(data: bytes) -> tuple[tuple[int, int], bytes, int, int]:
    """A checked JPEG's stored ``(height, width)``, its header block, its EXIF orientation and the end of its
    bytes (after its end-of-image marker)."""
    if not data.startswith(SOI):
        raise _bad("payload does not start with a JPEG SOI marker")
    size, header, orientation = _checked_header(data)
    return size, header, orientation, _image_end(data, len(header))


def _image_end(data: bytes, scan_start: int) -> int:
    """Where the image ends: after the end-of-image marker that follows its first scan header. libjpeg
    "recovers" from a truncated stream by returning a grey-padded image, so a missing end-of-image marker is
    the reliable sign of truncation (in entropy-coded data a 0xFF byte is always followed by 0x00 or a
    restart marker, so the marker's two bytes cannot occur there by chance)."""
    if data.endswith(EOI):
        return len(data)
    end = data.rfind(EOI, scan_start)
    if end < 0:
        raise _bad("JPEG has no end-of-image marker (truncated)")
    return end + 2


def _checked_header(data: bytes) -> tuple[tuple[int, int], bytes, int]:
    """:func:`check_jpeg`'s size, the header block (SOI up to the end of the first scan header), and the
    EXIF orientation."""
    # A camera's encoder writes the same headers (tables, size) into every frame: a frame that
    # starts with headers already checked needs no second walk.
    for header, size, orientation in _known_headers:
        if data.startswith(header) and len(data) > len(header):
            return size, header, orientation
    size, end, orientation = _walk(data)
    header = data[:end]
    _remember(header, size, orientation)
    return size, header, orientation


#: Checked header blocks (SOI up to the end of the first scan header), their frame sizes and EXIF
#: orientations: a few encoders' worth, newest first. Replaced whole (never changed in place), so
#: decode threads read it without a lock.
_known_headers: tuple[tuple[bytes, tuple[int, int], int], ...] = ()
_MAX_KNOWN_HEADERS = 16
_remember_lock = threading.Lock()


def _remember(header: bytes, size: tuple[int, int], orientation: int) -> None:
    global _known_headers
    with _remember_lock:
        _known_headers = ((header, size, orientation), *_known_headers[: _MAX_KNOWN_HEADERS - 1])


#: Header blocks of frames that decoded (at eighth scale), newest first; replaced whole, like
#: ``_known_headers``. A frame starting with one of them needs no decode to be admitted (module doc).
_decoded_headers: tuple[bytes, ...] = ()

#: A marker inside a scan: 0xFF followed by anything but a stuffed zero, a restart marker or fill.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _remember_decoded(header: bytes) -> None:
    global _decoded_headers
    with _remember_lock:
        if header not in _decoded_headers:
            _decoded_headers = (header, *_decoded_headers[: _MAX_KNOWN_HEADERS - 1])


def _needs_decode_check(data: bytes, header: bytes) -> bool:
    """Whether only a decode can tell if libjpeg accepts this (checked) frame: a header block never
    decoded before, or marker segments after the first scan header (a progressive JPEG's later
    scans and tables, or damage)."""
    if header not in _decoded_headers:
        return True
    return _MARKER_IN_SCAN.search(data, len(header), len(data) - 2) is not None  # ``data`` ends at its EOI


def _walk(data: bytes) -> tuple[tuple[int, int], int, int]:
    """Check the segments up to the first scan; ``((height, width), offset after the scan header,
    EXIF orientation)``."""
    frame: _FrameHeader | None = None
    orientation = 1
    quant: set[int] = set()
    huffman: set[tuple[int, int]] = set()
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            raise _bad(f"expected a JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD8, 0xD9):
            raise _bad("JPEG has a second start-of-image, or ends before its first scan")
        if i + 4 > n:
            raise _bad("JPEG segment header cut off")
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            raise _bad(f"JPEG segment 0x{marker:02X} at byte {i} runs past the end")
        body = data[i + 4 : i + 2 + length]
        if marker == _DQT:
            quant |= _quant_tables(body)
        elif marker == _DHT:
            huffman |= _huffman_tables(body)
        elif marker in _SOF:
            if frame is not None:
                raise _bad("JPEG has two frame headers")
            frame = _frame_header(body)
            if marker in _PROGRESSIVE_SOF and frame.width * frame.height > MAX_PROGRESSIVE_PIXELS:
                raise _bad(f"progressive JPEG of {frame.width}x{frame.height}, more than {MAX_PROGRESSIVE_PIXELS:,} "
                           "pixels: decoding one costs ten baseline frames' work; send baseline JPEG, or smaller")
        elif marker == _APP1 and orientation == 1:
            orientation = exif_orientation(body)
        elif marker == _SOS:
            _check_scan(body, frame, quant, huffman)
            assert frame is not None
            return (frame.height, frame.width), i + 2 + length, orientation
        i += 2 + length
    raise _bad("JPEG has no scan")


class _FrameHeader:
    __slots__ = ("components", "height", "width")

    def __init__(self, height: int, width: int, components: dict[int, int]) -> None:
        self.height, self.width, self.components = height, width, components


def _quant_tables(body: bytes) -> set[int]:
    ids, j = set(), 0
    while j < len(body):
        precision, table = body[j] >> 4, body[j] & 0x0F
        if precision > 1 or table > 3:
            raise _bad("bogus JPEG quantisation table")
        j += 1 + 64 * (precision + 1)
        ids.add(table)
    if j != len(body) or not ids:
        raise _bad("JPEG quantisation table segment has the wrong length")
    return ids


def _huffman_tables(body: bytes) -> set[tuple[int, int]]:
    ids, j = set(), 0
    while j < len(body):
        if j + 17 > len(body):
            raise _bad("JPEG Huffman table cut off")
        kind, table = body[j] >> 4, body[j] & 0x0F
        counts = body[j + 1 : j + 17]
        if kind > 1 or table > 3 or not 0 < sum(counts) <= 256:
            raise _bad("bogus JPEG Huffman table")
        code = 0  # canonical codes: too many codes of some length overflow the code space
        for count in counts:
            code = (code + count) << 1
            if code > 1 << 17:
                raise _bad("bogus JPEG Huffman table")
        j += 17 + sum(counts)
        ids.add((kind, table))
    if j != len(body):
        raise _bad("JPEG Huffman table segment has the wrong length")
    return ids


def _frame_header(body: bytes) -> _FrameHeader:
    if len(body) < 6:
        raise _bad("JPEG frame header too short")
    precision = body[0]
    height = int.from_bytes(body[1:3], "big")
    width = int.from_bytes(body[3:5], "big")
    count = body[5]
    if precision not in (8, 12) or height == 0 or width == 0 or count not in (1, 3, 4):
        raise _bad(f"JPEG frame header says {width}x{height}, {precision}-bit, {count} components")
    if width * height > MAX_PIXELS:
        raise _bad(f"JPEG frame header says {width}x{height}, more than {MAX_PIXELS:,} pixels")
    if len(body) != 6 + 3 * count:
        raise _bad("JPEG frame header has the wrong length")
    components = {}
    for k in range(count):
        cid, sampling, table = body[6 + 3 * k : 9 + 3 * k]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 0x0F <= 4) or table > 3 or cid in components:
            raise _bad("bogus JPEG component in the frame header")
        components[cid] = table
    return _FrameHeader(height, width, components)


def _check_scan(
    body: bytes, frame: _FrameHeader | None, quant: set[int], huffman: set[tuple[int, int]]
) -> None:
    if frame is None:
        raise _bad("JPEG scan before any frame header")
    missing = set(frame.components.values()) - quant
    if missing:
        raise _bad(f"JPEG quantisation table(s) {sorted(missing)} not defined")
    count = body[0] if body else 0
    if not 1 <= count <= len(frame.components) or len(body) != 4 + 2 * count:
        raise _bad("bogus JPEG scan header")
    first, last = body[-3], body[-2]  # spectral selection: a progressive DC scan uses no AC table
    for k in range(count):
        cid, tables = body[1 + 2 * k], body[2 + 2 * k]
        if cid not in frame.components:
            raise _bad("JPEG scan names a component the frame does not have")
        # No DHT at all is legal (motion-JPEG: libjpeg supplies the standard tables).
        needed = {(0, tables >> 4)} if first == 0 else set()
        if last > 0:
            needed.add((1, tables & 0x0F))
        if huffman and not needed <= huffman:
            raise _bad("JPEG scan uses a Huffman table that is not defined")


#: OpenCV >= 4.10 can decode straight to RGB, which saves a colour-conversion pass per frame.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


#: libjpeg decodes straight to 1/2, 1/4 or 1/8 of the size (scaling in its inverse DCT), for a
#: fraction of a full decode's work: OpenCV's reduced-size flags (the grey ones, as size bits).
_REDUCED_BITS = {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 2: cv2.IMREAD_REDUCED_GRAYSCALE_2}
_REDUCED_BGR = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def reduction(height: int, width: int, min_side: int) -> int:
    """The largest factor (8, 4, 2, else 1) by which libjpeg can shrink a ``height`` x ``width`` frame
    while decoding and keep both sides at least ``min_side`` (0: full size)."""
    if min_side > 0:
        for factor in _REDUCED_BITS:  # largest first
            if -(-height // factor) >= min_side and -(-width // factor) >= min_side:
                return factor
    return 1


def decode_jpeg(data: bytes, min_side: int = 0) -> np.ndarray:
    """HxWx3 uint8 RGB, upright; ``BadRecord("bad-jpeg")`` when :func:`check_jpeg` refuses it or OpenCV cannot
    decode it.

    With ``min_side`` (a model's input side, say), decoded at the smallest of 1/2, 1/4, 1/8 of
    the size whose sides are still at least that: a 1280x720 camera frame for a 96x96 model
    comes out 320x180 for about a quarter of a full decode, and its resize costs less too.
    """
    shape, _, orientation, end = _inspected(data)
    image = data[:end] if end < len(data) else data
    if min_side <= 0:
        return oriented(decode_jpeg_reduced(image, 1), orientation)
    return oriented(decode_jpeg_reduced(image, reduction(*shape, min_side), shape), orientation)


def decode_jpeg_reduced(data: bytes, factor: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`decode_jpeg` at 1/``factor`` of the size (1, 2, 4 or 8), for a caller that knows the frame's size
    (``shape``, height and width: without it a reduced decode is OpenCV's).

    simplejpeg decodes when it can (a frame with damaged entropy-coded data too, as libjpeg decodes it, with
    its missing part grey: :func:`decode_jpeg_noting_damage` says so); anything else (a form it does not
    convert) is left to OpenCV, which decides as it always did what is refused (docs/wire-format.md). The
    pixels are as stored: the EXIF orientation is the caller's to apply (OpenCV is told to leave it, as
    simplejpeg does).
    """
    return decode_jpeg_noting_damage(data, factor, shape)[0]


def decode_jpeg_noting_damage(data: bytes, factor: int,
                              shape: tuple[int, int] | None = None) -> tuple[np.ndarray, str | None]:
    """:func:`decode_jpeg_reduced`, and libjpeg's warning when the frame is damaged (None when it is sound).
    libjpeg's warnings are taken from simplejpeg, which keeps them, not from OpenCV, which prints them on
    stderr, once per frame, naming no camera."""
    if simplejpeg is not None and (factor == 1 or shape is not None):
        low = (-(-shape[0] // factor), -(-shape[1] // factor)) if shape is not None and factor > 1 else (0, 0)
        damage = None
        try:
            rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=low[0], min_width=low[1])
        except ValueError as exc:
            damage = str(exc) or "a recoverable error"
            try:  # libjpeg's own recovery: what OpenCV would give, without its line on stderr
                rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=low[0], min_width=low[1], strict=False)
            except ValueError:
                rgb, damage = None, None
        # libjpeg-turbo scales by any eighth; the size OpenCV's factor gives is the one wanted (identical pixels).
        if rgb is not None and (factor == 1 or rgb.shape[:2] == low):
            return rgb, damage
    buffer = np.frombuffer(data, dtype=np.uint8)
    if _IMREAD_RGB is not None:
        rgb = cv2.imdecode(buffer, _IMREAD_RGB | _REDUCED_BITS.get(factor, 0) | cv2.IMREAD_IGNORE_ORIENTATION)
        if rgb is None or rgb.size == 0:
            raise _bad("OpenCV could not decode the JPEG")
        return rgb, None
    bgr = cv2.imdecode(buffer, _REDUCED_BGR.get(factor, cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.size == 0:
        raise _bad("OpenCV could not decode the JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None


class LazyJpeg:
    """A checked JPEG whose pixels are decoded on first :meth:`decode` (then kept).

    Construction checks the headers (:func:`check_jpeg`) and, unless a frame with the same
    header block decoded before (module doc), decodes at an eighth of the size to check the
    rest, raising ``BadRecord("bad-jpeg")``; the pixels are decoded when a window samples the
    frame. Should that still fail (a decoder that accepts the small decode and not the larger
    one), the frame decodes black and :attr:`failed` says so: by then the record is in windows
    already, so the caller counts it rather than dead-lettering it.
    """

    __slots__ = ("_data", "_lock", "_pixels", "_stored", "damage", "failed", "orientation", "shape")

    def __init__(self, data: bytes) -> None:
        (height, width), header, orientation, end = _inspected(data)
        if end < len(data):
            data = data[:end]
        # Sound marker segments can still be refused by libjpeg, which only decoding finds. An
        # eighth-scale grey decode does it for less than half the cost of a full decode, so a
        # broken JPEG is refused here, at intake, where it can still go to the dead-letter topic,
        # and not after it joined windows. Frames like one that decoded before skip it (module doc).
        if _needs_decode_check(data, header):
            flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION
            if cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) is None:
                raise _bad("OpenCV could not decode the JPEG")
            _remember_decoded(header)
        self._data = data
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()
        self._stored = (height, width)
        self.orientation = orientation
        self.shape = (*oriented_shape(height, width, orientation), 3)  # upright, as decoded
        self.failed = False
        #: libjpeg's warning when the decoded frame was damaged (its missing part grey), else None.
        self.damage: str | None = None

    def decode(self, min_side: int = 0) -> np.ndarray:
        """The pixels, at full size or (``min_side``, see :func:`decode_jpeg`) as small as that allows."""
        pixels = self._pixels
        if pixels is None or not self._serves(pixels, min_side):
            with self._lock:  # two decode threads may reach a frame two windows share
                pixels = self._pixels
                if pixels is None or not self._serves(pixels, min_side):
                    height, width = self._stored
                    factor = reduction(height, width, min_side)  # the header was read at construction
                    try:
                        stored, self.damage = decode_jpeg_noting_damage(self._data, factor, (height, width))
                        pixels = oriented(stored, self.orientation)
                    except BadRecord:
                        small = oriented_shape(-(-height // factor), -(-width // factor), self.orientation)
                        pixels = np.zeros((*small, 3), np.uint8)
                        self.failed = True
                    self._pixels = pixels
        return pixels

    def _serves(self, pixels: np.ndarray, min_side: int) -> bool:
        """Whether pixels decoded before do for this request: full size does for any."""
        height, width = pixels.shape[:2]
        return (height, width) == self.shape[:2] or (min_side > 0 and min(height, width) >= min_side)

    @property
    def data(self) -> bytes:
        """The JPEG's bytes, as received up to its end-of-image marker."""
        return self._data

    @property
    def decoded(self) -> bool:
        return self._pixels is not None
