"""`fusionstream evaluate` on a format-2 model directory: held-out windows through the serving runtime.

The windows (held-out synthetic streams — other seeds, the speech bank's test voices — or
``--data`` clips) are embedded as serving embeds them and cached like training's
(``embed_cache.py``: the same key, so evaluating twice embeds once); the fusion head then runs in
:class:`~fusionstream.engines.backends.manifest_onnx.ManifestRuntime` with its declared activation,
on the windows' own presence masks (fused), with only one declared modality (alone) and with one
removed (without). What is measured depends on the task:

- ``single_label``: accuracy over clear windows (as format 1), and fused over all labelled windows;
- ``multi_label``: micro-F1 at the model's thresholds over windows where every class is clearly in
  or out (top-class accuracy over clear windows beside it);
- ``embedding``: nearest-class-centroid accuracy — centroids of the even windows, the odd ones
  classified by cosine similarity — a label-free model's usefulness for telling the classes apart.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fusionstream.consumers.training.embed_cache import EmbeddedSet, embed_parts
from fusionstream.consumers.training.frozen_data import DIGITS, clip_parts, synthetic_parts
from fusionstream.consumers.training.frozen_heads import accuracy, micro_f1
from fusionstream.consumers.training.generate import progress_bar
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.manifest import Manifest, TaskSpec, load_manifest

BATCH = 512
METRIC = {"single_label": "accuracy", "multi_label": "micro-F1", "embedding": "nearest-centroid accuracy"}


def heldout_windows(manifest: Manifest, *, seconds: float, seed: int, data: Path | None, cache: Path | None,
                    console: Console, workers: int = 1) -> EmbeddedSet:
    """Embedded held-out windows, their label columns in the model's class order."""
    task = manifest.task
    assert task is not None
    labelled = task.kind != "embedding"
    with progress_bar(console) as progress:
        if data is not None:
            from fusionstream.consumers.training.clips import ClipsError

            try:
                classes, parts = clip_parts(data, task.classes if labelled else None)
            except (OSError, ValueError) as exc:  # each names the file (and the line of labels.csv)
                raise ClipsError(str(exc)) from None
            windows, _ = embed_parts(manifest, parts, classes, what="clips", progress=progress, cache=cache,
                                     workers=workers)
            return windows
        if labelled and sorted(task.classes) != sorted(DIGITS):
            raise ModelDirError(f"{manifest.path}: task.classes are not the synthetic source's digits 0-9: "
                                f"evaluate this model on your clips with --data DIR")
        windows, _ = embed_parts(manifest, synthetic_parts(seconds, seed, "test"), DIGITS, what="held-out streams",
                                 progress=progress, cache=cache, workers=workers)
    if labelled:  # label columns in the model's order
        order = [DIGITS.index(c) for c in task.classes]
        windows = EmbeddedSet(windows.emb, windows.mask, windows.coverage[:, order], tuple(task.classes))
    return windows


def fuse_all(runtime: Any, data: EmbeddedSet, mask: np.ndarray) -> np.ndarray:
    """The runtime's fusion output for every window under ``mask`` (absent embeddings zeroed, as serving)."""
    out = []
    for start in range(0, len(data), BATCH):
        rows = slice(start, start + BATCH)
        m = mask[rows].astype(np.float32)
        emb = {name: np.ascontiguousarray(data.emb[name][rows] * m[:, i : i + 1], dtype=np.float32)
               for i, name in enumerate(data.modalities)}
        out.append(runtime.fuse(emb, m))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def centroid_accuracy(vectors: np.ndarray, data: EmbeddedSet) -> float:
    """Odd clear windows classified by the nearest (cosine) centroid of the even ones' classes."""
    over = np.flatnonzero(data.clear & (data.label >= 0))
    if len(over) < 2:
        return 0.0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    fit, test = over[0::2], over[1::2]
    classes = np.unique(data.label[fit])
    centroids = np.stack([unit[fit][data.label[fit] == c].mean(axis=0) for c in classes])
    predicted = classes[(unit[test] @ centroids.T).argmax(axis=1)]
    return float((predicted == data.label[test]).mean())


