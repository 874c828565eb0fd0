"""Raw labelled windows for training a head on frozen encoders (``train --encoders``).

Format 1 featurises windows for fusionstream's own encoders (``dataset.py``); pretrained encoders
need the windows' raw contents instead (frames, samples, transcript), prepared as their manifest
declares. A *part* is one unit of work that can run in its own process: a synthetic run (several
streams) or one ``--data`` clip. Its records go through the serving aligner (``windows_of``) with
the model's window, frames per window and sample rate, keeping only the declared modalities as
serving does (an undeclared modality is not aligned, so it cannot create or extend windows), and
the sampled JPEG frames are decoded the way the pipeline decodes them
(``decode_sampled_frames`` at the encoder's input side).

Labels are per-class *coverage*: the share of the window each class's spans cover. Everything the
tasks need follows from it (:class:`~fusionstream.consumers.training.embed_cache.EmbeddedSet`):
the single label (the class covering most, clear at ≥ 75 % as ``GroundTruth.label``) and the
multi-label targets (every class covering at least half). Clip spans of different classes may
overlap: that is how ``labels.csv`` says several labels apply at once.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionstream.consumers.training.clips import (
    EPOCH_NS,
    LABELS,
    Span,
    classes_of,
    note_what_the_clip_lacks,
    read_labels,
)
from fusionstream.consumers.training.dataset import windows_of
from fusionstream.consumers.training.generate import synthetic_configs
from fusionstream.engines.manifest import Manifest
from fusionstream.stream.records import Record
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.speech import bank_fingerprint
from fusionstream.stream.windows import Window, WindowConfig
from fusionstream.units import NS

#: Windows embedded together (one encoder batch per modality).
CHUNK = 64
#: The synthetic source's classes: its digits.
DIGITS = tuple(str(d) for d in range(10))
#: (start ns, end ns, class index) of one labelled span.
Interval = tuple[int, int, int]


def window_config_of(manifest: Manifest) -> WindowConfig:
    """The aligner settings serving uses for this model; offline data is in order, so no lateness."""
    from fusionstream.consumers.settings import model_geometry

    frames, rate = model_geometry(manifest)
    return WindowConfig(window_ns=manifest.window_ns, hop_ns=manifest.hop_ns, frames_per_window=frames,
                        sample_rate=rate, lateness_ns=0)


@dataclass(frozen=True)
class SyntheticPart:
    """One synthetic run (``SyntheticConfig``): its streams and their digit segments."""

    config: SyntheticConfig

    def describe(self) -> str:
        return repr(self.config)  # a frozen dataclass: the repr is every field, deterministic

    def open(self) -> tuple[Iterable[Record], dict[str, list[Interval]]]:
        source = SyntheticAV(self.config)
        truth = source.truth
        segments = {sid: [(s.t_start_ns, s.t_end_ns, s.digit) for s in truth.segments(sid)]
                    for sid in truth.stream_ids}
        return source.records(), segments


@dataclass(frozen=True)
class ClipPart:
    """One ``--data`` clip with its spans (class indices into the clip set's classes)."""

    directory: Path
    file: str
    spans: tuple[tuple[float, float, int], ...]

    @property
    def stream_id(self) -> str:
        return Path(self.file).stem

    def describe(self) -> str:
        # Contents are not hashed (clips can be large): a changed file changes its size or mtime.
        stats = []
        media = self.directory / self.file
        for path in (media, media.with_suffix(".srt"), media.with_suffix(".vtt")):
            if path.is_file():
                st = path.stat()
                stats.append((path.name, st.st_size, st.st_mtime_ns))
        return repr((self.file, self.spans, stats))

    def open(self) -> tuple[Iterable[Record], dict[str, list[Interval]]]:
        from fusionstream.consumers.training.clips import _captions_for
        from fusionstream.stream.sources.files import media_file_records

        media = self.directory / self.file
        records = media_file_records(media, self.stream_id, start_ns=EPOCH_NS, captions=_captions_for(media))
        intervals = [(EPOCH_NS + round(a * NS), EPOCH_NS + round(b * NS), c) for a, b, c in self.spans]
        return records, {self.stream_id: intervals}


Part = SyntheticPart | ClipPart


def synthetic_parts(seconds: float, seed: int, voices: str) -> list[SyntheticPart]:
    """The same runs ``fusionstream train`` renders for these seconds, seed and voices."""
    return [SyntheticPart(c) for c in synthetic_configs(seconds, seed, voices)]


def clip_parts(directory: Path, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], list[ClipPart]]:
    """The classes (sorted, or ``classes`` when given: a model's) and one part per clip of ``labels.csv``."""
    spans: dict[str, list[Span]] = read_labels(directory)
    found = classes_of(spans)
    names = tuple(classes) if classes is not None else tuple(found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"{directory / LABELS}: labels {unknown} are not classes of the model ({list(names)})")
    for file, file_spans in spans.items():
        note_what_the_clip_lacks(directory / file, file, file_spans)
    parts = [ClipPart(directory, file, tuple((s.start_s, s.end_s, names.index(s.label)) for s in file_spans))
             for file, file_spans in spans.items()]
    return names, parts


