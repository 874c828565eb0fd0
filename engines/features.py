"""Window contents → format-1 model input arrays (numpy only).

:class:`Row` / :class:`Batch` are fusionstream's own architecture's inputs, in the positional layout
:class:`~fusionstream.engines.model.MultimodalModel` trains on and ``export`` and ``quantize`` feed it;
serving goes through a runtime (``open_runtime``), by modality name, with the preprocessing its
manifest declares (``engines/preprocess.py``, which reuses :func:`text_to_ids` for hashed n-grams).
Nothing here imports torch or a runtime, and nothing depends on ``stream``: inputs are plain arrays.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from fusionstream.engines.errors import InputError
from fusionstream.engines.spec import MODALITIES, ModelSpec

_WORD = re.compile(r"\w+")
#: Characters of a transcript read per token (or n-gram id) the model takes: a token covers a few characters,
#: so the cut changes nothing a real caption holds, and a megabyte's caption no longer costs seconds of
#: tokenizing (the library reads all of it before it truncates) while every stream waits on the engine.
TEXT_CHARS_PER_TOKEN = 32


def _pick(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (repeats when ``n < k``)."""
    return np.rint(np.linspace(0, n - 1, k)).astype(np.intp) if k > 1 else np.array([(n - 1) // 2])


def frames_to_array(frames: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """RGB frames (``H×W×3`` uint8) → ``float32 [K, 3, S, S]`` in [0, 1].

    ``K`` is ``spec.frames_per_window`` and ``S`` is ``spec.image_size``. A window normally
    brings exactly K frames; any other non-zero count is resampled to K evenly spaced frames
    (repeating when fewer). With no video at all, pass zeros and mask the modality instead.
    """
    import cv2  # lazy: keeps `import engines` fast for callers that never touch pixels

    if len(frames) == 0:
        raise InputError("no frames: pass a zero array and mask 0 for a window without video")
    k, s = spec.frames_per_window, spec.image_size
    out = np.empty((k, 3, s, s), dtype=np.float32)
    for slot, index in enumerate(_pick(len(frames), k)):
        _frame_into(frames[index], s, out[slot], cv2, index)
    return out


def frame_to_array(frame: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """One RGB frame (``H×W×3`` uint8) → ``float32 [3, S, S]`` in [0, 1], as :func:`frames_to_array` does
    for each of a window's frames (the input of the per-frame image graph)."""
    import cv2

    s = spec.image_size
    out = np.empty((3, s, s), dtype=np.float32)
    _frame_into(frame, s, out, cv2, 0)
    return out


def _frame_into(frame: np.ndarray, s: int, out: np.ndarray, cv2: Any, index: int) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = (frame.dtype, frame.shape) if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"frame {index} must be an H×W×3 uint8 RGB array, got {got}")
    if frame.shape[:2] != (s, s):
        # INTER_AREA averages when shrinking (no aliasing); it degrades to bilinear when growing.
        frame = cv2.resize(frame, (s, s), interpolation=cv2.INTER_AREA)
    np.multiply(frame.transpose(2, 0, 1), np.float32(1 / 255), out=out, casting="unsafe")


@lru_cache(maxsize=65536)
def _gram_id(gram: str, buckets: int) -> int:
    # crc32, not hash(): Python salts str hashes per process, and ids must match the trained model.
    return zlib.crc32(gram.encode("utf-8")) % (buckets - 1) + 1


def text_to_ids(text: str, spec: ModelSpec) -> np.ndarray:
    """Transcript text → ``int64 [text_max_len]`` hashed character n-gram ids (0 = padding).

    Lower-cased words (``\\w+`` runs) are padded with a space on each side (``" seven "``) and
    cut into the n-grams of ``spec.text_ngrams`` (``" s"``, ``"se"``, ..., ``" se"``, ``"sev"``, ...);
    each n-gram is hashed with CRC-32 into ``1 .. text_buckets - 1``. Ids are in word order,
    truncated or zero-padded to ``spec.text_max_len``.
    """
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    limit, buckets = spec.text_max_len, spec.text_buckets
    ids: list[int] = []
    for word in _WORD.findall(text[: limit * TEXT_CHARS_PER_TOKEN].lower()):
        padded = f" {word} "
        for n in spec.text_ngrams:
            for i in range(len(padded) - n + 1):
                ids.append(_gram_id(padded[i : i + n], buckets))
        if len(ids) >= limit:
            break
    out = np.zeros(limit, dtype=np.int64)
    ids = ids[:limit]
    out[: len(ids)] = ids
    return out


class Row(NamedTuple):
    """One window's model inputs (no batch axis); see :class:`Batch` for shapes."""

    video: np.ndarray
    audio: np.ndarray
    text: np.ndarray
    mask: np.ndarray


def make_row(
    spec: ModelSpec,
    *,
    frames: Sequence[np.ndarray] | None = None,
    audio: np.ndarray | None = None,
    text: str | None = None,
    mask: Sequence[bool] | None = None,
) -> Row:
    """Build a :class:`Row` from a window's raw contents; ``None`` means absent (zeros, mask 0).

    ``audio`` is the window's float waveform in [-1, 1], exactly ``spec.samples_per_window``
    long. ``mask`` (video, audio, text) overrides presence, e.g. to mask audio whose coverage
    is too low; a modality it marks present must not be ``None``.
    """
    given = (frames is not None, audio is not None, text is not None)
    present = given if mask is None else tuple(bool(m) for m in mask)
    if len(present) != len(MODALITIES):
        raise InputError(f"mask must have {len(MODALITIES)} entries (video, audio, text), got {len(present)}")
    for name, is_present, has in zip(MODALITIES, present, given, strict=True):
        if is_present and not has:
            raise InputError(f"mask marks {name} present but no {name} was given")
    shapes = spec.input_shapes
    if present[0] and frames is not None:
        video = frames_to_array(frames, spec)
    else:
        video = np.zeros(shapes["video"], np.float32)
    if present[1] and audio is not None:
        wave = np.asarray(audio, dtype=np.float32)
        if wave.shape != shapes["audio"]:
            raise InputError(f"audio must have shape {shapes['audio']}, got {wave.shape}")
    else:
        wave = np.zeros(shapes["audio"], np.float32)
    ids = text_to_ids(text, spec) if present[2] and text is not None else np.zeros(shapes["text"], np.int64)
    return Row(video=video, audio=wave, text=ids, mask=np.asarray(present, dtype=np.float32))


_DTYPES = {"video": np.float32, "audio": np.float32, "text": np.int64, "mask": np.float32}
_NDIMS = {"video": 5, "audio": 2, "text": 2, "mask": 2}


@dataclass(frozen=True, slots=True)
class Batch:
    """Model inputs for B windows, in the layout every backend takes.

    - ``video``: float32 ``[B, K, 3, S, S]``, pixels in [0, 1]
    - ``audio``: float32 ``[B, samples_per_window]``, waveform in [-1, 1]
    - ``text``: int64 ``[B, text_max_len]``, hashed n-gram ids, 0 = padding
    - ``mask``: float32 ``[B, 3]``, columns video, audio, text; 1 = present, 0 = absent

    Construction checks what can be checked without a model (ranks, dtypes, one batch size,
    a 0/1 mask); :meth:`check` adds the model's shapes. Both raise :class:`InputError`.
    Values in an absent modality's rows are ignored by every backend.
    """

    video: np.ndarray
    audio: np.ndarray
    text: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        sizes = set()
        for name in (*MODALITIES, "mask"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray):
                raise InputError(f"batch {name} must be a numpy array, got {type(array).__name__}")
            if array.dtype != _DTYPES[name] or array.ndim != _NDIMS[name]:
                raise InputError(
                    f"batch {name} must be {np.dtype(_DTYPES[name]).name} with {_NDIMS[name]} dimensions, "
                    f"got {array.dtype.name} {array.shape}"
                )
            sizes.add(array.shape[0])
        if len(sizes) != 1:
            raise InputError(f"batch fields disagree on the batch size: {sorted(sizes)}")
        if self.mask.shape[0] == 0:
            raise InputError("empty batch")
        if self.mask.shape[1] != len(MODALITIES):
            raise InputError(f"batch mask must be [B, {len(MODALITIES)}] (video, audio, text), got {self.mask.shape}")
        if not np.isin(self.mask, (0.0, 1.0)).all():
            raise InputError("batch mask must hold only 0 (absent) and 1 (present)")

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @classmethod
    def stack(cls, rows: Sequence[Row | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> Batch:
        """Stack per-window rows (``Row`` or ``(video, audio, text, mask)`` tuples) into a batch."""
        if len(rows) == 0:
            raise InputError("cannot stack an empty list of rows")
        try:
            columns = [np.stack(column) for column in zip(*rows, strict=True)]
        except ValueError as exc:  # ragged rows or rows of different lengths
            raise InputError(f"rows do not stack: {exc}") from None
        if len(columns) != 4:
            raise InputError(f"a row has 4 arrays (video, audio, text, mask), got {len(columns)}")
        return cls(*columns)

    def check(self, spec: ModelSpec) -> None:
        """Raise :class:`InputError` unless this batch fits ``spec`` (shapes, text id range)."""
        for name, shape in spec.input_shapes.items():
            got = getattr(self, name).shape[1:]
            if got != shape:
                raise InputError(f"batch {name} rows must have shape {shape} for this model, got {got}")
        if self.text.size and (self.text.min() < 0 or self.text.max() >= spec.text_buckets):
            low, high = int(self.text.min()), int(self.text.max())
            raise InputError(f"text ids must be in [0, {spec.text_buckets}), got [{low}, {high}]")


def random_batch(
    spec: ModelSpec, size: int, rng: np.random.Generator | int | None = None, *, p_present: float = 0.7
) -> Batch:
    """A batch of random but well-formed inputs: for parity checks, tests and benchmarks.

    Each modality of each row is present with probability ``p_present``; text rows hold a
    random number of ids followed by padding. Absent rows hold random values too, which every
    consumer of a batch must ignore.
    """
    rng = np.random.default_rng(rng)
    shapes = spec.input_shapes
    video = rng.random((size, *shapes["video"]), dtype=np.float32)
    audio = (rng.random((size, *shapes["audio"]), dtype=np.float32) * 2 - 1) * rng.uniform(0.01, 1.0, (size, 1))
    text = rng.integers(1, spec.text_buckets, (size, spec.text_max_len), dtype=np.int64)
    lengths = rng.integers(0, spec.text_max_len + 1, size)
    text[np.arange(spec.text_max_len) >= lengths[:, None]] = 0
    mask = (rng.random((size, len(MODALITIES))) < p_present).astype(np.float32)
    return Batch(video=video, audio=audio.astype(np.float32), text=text, mask=mask)
