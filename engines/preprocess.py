"""A format-2 model's preprocessing (docs/model-format.md): raw window contents → encoder input arrays.

Per modality, what ``model.json`` declares under ``modalities.<name>.preprocess``:

- **video**: ``H×W×3`` uint8 RGB frames → resized (``stretch``, ``center_crop`` or ``letterbox``),
  channels in the declared colour order, ``(x * scale - mean) / std``, laid out ``nchw`` or ``nhwc``;
  one frame at a time for a per-frame graph, ``frames`` evenly sampled ones for a whole-window graph;
- **audio**: the window's float32 samples at the model's rate, optionally normalised to zero mean
  and unit variance per window;
- **text**: a Hugging Face ``tokenizer.json`` (truncated to ``max_tokens``, padded to the batch's
  longest) giving ``input_ids`` / ``attention_mask`` / ``token_type_ids``, or format 1's hashed
  character n-grams.

Every array is cast to the dtype its encoder input declares. numpy, OpenCV and ``tokenizers`` only:
nothing here imports ``stream`` or a runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from fusionstream.engines.errors import InputError, ModelDirError
from fusionstream.engines.features import TEXT_CHARS_PER_TOKEN, _pick, text_to_ids
from fusionstream.engines.manifest import (
    AudioPreprocess,
    Manifest,
    ModalitySpec,
    TextPreprocess,
    VideoPreprocess,
)

#: Added to the variance before the square root when normalising audio (what wav2vec2's feature extractor adds).
AUDIO_EPS = 1e-7


def tokenizer_problem(path: Path, exc: Exception) -> str:
    """What is wrong with a tokenizer file the tokenizers library refused (its own message reads like a JSON
    syntax error even for valid JSON that is not a tokenizer)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"is not a Hugging Face tokenizer.json (not even JSON): {exc}"
    if not isinstance(doc, dict) or "model" not in doc:
        return ("is JSON but not a Hugging Face tokenizer.json (it has no \"model\" section): write one with the "
                "tokenizers library's Tokenizer.save or a transformers tokenizer's save_pretrained")
    return f"is JSON with a \"model\" section, but the tokenizers library cannot read it as a tokenizer: {exc}"


def _resize(frame: np.ndarray, height: int, width: int, cv2: Any) -> np.ndarray:
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    # INTER_AREA averages when shrinking (no aliasing); bilinear when growing.
    interpolation = cv2.INTER_AREA if h >= height and w >= width else cv2.INTER_LINEAR
    return cast(np.ndarray, cv2.resize(frame, (width, height), interpolation=interpolation))


def resize_frame(frame: np.ndarray, pre: VideoPreprocess) -> np.ndarray:
    """One ``H×W×3`` uint8 frame at the encoder's ``height × width``, per ``pre.resize``."""
    import cv2  # lazy: importing engines stays light for callers that never touch pixels

    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = (frame.dtype, frame.shape) if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"a frame must be an H×W×3 uint8 RGB array, got {got}")
    height, width = pre.height, pre.width
    h, w = frame.shape[:2]
    if pre.resize == "stretch" or (h, w) == (height, width):
        return _resize(frame, height, width, cv2)
    if pre.resize == "center_crop":
        ratio = max(height / h, width / w)  # the short side (relative to the target) fits exactly
        scaled = _resize(frame, max(height, round(h * ratio)), max(width, round(w * ratio)), cv2)
        top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
        return scaled[top : top + height, left : left + width]
    # letterbox: fit inside, centred, zero (black) padding around
    ratio = min(height / h, width / w)
    inner_h, inner_w = min(height, max(1, round(h * ratio))), min(width, max(1, round(w * ratio)))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    out[top : top + inner_h, left : left + inner_w] = _resize(frame, inner_h, inner_w, cv2)
    return out


