"""Rendering synthetic training and evaluation windows, cached on disk, with a progress bar."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fusionstream.consumers.training.dataset import WindowSet, synthesize_many
from fusionstream.consumers.training.progress_lines import LineProgress
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream.sources import SyntheticConfig
from fusionstream.stream.sources.augment import Augmentation
from fusionstream.stream.sources.speech import bank_fingerprint
from fusionstream.stream.sources.typefaces import TYPEFACE_POOLS

#: Seconds per synthetic run; several runs with their own seeds make a set.
RUN_SECONDS = 300.0
STREAMS_PER_RUN = 4


def progress_bar(console: Console | None = None) -> Progress:
    """A live bar on a terminal; elsewhere (a file, a pipe, CI) a line per task now and then (``LineProgress``)."""
    console = console or Console()
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def synthetic_configs(
    seconds: float, seed: int, voices: str, augment: Augmentation | None = None
) -> list[SyntheticConfig]:
    """Runs of ``RUN_SECONDS`` x ``STREAMS_PER_RUN`` streams adding up to ``seconds`` of streams."""
    runs = max(1, math.ceil(seconds / (RUN_SECONDS * STREAMS_PER_RUN)))
    per_run = seconds / (runs * STREAMS_PER_RUN)
    return [
        SyntheticConfig(streams=STREAMS_PER_RUN, seconds=per_run, seed=seed * 1000 + i, voices=voices,  # type: ignore[arg-type]
                        augment=augment or Augmentation.none())
        for i in range(runs)
    ]


def generate(
    spec: ModelSpec,
    configs: Sequence[SyntheticConfig],
    what: str,
    workers: int,
    progress: Progress,
    cache: Path | None = None,
) -> WindowSet:
    """Render, window and featurise synthetic runs; reuse a cached copy when the inputs are identical."""
    # The typefaces' names too: an augmentation's pool is named, not listed, in its config.
    inputs = (_input_fields(spec), list(configs), bank_fingerprint(), TYPEFACE_POOLS)
    key = hashlib.sha256(repr(inputs).encode()).hexdigest()[:16]
    path = cache / f"windows-{key}.npz" if cache else None
    if path is not None and path.exists():
        data = WindowSet.load(path)
        progress.add_task(f"{what} (cached)", total=1, completed=1, info=f"{len(data)} windows")
        return data
    task = progress.add_task(f"rendering {what}", total=len(configs), info="")
    data = synthesize_many(spec, configs, workers=workers, progress=lambda n: progress.advance(task, n))
    progress.update(task, info=f"{len(data)} windows")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
    return data


def _input_fields(spec: ModelSpec) -> tuple:
    """The spec fields that shape featurised windows (not the head, version or metrics)."""
    return (spec.frames_per_window, spec.image_size, spec.sample_rate, spec.window_ns, spec.hop_ns,
            spec.text_buckets, spec.text_ngrams, spec.text_max_len)


# -- stage 1: encoders ------------------------------------------------------------------------------