def task_score(task: TaskSpec, outputs: np.ndarray, data: EmbeddedSet) -> float:
    if task.kind == "multi_label":
        over = data.certain
        return micro_f1(outputs[over], data.targets[over], np.asarray(task.thresholds))
    if task.kind == "embedding":
        return centroid_accuracy(outputs, data)
    return accuracy(outputs, data)


def evaluate_v2_command(model_dir: Path, *, seconds: float, seed: int, data: Path | None, backend: str,
                        quiet: bool, options: dict[str, Any] | None = None, cache: Path | None = None,
                        int8: bool = False) -> dict[str, Any]:
    from fusionstream.engines.backends.manifest_onnx import open_manifest_runtime, refuse_unservable

    console = Console(stderr=quiet)
    manifest = load_manifest(model_dir)
    refuse_unservable(manifest)
    if int8:
        raise ModelDirError(f"{manifest.path}: --int8 evaluates `fusionstream quantize`'s graphs, which format-1 "
                            f"model directories have only")
    task = manifest.task
    assert task is not None and manifest.fusion is not None
    windows = heldout_windows(manifest, seconds=seconds, seed=seed, data=data, cache=cache, console=console)
    if not len(windows):
        raise ModelDirError(f"{model_dir}: no held-out windows to evaluate on")
    names = windows.modalities
    with open_manifest_runtime(backend, manifest, **(options or {})) as runtime:
        started = time.perf_counter()
        fused_out = fuse_all(runtime, windows, windows.mask)
        elapsed = time.perf_counter() - started
        single, without = {}, {}
        for i, name in enumerate(names):
            only = np.zeros_like(windows.mask)
            only[:, i] = windows.mask[:, i]
            single[name] = task_score(task, fuse_all(runtime, windows, only), windows)
            if len(names) > 1:
                removed = windows.mask.copy()
                removed[:, i] = False
                without[name] = task_score(task, fuse_all(runtime, windows, removed), windows)
    fused = task_score(task, fused_out, windows)
    result: dict[str, Any] = {
        "task": task.kind, "metric": METRIC[task.kind], "fused": round(fused, 4),
        "single": {k: round(v, 4) for k, v in single.items()}, "without": {k: round(v, 4) for k, v in without.items()},
        "windows": int((windows.clear & (windows.label >= 0)).sum()), "all_windows": len(windows),
        "fusion_ms_per_window": round(1000 * elapsed / len(windows), 4),
        "backend": backend, "backend_options": {k: str(v) for k, v in (options or {}).items()},
    }
    if task.kind == "single_label":
        labelled = windows.label >= 0
        result["fused_all"] = round(float((fused_out[labelled].argmax(1) == windows.label[labelled]).mean()), 4)
    elif task.kind == "multi_label":
        result["accuracy"] = round(accuracy(fused_out, windows), 4)
    console.print(_table(result, f"{manifest.fusion.method} model v{manifest.version} ({task.kind}), "
                                 f"{result['windows']} clear of {len(windows)} windows"))
    return result


def _table(result: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("inputs")
    table.add_column(result["metric"], justify="right")
    table.add_row("fused (all declared modalities)", f"{result['fused']:.4f}")
    for name, value in result["single"].items():
        table.add_row(f"{name} alone", f"{value:.4f}")
    for name, value in result["without"].items():
        table.add_row(f"without {name}", f"{value:.4f}")
    if "fused_all" in result:
        table.add_row("fused, over all labelled windows", f"{result['fused_all']:.4f}")
    if "accuracy" in result:
        table.add_row("top-class accuracy (clear windows)", f"{result['accuracy']:.4f}")
    return table


__all__ = ["centroid_accuracy", "evaluate_v2_command", "heldout_windows"]
