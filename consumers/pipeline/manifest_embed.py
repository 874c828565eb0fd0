"""Embeddings of a format-2 model for a batch of windows, reusing what overlapping windows share.

The format-2 counterpart of :mod:`fusionstream.consumers.pipeline.reuse` (the same rules, the same
:class:`~fusionstream.consumers.pipeline.reuse.EmbeddingCache`): with a per-frame video encoder each
frame is embedded once, keyed by ``(stream, frame time)``, and a window's video embedding is the
mean of its frames'; each distinct transcript of a stream is embedded once, keyed by
``(stream, text)``; audio embedded while a window waited out the lateness is used at its close when
its samples are unchanged. Only the modalities the model declares are embedded, each on the rows
where it is present (zeros elsewhere); a modality absent from the whole batch costs nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from fusionstream.consumers.pipeline.reuse import EmbeddingCache, ReuseStats, WindowEmbedder
from fusionstream.engines.backends.manifest_onnx import ManifestRuntime
from fusionstream.engines.spec import MODALITIES
from fusionstream.stream.windows import Window


class ManifestEmbedder:
    """Windows → ``({modality: float32 [B, size]}, mask float32 [B, declared modalities])``.

    ``mask`` has one column per declared modality, in ``MODALITIES`` order. Not thread-safe: one
    per engine thread.
    """

    def __init__(
        self,
        runtime: ManifestRuntime,
        *,
        reuse: bool = True,
        frame_cache: int = 16384,
        text_cache: int = 4096,
        warm_windows: int = 512,
    ) -> None:
        assert runtime.preprocess is not None, "activate the runtime first"
        self.runtime = runtime
        self.prepare = runtime.preprocess
        self.modalities = runtime.modalities
        #: The window mask's column of each declared modality.
        self.columns = tuple(MODALITIES.index(m) for m in self.modalities)
        self.reuse_frames = reuse and runtime.embeds_frames
        self.reuse_text = reuse
        self._frames: EmbeddingCache[tuple[str, int]] = EmbeddingCache(frame_cache)
        self._texts: EmbeddingCache[tuple[str, str]] = EmbeddingCache(text_cache)
        self._warm_audio: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._warm_capacity = warm_windows
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
        return np.array([[w.mask[c] for c in self.columns] for w in windows], np.float32).reshape(
            len(windows), len(self.columns)
        )

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
        """Encode what these still-open windows will need when they close (frames, transcripts, audio)."""
        if not windows:
            return
        if "video" in self.modalities and self.reuse_frames:
            self._video(windows, count_needed=False)
        if "text" in self.modalities and self.reuse_text:
            self._text(windows, count_needed=False)
        if "audio" in self.modalities:
            present = [w for w in windows if w.mask[1]]
            if present:
                for window, row in zip(present, self._encode_audio(present), strict=True):
                    self._warm_audio[(window.stream_id, window.t_start_ns)] = (window.audio, row)
                while len(self._warm_audio) > self._warm_capacity:
                    self._warm_audio.popitem(last=False)

    # -- per modality ---------------------------------------------------------------------------

    def _zeros(self, n: int, modality: str) -> np.ndarray:
        return np.zeros((n, self.runtime.sizes[modality]), np.float32)

    def _video(self, windows: Sequence[Window], *, count_needed: bool = True) -> np.ndarray:
        present = [(i, w) for i, w in enumerate(windows) if w.mask[0]]
        sources = {(w.stream_id, t): f for _, w in present for t, f in zip(w.frame_times_ns, w.frames, strict=True)}
        rows, encoded = WindowEmbedder._lookup(
            self._frames, sources, lambda frames: self.runtime.encode_frames(self.prepare.video_frames(frames))
        )
        out = self._zeros(len(windows), "video")
        if present:
            keys = list(rows)
            slot = {key: i for i, key in enumerate(keys)}
            table = np.stack([rows[key] for key in keys])
            # Every window brings the same number of frames (the aligner samples ``frames`` of them).
            index = np.array([[slot[(w.stream_id, t)] for t in w.frame_times_ns] for _, w in present])
            out[[i for i, _ in present]] = table[index].mean(axis=1)
        self._count("frames", sum(len(w.frame_times_ns) for _, w in present) if count_needed else 0, encoded)
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

        return self._whole(windows, 0, "video", encode, ("frames", video.pre.frames))

    def _audio(self, windows: Sequence[Window]) -> np.ndarray:
        """Audio embeddings, taking those warmed on exactly these samples."""
        out = self._zeros(len(windows), "audio")
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
            out[todo] = self._encode_audio([windows[i] for i in todo])
        return out

    def _encode_audio(self, windows: Sequence[Window]) -> np.ndarray:
        return self.runtime.encode("audio", self.prepare.audio_feed(np.stack([w.audio for w in windows])))

    def _text(self, windows: Sequence[Window], *, count_needed: bool = True) -> np.ndarray:
        present = [(i, (w.stream_id, w.transcript)) for i, w in enumerate(windows) if w.mask[2]]
        rows, encoded = WindowEmbedder._lookup(
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

        return self._whole(windows, 2, "text", encode, ("texts", 1))

    def _whole(self, windows: Sequence[Window], column: int, modality: str,
               encode: Callable[[list[Window]], np.ndarray], counted: tuple[str, int]) -> np.ndarray:
        """Encode each window where the modality is present, no reuse; zeros elsewhere."""
        out = self._zeros(len(windows), modality)
        present = [i for i, w in enumerate(windows) if w.mask[column]]
        if present:
            out[present] = encode([windows[i] for i in present])
        kind, per_window = counted
        self._count(kind, len(present) * per_window, len(present) * per_window)
        return out

    def _count(self, kind: str, needed: int, encoded: int) -> None:
        self._needed[kind] += needed
        self._encoded[kind] += encoded

