"""Your own labelled clips for `train --data DIR` and `evaluate --data DIR` (docs/training.md).

    DIR/labels.csv      header ``file,start_s,end_s,label``; one row per labelled span
    DIR/<file>          a video file with its audio track (anything FFmpeg reads)
    DIR/<stem>.srt|.vtt optional captions of that file

Every file is windowed by the serving aligner exactly as a live stream would be; a
window is labelled with the span covering most of it (clear when ≥ 75 %).
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from fusionstream.consumers.training.dataset import WindowSet, featurize_windows, window_config_for, windows_of
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream.errors import FusionStreamError
from fusionstream.stream.sources.files import media_file_records, probe
from fusionstream.stream.sources.truth import GroundTruth, Segment
from fusionstream.units import NS


class ClipsError(FusionStreamError):
    """``--data`` cannot be used: labels.csv missing or wrong, a listed file missing or unreadable."""

log = logging.getLogger(__name__)

LABELS = "labels.csv"
EPOCH_NS = 1_767_225_600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Span:
    start_s: float
    end_s: float
    label: str


def read_labels(directory: Path) -> dict[str, list[Span]]:
    """``labels.csv`` as spans per file, validated (file exists, times ordered, label present)."""
    path = directory / LABELS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it lists file,start_s,end_s,label (docs/training.md)")
    spans: dict[str, list[Span]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"file", "start_s", "end_s", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must be file,start_s,end_s,label, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                start, end = float(row["start_s"]), float(row["end_s"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: start_s and end_s must be numbers") from None
            label = (row["label"] or "").strip()
            if not label or not 0 <= start < end:
                raise ValueError(f"{path}:{line}: need a label and 0 <= start_s < end_s")
            if not (directory / row["file"]).is_file():
                raise FileNotFoundError(f"{path}:{line}: {row['file']} is not in {directory}")
            spans[row["file"]].append(Span(start, end, label))
    if not spans:
        raise ValueError(f"{path} labels nothing")
    labels = {span.label for file_spans in spans.values() for span in file_spans}
    if len(labels) < 2:
        raise ValueError(f"{path} has one label ({', '.join(labels)}): a classifier needs at least two")
    return dict(spans)


def classes_of(spans: dict[str, list[Span]]) -> list[str]:
    return sorted({s.label for file_spans in spans.values() for s in file_spans})


def _captions_for(media: Path) -> Path | None:
    for suffix in (".srt", ".vtt"):
        candidate = media.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def load_clips(directory: Path, spec: ModelSpec, *, progress: Progress | None = None) -> WindowSet:
    """Window and label every listed file; labels must be among ``spec.classes``."""
    spans = read_labels(directory)
    unknown = sorted(set(classes_of(spans)) - set(spec.classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of the model ({spec.classes})")
    task = progress.add_task("windowing clips", total=len(spans), info="") if progress else None
    parts = []
    for file, file_spans in spans.items():
        media = directory / file
        stream_id = Path(file).stem
        check_one_label_at_a_time(file, file_spans)
        note_what_the_clip_lacks(media, file, file_spans)
        truth = GroundTruth({stream_id: [
            Segment(EPOCH_NS + round(s.start_s * NS), EPOCH_NS + round(s.end_s * NS), spec.classes.index(s.label))
            for s in sorted(file_spans, key=lambda s: s.start_s)
        ]})
        records = media_file_records(media, stream_id, start_ns=EPOCH_NS, captions=_captions_for(media))
        parts.append(featurize_windows(windows_of(records, window_config_for(spec)), spec, truth))
        if progress is not None and task is not None:
            progress.advance(task)
    return WindowSet.concat(parts)


def check_one_label_at_a_time(file: str, spans: Sequence[Span]) -> None:
    """A single-label model learns one class per instant: two spans of a file that overlap are refused,
    named by their times and labels (the ground truth's own message gave an internal nanosecond time)."""
    ordered = sorted(spans, key=lambda s: (s.start_s, s.end_s))
    for before, after in itertools.pairwise(ordered):
        if after.start_s < before.end_s:
            raise ValueError(
                f"{LABELS}: {file}: the spans {before.start_s:g}-{before.end_s:g} s ({before.label}) and "
                f"{after.start_s:g}-{after.end_s:g} s ({after.label}) overlap: a single-label model learns one "
                "label per instant (a multi_label head on imported encoders takes overlapping spans: "
                "docs/training.md)")


def note_what_the_clip_lacks(media: Path, file: str, spans: Sequence[Span]) -> None:
    """Warn of a span past the clip's end (minutes typed as seconds?) and of a clip without sound."""
    info = probe(media)
    if info.duration_s is not None and (late := [s for s in spans if s.end_s > info.duration_s + 0.5]):
        log.warning("%s: %s: %d span(s) end after the clip's %.1f s (the first %g-%g s, %s): what lies past the "
                    "end labels nothing", LABELS, file, len(late), info.duration_s, late[0].start_s, late[0].end_s,
                    late[0].label)
    if not info.has_audio:
        log.warning("%s has no audio track: its windows are learnt from without audio", file)


def split(data: WindowSet, fraction: float, seed: int) -> tuple[WindowSet, WindowSet]:
    """A random ``1 - fraction`` / ``fraction`` split of the labelled windows."""
    index = np.random.default_rng(seed).permutation(np.flatnonzero(data.label >= 0))
    cut = max(1, int(len(index) * fraction))
    return data.select(np.sort(index[cut:])), data.select(np.sort(index[:cut]))


__all__: Sequence[str] = [
    "ClipsError", "Span", "classes_of", "load_clips", "note_what_the_clip_lacks", "read_labels", "split",
]
