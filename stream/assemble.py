"""Building one window from a stream's buffers: frames sampled, audio stitched, captions gathered.

The aligner decides *when* a window closes; this module decides *what* it holds, the same way
for every caller (a close, a window offered ahead, a provisional prediction, an amendment).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import numpy as np

from fusionstream.stream.buffers import ModalityBuffer, contiguous, gaps, interval_coverage, overlapping, showing_at
from fusionstream.stream.records import Frame, MediaItem, Modality
from fusionstream.stream.windows import NS, Window, WindowConfig


def build_window(
    config: WindowConfig,
    stream_id: str,
    buffers: Mapping[Modality, ModalityBuffer],
    start: int,
    reason: str,
    *,
    revision: int = 0,
    final: bool = True,
    refs: tuple[object, ...] | None = None,
) -> Window | None:
    """The window ``[start, start + W)`` of ``stream_id`` from ``buffers``; ``None`` when nothing is in it.

    Its ``refs`` are every item's (a final window releases them when published), none for a provisional
    one (its final still needs them), or exactly ``refs`` when given (an amendment releases only the
    record that caused it: the others were released with the window's earlier final)."""
    end = start + config.window_ns
    frames = overlapping(buffers[Modality.VIDEO], start, end)
    chunks = overlapping(buffers[Modality.AUDIO], start, end)
    segments = overlapping(buffers[Modality.TEXT], start, end)
    if not (frames or chunks or segments):
        return None
    images, frame_times = sample_frames(config, frames, start)
    audio, spans = stitch(config, chunks, start)
    if refs is None:
        refs = tuple(item.ref for item in (*frames, *chunks, *segments) if item.ref is not None) if final else ()
    n = config.samples_per_window
    audio_coverage = sum(hi - lo for lo, hi in spans) / n
    return Window(
        stream_id=stream_id,
        t_start_ns=start,
        t_end_ns=end,
        frames=images,
        frame_times_ns=frame_times,
        audio=audio,
        audio_gaps=gaps(spans, n),
        text=tuple(segments),  # type: ignore[arg-type]
        mask=(bool(frames), audio_coverage > 0, bool(segments)),
        coverage=(
            interval_coverage(frames, start, end, showing_at(buffers[Modality.VIDEO], start)) if frames else 0.0,
            audio_coverage,
            interval_coverage(segments, start, end),
        ),
        closed_by=reason,
        refs=refs,
        revision=revision,
        final=final,
    )


def sample_frames(
    config: WindowConfig, frames: list[MediaItem], start: int
) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """The frame nearest to each of K evenly spaced instants of the window."""
    if not frames:
        return (), ()
    times = [f.t_start_ns for f in frames]
    picked: list[Frame] = []
    for k in range(config.frames_per_window):
        picked.append(frames[nearest(times, sample_instant(config, start, k))])  # type: ignore[arg-type]
    return tuple(f.image for f in picked), tuple(f.t_start_ns for f in picked)


def sample_instant(config: WindowConfig, start: int, k: int) -> int:
    """The ``k``-th of the K evenly spaced instants of the window starting at ``start``."""
    return start + (2 * k + 1) * config.window_ns // (2 * config.frames_per_window)


def nearest(times: list[int], target: int) -> int:
    """Index of the time in sorted ``times`` nearest to ``target`` (the earlier one on a tie)."""
    i = bisect.bisect_left(times, target)
    if i == len(times) or (i > 0 and target - times[i - 1] <= times[i] - target):
        i -= 1
    return i


def stitch(config: WindowConfig, chunks: list[MediaItem], start: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Exactly ``samples_per_window`` samples, cut at the window's edges; gaps stay zero.

    Also returns the covered sample ranges, merged and in order (arithmetic on a few
    dozen ranges, where a per-sample mask would cost two 16,000-element passes a window).
    """
    n = config.samples_per_window
    rate = config.sample_rate
    placed = [(round((c.t_start_ns - start) * rate / NS), c.samples) for c in chunks]  # type: ignore[attr-defined]
    if placed and contiguous(placed):
        # The usual case, a microphone's chunks back to back: one concatenation, not a copy per chunk.
        first = placed[0][0]
        joined = np.concatenate([samples for _, samples in placed])
        lo, hi = max(first, 0), min(first + len(joined), n)
        audio = np.zeros(n, dtype=np.float32)
        if lo < hi:
            audio[lo:hi] = joined[lo - first : hi - first]
            return audio, [(lo, hi)]
        return audio, []
    audio = np.zeros(n, dtype=np.float32)
    spans: list[tuple[int, int]] = []
    for offset, samples in placed:
        lo, hi = max(offset, 0), min(offset + len(samples), n)
        if lo < hi:
            audio[lo:hi] = samples[lo - offset : hi - offset]
            spans.append((lo, hi))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return audio, merged


__all__ = ["build_window", "sample_frames", "stitch"]