def data_key(parts: Sequence[Part], classes: Sequence[str]) -> str:
    """A digest of what the parts would produce: part for part, and the classes labels index."""
    return hashlib.sha256(repr(([p.describe() for p in parts], list(classes), bank_fingerprint())).encode()).hexdigest()


def coverage(intervals: Sequence[Interval], n_classes: int, t_start_ns: int, t_end_ns: int) -> np.ndarray:
    """``float32 [n_classes]``: the share of ``[t_start, t_end)`` each class's intervals cover (their union)."""
    out = np.zeros(n_classes, np.float32)
    by_class: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for a, b, c in intervals:
        lo, hi = max(a, t_start_ns), min(b, t_end_ns)
        if hi > lo:
            by_class[c].append((lo, hi))
    for c, pieces in by_class.items():
        covered, reach = 0, t_start_ns
        for lo, hi in sorted(pieces):  # a union: overlapping spans of one class count once
            lo = max(lo, reach)
            if hi > lo:
                covered += hi - lo
                reach = hi
        out[c] = covered / (t_end_ns - t_start_ns)
    return out


def _declared(records: Iterable[Record], manifest: Manifest) -> Iterator[Record]:
    """Only the declared modalities' records, as serving aligns them."""
    declared = set(manifest.modalities)
    return (r for r in records if r.modality.label in declared)


def labelled_windows(part: Part, manifest: Manifest, n_classes: int,
                     frame_side: int) -> Iterator[tuple[list[Window], np.ndarray]]:
    """The part's windows in chunks, frames decoded, each chunk with its ``coverage [n, n_classes]``."""
    from fusionstream.consumers.pipeline.core import decode_sampled_frames

    records, segments = part.open()
    by_stream: dict[str, list[Interval]] = {sid: sorted(s) for sid, s in segments.items()}
    chunk: list[Window] = []

    def emit() -> tuple[list[Window], np.ndarray]:
        decoded = [new for _, new, _ in decode_sampled_frames(chunk, frame_side)]
        cover = np.stack([coverage(by_stream.get(w.stream_id, []), n_classes, w.t_start_ns, w.t_end_ns)
                          for w in decoded])
        chunk.clear()
        return decoded, cover

    for window in windows_of(_declared(records, manifest), window_config_of(manifest), lazy_jpeg=True):
        chunk.append(window)
        if len(chunk) >= CHUNK:
            yield emit()
    if chunk:
        yield emit()


__all__ = ["DIGITS", "ClipPart", "Part", "SyntheticPart", "clip_parts", "coverage", "data_key",
           "labelled_windows", "synthetic_parts", "window_config_of"]
