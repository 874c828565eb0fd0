"""`fusionstream train OUT --encoders DIR`: a fusion head on frozen pretrained encoders, as a format-2 model.

1. Embed: every training and validation window — synthetic AV-digit streams, or ``--data`` clips —
   goes through the serving aligner and the encoders directory's encoders with their declared
   preprocessing, once; the embeddings are cached (``embed_cache.py``), so refitting heads on the
   same encoders and data skips this step.
2. Heads: each fusion head (or the one ``--fusion`` names), behind a projection per declared
   modality (``engines/fusion/projected.py``), is fitted for the task (``frozen_heads.py``) with
   modality dropout and scored on validation windows: fused, and worst with one modality removed.
3. Export: the chosen head as ``fusion.onnx`` beside copies of the encoders, with a complete
   ``model.json``, checked against torch and by ``fusionstream model check`` (``frozen_export.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fusionstream.consumers.training.embed_cache import EmbeddedSet, embed_parts
from fusionstream.consumers.training.frozen_data import DIGITS, clip_parts, synthetic_parts
from fusionstream.consumers.training.frozen_export import check_out, write_model_dir
from fusionstream.consumers.training.frozen_heads import (
    HEAD_EPOCHS,
    FittedHead,
    choose,
    evaluate_head,
    fit_head,
    one_thread,
    rows_for,
)
from fusionstream.consumers.training.generate import progress_bar
from fusionstream.consumers.training.train import VALIDATION_SECONDS, model_version, warn_of_scarce_classes
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.manifest import TASKS, Manifest
from fusionstream.engines.spec import FUSION_HEADS
from fusionstream.stream.sources.truth import CLEAR_SHARE

#: Share of ``--data`` windows held out for validation (as ``train --data``).
VALIDATION_SHARE = 0.2
DEFAULT_EMBEDDING_SIZE = 128


@dataclass(frozen=True)
class FrozenOptions:
    out: Path
    encoders: Path
    fusion: str = "best"
    task: str = "single_label"
    embedding_size: int = DEFAULT_EMBEDDING_SIZE
    data: Path | None = None
    train_seconds: float = 4800.0
    head_epochs: int = HEAD_EPOCHS
    seed: int = 0
    workers: int = 2
    cache: Path | None = None
    version: str | None = None

    @property
    def validation_seconds(self) -> float:
        """``train``'s 600 s for a full run; a quarter of the training seconds (at least 60) for short ones."""
        return min(VALIDATION_SECONDS, max(60.0, self.train_seconds / 4))


@dataclass(frozen=True)
class FrozenResult:
    out: Path
    method: str
    task: str
    metrics: dict[str, Any]
    #: Seconds spent getting embeddings (rendering + encoding, or reading the cache).
    embedding_seconds: float
    #: Whether the training and validation embeddings came from the cache.
    cached: tuple[bool, bool]
    parity: float


def load_encoders(directory: Path) -> Manifest:
    """The encoders directory's manifest, checked as ``fusionstream model check`` does."""
    from fusionstream.engines.manifest_check import check_model_dir

    manifest, _ = check_model_dir(directory)
    if manifest.source_format != 2:
        raise ModelDirError(f"{manifest.path}: a format-1 model directory; make an encoders directory from it with "
                            f"`fusionstream model import ENCODERS --from-model {directory}` and train on that")
    return manifest


def _validate(options: FrozenOptions) -> None:
    if options.fusion != "best" and options.fusion not in FUSION_HEADS:
        raise SystemExit(f"unknown fusion head {options.fusion!r}: choose one of {', '.join(FUSION_HEADS)} or best")
    if options.task not in TASKS:
        raise SystemExit(f"unknown task {options.task!r}: choose one of {', '.join(TASKS)}")
    if options.embedding_size < 1 or options.head_epochs < 1:
        raise SystemExit("--embedding-size and --head-epochs must be at least 1")


