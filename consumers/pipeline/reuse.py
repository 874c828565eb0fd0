"""Embeddings for a batch of windows, reusing the work overlapping windows share.

One embedder for every model directory (format 1, like the shipped model, and format 2,
docs/model-format.md) and every backend: it talks to the runtime by modality name only
(:class:`EncoderRuntime`), embeds only the modalities the model declares, each on the rows
where it is present (zeros elsewhere), so a modality absent from the whole batch costs nothing.

With hop < window every frame and every caption belongs to several windows (two, at the
default 1 s window and 0.5 s hop). The aligner samples frames on a grid that overlapping
windows share, so the same frame comes back; this module embeds each frame once, keyed by
``(stream, frame time)``, and each distinct transcript of a stream once, keyed by
``(stream, text)``. A window's video embedding is then the mean of its K frame embeddings:
exactly what a whole-window video graph of this kind computes, since it also averages per-frame
embeddings. Frames are reused when the model's video encoder embeds single frames
(``per_frame`` in the manifest; format 1's ``frame.onnx``); a video encoder that reads whole
windows is run on each window.

Audio cannot be shared between windows: its encoder reads the whole window at once. But a
window's data is usually complete well before it closes (the watermark waits out the allowed
lateness, 200 ms by default), so :meth:`Embedder.warm` encodes such windows while they
wait: frames and captions into the caches above, and the window's audio embedding kept with
its samples. When the window closes, the embedding is used only if the samples are the same
(a late chunk changes them, and the window is encoded again). Frames go further: each is known as
soon as the video passes the instant a window samples it at (``fusionstream.stream.frames_ahead``),
and :meth:`Embedder.warm_frames` embeds it then, long before its windows' audio is complete.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from fusionstream.engines.preprocess import Preprocessor
from fusionstream.engines.spec import MODALITIES
from fusionstream.stream.windows import Window

K = TypeVar("K", bound=Hashable)


class EmbeddingCache(Generic[K]):
    """A bounded least-recently-used map from a key to one embedding row."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._rows: OrderedDict[K, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: K) -> np.ndarray | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: K, row: np.ndarray) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)


@dataclass(frozen=True, slots=True)
class ReuseStats:
    """Encoder work needed (one frame per sampled slot, one transcript per window) and actually done."""

    frames_needed: int
    frames_encoded: int
    texts_needed: int
    texts_encoded: int

    @property
    def frames_saved(self) -> float:
        """Fraction of frame encodings the caches saved."""
        return 1 - self.frames_encoded / self.frames_needed if self.frames_needed else 0.0


