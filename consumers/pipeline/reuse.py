"""Embeddings for a batch of windows, reusing the work overlapping windows share.

With hop < window every frame and every caption belongs to several windows (two, at the
default 1 s window and 0.5 s hop). The aligner samples frames on a grid that overlapping
windows share, so the same frame comes back; this module embeds each frame once, keyed by
``(stream, frame time)``, and each distinct transcript of a stream once, keyed by
``(stream, text)``. A window's video embedding is then the mean of its K frame embeddings:
exactly what the video graph computes, since that graph also averages per-frame embeddings.

Audio cannot be shared between windows: its encoder reads the whole window at once. But a
window's data is usually complete well before it closes (the watermark waits out the allowed
lateness, 200 ms by default), so :meth:`WindowEmbedder.warm` encodes such windows while they
wait: frames and captions into the caches above, and the window's audio embedding kept with
its samples. When the window closes, the embedding is used only if the samples are the same
(a late chunk changes them, and the window is encoded again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from fusionstream.engines.features import frame_to_array, frames_to_array, text_to_ids
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream.windows import Window

if TYPE_CHECKING:
    from fusionstream.engines.backends.base import Backend

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


class WindowEmbedder:
    """Windows → ``(video, audio, text)`` embeddings ``float32 [B, D]`` and ``mask [B, 3]``.

    With ``reuse`` (the default) and a backend that embeds single frames, frames and
    transcripts are cached as described above; otherwise every window is encoded whole,
    as a model that lacks the per-frame graph requires. Absent modalities get zero rows
    and cost no encoder time either way. Not thread-safe: one per engine thread.
    """

    def __init__(
        self,
        backend: Backend,
        spec: ModelSpec,
        *,
        reuse: bool = True,
        frame_cache: int = 16384,
        text_cache: int = 4096,
        warm_windows: int = 512,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.reuse_frames = reuse and backend.embeds_frames
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

    def __call__(self, windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        mask = np.array([w.mask for w in windows], dtype=np.float32).reshape(len(windows), 3)
        video = self._video(windows) if self.reuse_frames else self._whole(windows, 0, self._encode_windows_video)
        audio = self._audio(windows) if self._warm_audio else self._whole(windows, 1, self._encode_windows_audio)
        text = self._text(windows) if self.reuse_text else self._whole(windows, 2, self._encode_windows_text)
        return video, audio, text, mask

    def warm(self, windows: Sequence[Window]) -> None:
        """Encode what these still-open windows will need when they close (see the module doc).

        Counts the encoder work it does, not any work needed: that is counted when the
        windows close and come through ``__call__``.
        """
        if not (self.reuse_frames and self.reuse_text) or not windows:
            return
        self._video(windows, count_needed=False)
        self._text(windows, count_needed=False)
        present = [w for w in windows if w.mask[1]]
        if present:
            for window, row in zip(present, self._encode_windows_audio(present), strict=True):
                self._warm_audio[(window.stream_id, window.t_start_ns)] = (window.audio, row)
            while len(self._warm_audio) > self._warm_capacity:  # windows that never closed here (moved away)
                self._warm_audio.popitem(last=False)

    def _audio(self, windows: Sequence[Window]) -> np.ndarray:
        """Audio embeddings, taking those warmed on exactly these samples."""
        out = self._zeros(len(windows))
        todo = []
        for i, window in enumerate(windows):
            if not window.mask[1]:
                continue
            warmed = self._warm_audio.pop((window.stream_id, window.t_start_ns), None)
            if warmed is not None and np.array_equal(warmed[0], window.audio):
                out[i] = warmed[1]
                self.audio_warm_hits += 1
            else:
                todo.append(i)
        if todo:
            out[todo] = self._encode_windows_audio([windows[i] for i in todo])
        return out

    def _encode_windows_audio(self, windows: Sequence[Window]) -> np.ndarray:
        return self.backend.encode("audio", np.stack([w.audio for w in windows]))

    def _zeros(self, n: int) -> np.ndarray:
        return np.zeros((n, self.spec.embed_dim), np.float32)

    def _whole(
        self, windows: Sequence[Window], column: int, encode: Callable[[list[Window]], np.ndarray]
    ) -> np.ndarray:
        """Encode each window where modality ``column`` is present, no reuse; zeros elsewhere."""
        out = self._zeros(len(windows))
        present = [i for i, w in enumerate(windows) if w.mask[column]]
        if present:
            out[present] = encode([windows[i] for i in present])
        kind, per_window = {0: ("frames", self.spec.frames_per_window), 1: ("", 0), 2: ("texts", 1)}[column]
        if kind:
            self._count(kind, len(present) * per_window, len(present) * per_window)
        return out

    def _encode_windows_video(self, windows: list[Window]) -> np.ndarray:
        return self.backend.encode("video", np.stack([frames_to_array(w.frames, self.spec) for w in windows]))

    def _encode_windows_text(self, windows: list[Window]) -> np.ndarray:
        return self.backend.encode("text", np.stack([text_to_ids(w.transcript, self.spec) for w in windows]))

    def _video(self, windows: Sequence[Window], *, count_needed: bool = True) -> np.ndarray:
        present = [(i, w) for i, w in enumerate(windows) if w.mask[0]]
        sources = {
            (w.stream_id, t): frame for _, w in present for t, frame in zip(w.frame_times_ns, w.frames, strict=True)
        }
        rows, encoded = self._lookup(
            self._frames,
            sources,
            lambda frames: self.backend.encode_frames(np.stack([frame_to_array(f, self.spec) for f in frames])),
        )
        out = self._zeros(len(windows))
        if present:
            keys = list(rows)
            slot = {key: i for i, key in enumerate(keys)}
            table = np.stack([rows[key] for key in keys])
            index = np.array([[slot[(w.stream_id, t)] for t in w.frame_times_ns] for _, w in present])
            out[[i for i, _ in present]] = table[index].mean(axis=1)
        self._count("frames", len(present) * self.spec.frames_per_window if count_needed else 0, encoded)
        return out

    def _text(self, windows: Sequence[Window], *, count_needed: bool = True) -> np.ndarray:
        present = [(i, (w.stream_id, w.transcript)) for i, w in enumerate(windows) if w.mask[2]]
        rows, encoded = self._lookup(
            self._texts,
            {key: key[1] for _, key in present},
            lambda texts: self.backend.encode("text", np.stack([text_to_ids(t, self.spec) for t in texts])),
        )
        out = self._zeros(len(windows))
        for i, key in present:
            out[i] = rows[key]
        self._count("texts", len(present) if count_needed else 0, encoded)
        return out

    def _count(self, kind: str, needed: int, encoded: int) -> None:
        self._needed[kind] += needed
        self._encoded[kind] += encoded

    @staticmethod
    def _lookup(
        cache: EmbeddingCache[Any], sources: dict[Any, Any], encode: Callable[[list[Any]], np.ndarray]
    ) -> tuple[dict[Any, np.ndarray], int]:
        """Rows for every key of ``sources`` (cached ones, the rest encoded in one call), and how many
        were encoded."""
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