def _split(data: EmbeddedSet, seed: int) -> tuple[EmbeddedSet, EmbeddedSet]:
    """A random split of the clips' windows, ``VALIDATION_SHARE`` held out."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(len(order) * VALIDATION_SHARE))
    return data.select(np.sort(order[cut:])), data.select(np.sort(order[:cut]))


def _task_doc(task: str, classes: tuple[str, ...], size: int, fitted: FittedHead) -> dict[str, Any]:
    if task == "embedding":
        return {"kind": "embedding", "size": size}
    if task == "multi_label":
        assert fitted.thresholds is not None
        return {"kind": "multi_label", "classes": list(classes),
                "thresholds": [round(float(t), 4) for t in fitted.thresholds]}
    return {"kind": "single_label", "classes": list(classes)}


def _table(fitted: dict[str, FittedHead], task: str) -> Table:
    what = "micro-F1" if task == "multi_label" else "accuracy"
    table = Table(title=f"fusion heads on validation windows ({task}, {what})")
    for column in ("head", "fused", "worst with one modality removed"):
        table.add_column(column)
    for name, f in fitted.items():
        fused, worst = f.score
        table.add_row(name, f"{fused:.4f}", "—" if worst is None else f"{worst:.4f}")
    return table


def _warn_of_overlapping_labels(windows: EmbeddedSet, console: Console) -> None:
    """A single-label head learns one class per window: spans of two classes that overlap cap its accuracy."""
    # Two classes at half or more each are two labels at once only where their spans overlap (more than the
    # whole window covered): a window that straddles the boundary of two spans that merely touch has one each.
    overlapping = windows.coverage.sum(axis=1) > 1 + 1e-4
    several = int(((windows.targets.sum(axis=1) > 1) & overlapping).sum())
    if several:
        console.print(f"[yellow]warning:[/] {several} of {len(windows)} windows have two or more labels at once "
                      "(overlapping spans in labels.csv): a single_label head learns one per window, the one "
                      "covering most, so it cannot be right on all of them; --task multi_label learns labels that "
                      "apply together")


def frozen_train_command(options: FrozenOptions, console: Console | None = None) -> FrozenResult:
    """Embed, fit, choose and export (module docstring); returns what was written and measured."""
    console = console or Console()
    started = time.perf_counter()
    _validate(options)
    encoders = load_encoders(options.encoders)
    check_out(options.out, encoders)
    with progress_bar(console) as progress:
        t0 = time.perf_counter()
        if options.data is not None:
            from fusionstream.consumers.training.clips import ClipsError

            try:
                classes, parts = clip_parts(options.data)
            except (OSError, ValueError) as exc:  # each names the file (and the line of labels.csv)
                raise ClipsError(str(exc)) from None
            everything, hit = embed_parts(encoders, parts, classes, what="clips", progress=progress,
                                          cache=options.cache, workers=options.workers)
            train_set, val_set = _split(everything, options.seed)
            cached = (hit, hit)
            if options.task != "embedding":  # a class the labels name but (almost) never cover: it is never learnt
                clear = train_set.coverage >= CLEAR_SHARE
                warn_of_scarce_classes({name: int(clear[:, c].sum()) for c, name in enumerate(classes)}, console)
            if options.task == "single_label":
                _warn_of_overlapping_labels(everything, console)
        else:
            classes = DIGITS
            train_set, train_hit = embed_parts(
                encoders, synthetic_parts(options.train_seconds, options.seed, "train"), classes,
                what="training streams", progress=progress, cache=options.cache, workers=options.workers)
            val_set, val_hit = embed_parts(
                encoders, synthetic_parts(options.validation_seconds, options.seed + 500, "train"), classes,
                what="validation streams", progress=progress, cache=options.cache, workers=options.workers)
            cached = (train_hit, val_hit)
        embedding_seconds = time.perf_counter() - t0
        if not len(rows_for(options.task, train_set)) or not len(val_set):
            raise SystemExit("no labelled windows to train or validate on: check --data's labels.csv")
        outputs = options.embedding_size if options.task == "embedding" else len(classes)
        names = list(FUSION_HEADS) if options.fusion == "best" else [options.fusion]
        task = progress.add_task("fitting fusion heads", total=len(names), info="")
        fitted: dict[str, FittedHead] = {}
        with one_thread():
            for name in names:
                progress.update(task, info=name)
                head = fit_head(name, options.task, train_set, outputs=outputs, epochs=options.head_epochs,
                                seed=options.seed)
                fitted[name] = evaluate_head(head, options.task, val_set)
                progress.advance(task)
    console.print(_table(fitted, options.task))
    chosen = fitted[choose(fitted)]
    metrics = {
        "validation": chosen.metrics | {"windows": len(val_set)},
        "heads": {name: f.metrics for name, f in fitted.items()},
        "trained_on_windows": len(rows_for(options.task, train_set)),
        "encoders": str(options.encoders),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    version = options.version or model_version(options.out, time.strftime("%Y.%m.%d"))
    error = write_model_dir(options.out, encoders, chosen.head, task=_task_doc(options.task, classes, outputs, chosen),
                            version=version, metrics=metrics, validation=val_set)
    console.print(f"[bold]{chosen.method}[/] head ({options.task}, validation {chosen.metrics}) on the encoders of "
                  f"{options.encoders} written to {options.out} (ONNX parity: max rel. error {error:.2e}) in "
                  f"{time.perf_counter() - started:.0f} s")
    return FrozenResult(options.out, chosen.method, options.task, metrics, embedding_seconds, cached, error)


__all__ = ["FrozenOptions", "FrozenResult", "frozen_train_command", "load_encoders"]