class VideoPreparer:
    """Frames → the video encoder's ``pixels`` input."""

    def __init__(self, pre: VideoPreprocess, dtype: str) -> None:
        self.pre = pre
        self.dtype = np.dtype(dtype)
        std = np.asarray(pre.std, np.float32)
        # (x * scale - mean) / std as one multiply-add per pixel.
        self._gain = (np.float32(pre.scale) / std).astype(np.float32)
        self._offset = (-np.asarray(pre.mean, np.float32) / std).astype(np.float32)
        if pre.colour == "bgr":
            self._gain, self._offset = self._gain[::-1].copy(), self._offset[::-1].copy()

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        p = self.pre
        return (3, p.height, p.width) if p.layout == "nchw" else (p.height, p.width, 3)

    def frame(self, frame: np.ndarray) -> np.ndarray:
        """One frame → ``[C, H, W]`` (``nchw``) or ``[H, W, C]`` (``nhwc``) in the declared dtype."""
        pixels = resize_frame(frame, self.pre)
        if self.pre.colour == "bgr":
            pixels = pixels[:, :, ::-1]
        values = pixels.astype(np.float32) * self._gain + self._offset
        if self.pre.layout == "nchw":
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values, dtype=self.dtype)

    def frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """A batch of single frames → ``[N, ...one frame]`` (a per-frame graph's input)."""
        if not frames:
            return np.zeros((0, *self.frame_shape), self.dtype)
        return np.stack([self.frame(f) for f in frames])

    def window(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """A window's frames → ``[frames, ...one frame]``, ``frames`` evenly sampled (repeated when fewer)."""
        if len(frames) == 0:
            raise InputError("no frames: a window without video is masked, not encoded")
        return np.stack([self.frame(frames[i]) for i in _pick(len(frames), self.pre.frames)])


class AudioPreparer:
    """Windows' samples → the audio encoder's ``samples`` input."""

    def __init__(self, pre: AudioPreprocess, dtype: str) -> None:
        self.pre = pre
        self.dtype = np.dtype(dtype)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """``float [B, samples]`` at the model's rate → the encoder's input (normalised if declared)."""
        wave = np.asarray(samples, np.float32)
        if wave.ndim != 2 or wave.shape[1] != self.pre.samples:
            raise InputError(f"audio must be [B, {self.pre.samples}] samples at {self.pre.sample_rate} Hz, "
                             f"got {wave.shape}")
        if self.pre.normalize:
            mean = wave.mean(axis=1, keepdims=True)
            var = wave.var(axis=1, keepdims=True)
            wave = (wave - mean) / np.sqrt(var + AUDIO_EPS)
        return np.ascontiguousarray(wave, dtype=self.dtype)


class _Hashed(NamedTuple):
    """What :func:`~fusionstream.engines.features.text_to_ids` reads of a format-1 spec."""

    text_max_len: int
    text_buckets: int
    text_ngrams: tuple[int, ...]


class TextPreparer:
    """Transcripts → the text encoder's inputs (a tokenizer's, or hashed n-gram ids)."""

    def __init__(self, modality: ModalitySpec, manifest: Manifest) -> None:
        pre = modality.preprocess
        assert isinstance(pre, TextPreprocess)
        self.pre = pre
        self.inputs = modality.encoder.inputs
        self._hashed = None
        self._tokenizer: Any = None
        if pre.hashed_ngrams is not None:
            h = pre.hashed_ngrams
            self._hashed = _Hashed(h.max_len, h.buckets, h.ngrams)
            return
        assert pre.tokenizer is not None
        from tokenizers import Tokenizer

        field = f"{manifest.path}: modalities.{modality.name}.preprocess.tokenizer"
        path = manifest.directory / pre.tokenizer
        if not path.is_file():
            raise ModelDirError(f"{field}: {path} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception on a bad file
            raise ModelDirError(f"{field}: {pre.tokenizer} {tokenizer_problem(path, exc)}") from None
        padding = tokenizer.padding
        self._pad_id = int(padding["pad_id"]) if padding else 0
        tokenizer.no_padding()  # padded here, to the batch's longest
        tokenizer.enable_truncation(max_length=pre.max_tokens)
        self._tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Graph input name → array ``[B, tokens]`` for these texts."""
        if self._hashed is not None:
            ids = np.stack([text_to_ids(t, self._hashed) for t in texts])  # type: ignore[arg-type]
            spec = self.inputs["ids"]
            return {spec.name: ids.astype(spec.dtype, copy=False)}
        chars = self.pre.max_tokens * TEXT_CHARS_PER_TOKEN
        encodings = self._tokenizer.encode_batch([text[:chars] for text in texts])
        length = max(1, min(self.pre.max_tokens, max((len(e.ids) for e in encodings), default=1)))
        fields = {
            "input_ids": np.full((len(texts), length), self._pad_id, np.int64),
            "attention_mask": np.zeros((len(texts), length), np.int64),
            "token_type_ids": np.zeros((len(texts), length), np.int64),
        }
        for row, encoding in enumerate(encodings):
            n = min(len(encoding.ids), length)
            fields["input_ids"][row, :n] = encoding.ids[:n]
            fields["attention_mask"][row, :n] = 1
            fields["token_type_ids"][row, :n] = encoding.type_ids[:n]
        return {spec.name: fields[role].astype(spec.dtype, copy=False) for role, spec in self.inputs.items()}


class Preprocessor:
    """Every declared modality's preparer for one manifest (the tokenizer is loaded here)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.video: VideoPreparer | None = None
        self.audio: AudioPreparer | None = None
        self.text: TextPreparer | None = None
        for name, modality in manifest.modalities.items():
            pre = modality.preprocess
            if isinstance(pre, VideoPreprocess):
                self.video = VideoPreparer(pre, modality.encoder.inputs["pixels"].dtype)
            elif isinstance(pre, AudioPreprocess):
                self.audio = AudioPreparer(pre, modality.encoder.inputs["samples"].dtype)
            else:
                assert name == "text"
                self.text = TextPreparer(modality, manifest)

    def video_feed(self, arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Prepared pixels (one frame or one window per row) as the video encoder's feed."""
        return {self.manifest.modalities["video"].encoder.inputs["pixels"].name: arrays}

    def video_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Single frames → ``[N, ...one frame]`` prepared for a per-frame video encoder."""
        assert self.video is not None
        return self.video.frames(frames)

    def audio_feed(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        assert self.audio is not None
        return {self.manifest.modalities["audio"].encoder.inputs["samples"].name: self.audio(samples)}

    def text_feed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        assert self.text is not None
        return self.text(texts)


__all__ = ["AudioPreparer", "Preprocessor", "TextPreparer", "VideoPreparer", "resize_frame"]