class EncoderRuntime(Protocol):
    """What the embedder needs of a runtime (``fusionstream.engines.backends.open_runtime``, any backend)."""

    #: The declared modalities, in ``MODALITIES`` order.
    modalities: tuple[str, ...]
    sizes: dict[str, int]
    embeds_frames: bool

    @property
    def preprocess(self) -> Preprocessor | None: ...

    def encode(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def encode_frames(self, frames: np.ndarray) -> np.ndarray: ...


def lookup(
    cache: EmbeddingCache[Any], sources: dict[Any, Any], encode: Callable[[list[Any]], np.ndarray]
) -> tuple[dict[Any, np.ndarray], int]:
    """Rows for every key of ``sources`` (cached ones, the rest encoded in one call), and how many were encoded."""
    rows: dict[Any, np.ndarray] = {}
    missing: dict[Any, Any] = {}
    for key, source in sources.items():
        row = cache.get(key)
        if row is None:
            missing[key] = source
        else:
            rows[key] = row
    if missing:
        for key, row in zip(missing, encode(list(missing.values())), strict=True):
            cache.put(key, row)
            rows[key] = row
    return rows, len(missing)


class Embedder:
    """Windows → ``({modality: float32 [B, size]}, mask float32 [B, declared modalities])``.

    ``mask`` has one column per declared modality, in ``MODALITIES`` order (the fusion head's
    mask). With ``reuse`` (the default) frames and transcripts are cached as the module doc
    says; without it every window is encoded whole. Not thread-safe: one per engine thread.
    """

    def __init__(
        self,
        runtime: EncoderRuntime,
        *,
        reuse: bool = True,
        frame_cache: int = 16384,
        text_cache: int = 4096,
        warm_windows: int = 512,
    ) -> None:
        assert runtime.preprocess is not None, "activate the runtime first"
        self.runtime = runtime
        self.prepare: Preprocessor = runtime.preprocess
        self.modalities = runtime.modalities
        #: The window mask's column of each declared modality.
        self.columns = {m: MODALITIES.index(m) for m in self.modalities}
        self.reuse_frames = reuse and runtime.embeds_frames
        self.reuse_text = reuse
        self._frames: EmbeddingCache[tuple[str, int]] = EmbeddingCache(frame_cache)
        self._texts: EmbeddingCache[tuple[str, str]] = EmbeddingCache(text_cache)
        #: Audio embeddings of warmed windows, by (stream, window start): (the samples, the row).
        #: An entry lives from a window's warm-up to its close (a few hundred ms), so few are held;
        #: the bound (64 KiB of samples each) covers windows that never close here.
        self._warm_audio: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._warm_capacity = warm_windows
        #: Windows whose warmed audio embedding was used at close.
        self.audio_warm_hits = 0
        self._needed = {"frames": 0, "texts": 0}
        self._encoded = {"frames": 0, "texts": 0}

    @property
    def stats(self) -> ReuseStats:
        return ReuseStats(
            self._needed["frames"], self._encoded["frames"], self._needed["texts"], self._encoded["texts"]
        )

    def mask(self, windows: Sequence[Window]) -> np.ndarray:
        """The fusion head's presence mask: the declared modalities' columns of the windows' masks."""
        columns = list(self.columns.values())
        return np.array([[w.mask[c] for c in columns] for w in windows], np.float32).reshape(len(windows), len(columns))

    def __call__(self, windows: Sequence[Window]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name in self.modalities:
            if name == "video":
                out[name] = self._video(windows) if self.reuse_frames else self._video_whole(windows)
            elif name == "audio":
                out[name] = self._audio(windows)
            else:
                out[name] = self._text(windows) if self.reuse_text else self._text_whole(windows)
        return out, self.mask(windows)

    def warm(self, windows: Sequence[Window]) -> None:
        """Encode what these still-open windows will need when they close (see the module doc).

        Counts the encoder work it does, not any work needed: that is counted when the
        windows close and come through ``__call__``.
        """
        if not windows:
            return
        if "video" in self.modalities and self.reuse_frames:
            self._video(windows, count_needed=False)
        if "text" in self.modalities and self.reuse_text:
            self._text(windows, count_needed=False)
        if "audio" in self.modalities:
            # Not those encoded already on these very samples: an open window whose provisional prediction
            # (revisions on) came first, while it waits for its text, is offered here too.
            present = [i for i in self._present(windows, "audio") if not self._has_warm_audio(windows[i])]
            if present:
                rows = self._encode_audio([windows[i] for i in present])
                for i, row in zip(present, rows, strict=True):
                    self._warm_audio[(windows[i].stream_id, windows[i].t_start_ns)] = (windows[i].audio, row)
                while len(self._warm_audio) > self._warm_capacity:  # windows that never closed here (moved away)
                    self._warm_audio.popitem(last=False)

    def warm_frames(self, keys: Sequence[tuple[str, int]], frames: Sequence[np.ndarray]) -> None:
        """Embed single frames, keyed by ``(stream, frame time)``, that open windows will sample (those cached
        already are skipped): a window closing then finds them, and encodes only the rest."""
        sources = dict(zip(keys, frames, strict=True))
        _, encoded = lookup(
            self._frames, sources, lambda todo: self.runtime.encode_frames(self.prepare.video_frames(todo))
        )
        self._count("frames", 0, encoded)

    # -- per modality ---------------------------------------------------------------------------

    def _present(self, windows: Sequence[Window], modality: str) -> list[int]:
        column = self.columns[modality]
        return [i for i, w in enumerate(windows) if w.mask[column]]

    def _zeros(self, n: int, modality: str) -> np.ndarray:
        return np.zeros((n, self.runtime.sizes[modality]), np.float32)

    def _video(self, windows: Sequence[Window], *, count_needed: bool = True) -> np.ndarray:
        present = self._present(windows, "video")
        sources = {(windows[i].stream_id, t): f for i in present
                   for t, f in zip(windows[i].frame_times_ns, windows[i].frames, strict=True)}
        rows, encoded = lookup(
            self._frames, sources, lambda frames: self.runtime.encode_frames(self.prepare.video_frames(frames))
        )
        out = self._zeros(len(windows), "video")
        if present:
            keys = list(rows)
            slot = {key: i for i, key in enumerate(keys)}
            table = np.stack([rows[key] for key in keys])
            # Every window brings the same number of frames (the aligner samples ``frames`` of them).
            index = np.array([[slot[(windows[i].stream_id, t)] for t in windows[i].frame_times_ns] for i in present])
            out[present] = table[index].mean(axis=1)
        self._count("frames", sum(len(windows[i].frame_times_ns) for i in present) if count_needed else 0, encoded)
        return out

    def _video_whole(self, windows: Sequence[Window]) -> np.ndarray:
        video = self.prepare.video
        assert video is not None

        def encode(present: list[Window]) -> np.ndarray:
            pixels = np.stack([video.window(w.frames) for w in present])  # [B, frames, ...one frame]
            if self.runtime.embeds_frames:  # a per-frame graph without reuse: every frame, then the mean
                frames = self.runtime.encode_frames(pixels.reshape(-1, *pixels.shape[2:]))
                return frames.reshape(len(present), pixels.shape[1], -1).mean(axis=1)
            return self.runtime.encode("video", self.prepare.video_feed(pixels))

        return self._whole(windows, "video", encode, ("frames", video.pre.frames))

    def _audio(self, windows: Sequence[Window]) -> np.ndarray:
        """Audio embeddings, taking those warmed on exactly these samples. With revisions on, a window's
        embedding is kept past its provisional prediction and its final, for the revisions that follow
        with the same audio once the text is in (the final, an amendment by a late word): the audio graph
        is most of the engine's time, and running it again per revision doubled it. Without revisions a
        window has one prediction, and its entry goes with it."""
        out = self._zeros(len(windows), "audio")
        todo = []
        for i in self._present(windows, "audio"):
            window = windows[i]
            key = (window.stream_id, window.t_start_ns)
            revised = not window.final or window.revision > 0
            warmed = self._warm_audio.get(key) if revised else self._warm_audio.pop(key, None)
            if warmed is not None and np.array_equal(warmed[0], window.audio):
                out[i] = warmed[1]
                self.audio_warm_hits += 1
                if revised:
                    self._warm_audio.move_to_end(key)
            else:
                todo.append(i)
        if todo:
            out[todo] = self._encode_audio([windows[i] for i in todo])
            for i in todo:
                if not windows[i].final or windows[i].revision > 0:
                    self._warm_audio[(windows[i].stream_id, windows[i].t_start_ns)] = (windows[i].audio, out[i].copy())
            while len(self._warm_audio) > self._warm_capacity:
                self._warm_audio.popitem(last=False)
        return out

    def _has_warm_audio(self, window: Window) -> bool:
        warmed = self._warm_audio.get((window.stream_id, window.t_start_ns))
        return warmed is not None and np.array_equal(warmed[0], window.audio)

    def _encode_audio(self, windows: Sequence[Window]) -> np.ndarray:
        return self.runtime.encode("audio", self.prepare.audio_feed(np.stack([w.audio for w in windows])))

    def _text(self, windows: Sequence[Window], *, count_needed: bool = True) -> np.ndarray:
        present = [(i, (windows[i].stream_id, windows[i].transcript)) for i in self._present(windows, "text")]
        rows, encoded = lookup(
            self._texts, {key: key[1] for _, key in present},
            lambda texts: self.runtime.encode("text", self.prepare.text_feed(texts)),
        )
        out = self._zeros(len(windows), "text")
        for i, key in present:
            out[i] = rows[key]
        self._count("texts", len(present) if count_needed else 0, encoded)
        return out

    def _text_whole(self, windows: Sequence[Window]) -> np.ndarray:
        def encode(present: list[Window]) -> np.ndarray:
            return self.runtime.encode("text", self.prepare.text_feed([w.transcript for w in present]))

        return self._whole(windows, "text", encode, ("texts", 1))

    def _whole(self, windows: Sequence[Window], modality: str,
               encode: Callable[[list[Window]], np.ndarray], counted: tuple[str, int]) -> np.ndarray:
        """Encode each window where the modality is present, no reuse; zeros elsewhere."""
        out = self._zeros(len(windows), modality)
        present = self._present(windows, modality)
        if present:
            out[present] = encode([windows[i] for i in present])
        kind, per_window = counted
        self._count(kind, len(present) * per_window, len(present) * per_window)
        return out

    def _count(self, kind: str, needed: int, encoded: int) -> None:
        self._needed[kind] += needed
        self._encoded[kind] += encoded
