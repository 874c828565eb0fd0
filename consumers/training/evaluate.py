"""How good a model directory is, either format, on any backend: held-out windows through the serving path.

The windows (held-out synthetic streams — other seeds, the speech bank's test voices — or
``--data`` clips) are embedded by the runtime of the backend being evaluated, as serving embeds
them (:class:`~fusionstream.consumers.pipeline.reuse.Embedder`, via ``embed_cache.embed_part``), once.
The fusion head then runs on the windows' own presence masks (fused), with only one declared
modality (alone) and with one removed (without): the embeddings of a masked modality are zeroed,
as serving gives an absent modality. What is measured depends on the task:

- ``single_label`` (format 1 is one): accuracy over clear windows, and fused over all labelled windows;
- ``multi_label``: micro-F1 at the model's thresholds over windows where every class is clearly in
  or out (top-class accuracy over clear windows beside it);
- ``embedding``: nearest-class-centroid accuracy — centroids of the even windows, the odd ones
  classified by cosine similarity — a label-free model's usefulness for telling the classes apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from fusionstream.consumers.pipeline.runner import Runtime
from fusionstream.consumers.training.embed_cache import EmbeddedSet, embed_part, encoders_key
from fusionstream.consumers.training.frozen_data import DIGITS, Part, clip_parts, data_key, synthetic_parts
from fusionstream.consumers.training.frozen_heads import accuracy, micro_f1
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.manifest import Manifest, TaskSpec
from fusionstream.stream.sources import Corruption
from fusionstream.stream.sources.renderers import DEFAULT_RENDERER

BATCH = 512
METRIC = {"single_label": "accuracy", "multi_label": "micro-F1", "embedding": "nearest-centroid accuracy"}
#: Bumped when how evaluation embeds changes: older ``--cache`` files then stop matching.
CACHE_FORMAT = 1

#: The held-out synthetic streams `evaluate` scores unless told otherwise: seconds, and a seed no
#: training run uses.
HELDOUT_SECONDS = 1200.0
HELDOUT_SEED = 10_000


def heldout_parts(manifest: Manifest, *, seconds: float, seed: int, data: Path | None, voices: str = "test",
                  clean: bool = False, renderer: str = DEFAULT_RENDERER) -> tuple[tuple[str, ...], list[Part]]:
    """The classes the data is labelled with and its parts: ``data``'s clips, else held-out synthetic streams
    spoken by ``voices`` (the bank's test voices, or ``voice:NAME`` alone), with no corruption when ``clean``,
    their frames drawn by ``renderer`` (``pillow``: a look training never saw).

    The streams' plan (digits, times, corruption states) depends on the seed only, so every ``voices``
    and every ``renderer`` gets the same digits at the same times: voices are compared on the same
    sentences, renderers on the same scenes drawn differently."""
    task = manifest.task
    assert task is not None
    labelled = task.kind != "embedding"
    if data is not None:
        from fusionstream.consumers.training.clips import ClipsError

        try:
            return clip_parts(data, task.classes if labelled else None)
        except (OSError, ValueError) as exc:  # each names the file (and the line of labels.csv)
            raise ClipsError(str(exc)) from None
    if labelled and sorted(task.classes) != sorted(DIGITS):
        raise ModelDirError(f"{manifest.path}: task.classes are not the synthetic source's digits 0-9: "
                            f"evaluate this model on your clips with --data DIR")
    parts = synthetic_parts(seconds, seed, voices)
    # In the config, so its repr (the cache key's data part) tells clean from corrupted streams and
    # one renderer's from another's.
    changes: dict[str, Any] = {"renderer": renderer}
    if clean:
        changes["corruption"] = Corruption.none()
    parts = [dataclasses.replace(p, config=dataclasses.replace(p.config, **changes)) for p in parts]
    return DIGITS, list(parts)


def embed_heldout(runtime: Runtime, classes: tuple[str, ...], parts: list[Part], *, progress: Progress,
                  what: str, cache: Path | None = None, options: dict[str, Any] | None = None) -> EmbeddedSet:
    """Every window of ``parts`` embedded by ``runtime`` (its label columns in the model's class order).

    With ``cache``, kept there under a key of the encoders' bytes, the data, the backend and its
    options (an int8 or another backend's embeddings are other embeddings)."""
    manifest = runtime.manifest
    path = None
    if cache is not None:
        key = repr((CACHE_FORMAT, encoders_key(manifest), data_key(parts, classes), runtime.name,
                    sorted((k, str(v)) for k, v in (options or {}).items())))
        path = cache / f"evaluation-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
        if path.is_file():
            windows = EmbeddedSet.load(path)
            progress.add_task(f"{what} (cached)", total=1, completed=1, info=f"{len(windows)} windows")
            return _in_model_order(windows, manifest)
    task = progress.add_task(f"embedding {what} on {runtime.name}", total=len(parts), info="")
    done: list[EmbeddedSet] = []
    for part in parts:
        done.append(embed_part(runtime, part, classes))  # type: ignore[arg-type]  # any runtime: by modality
        progress.update(task, advance=1, info=f"{sum(len(d) for d in done)} windows")
    windows = EmbeddedSet.concat(done)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        windows.save(path)
    return _in_model_order(windows, manifest)


def _in_model_order(windows: EmbeddedSet, manifest: Manifest) -> EmbeddedSet:
    task = manifest.task
    assert task is not None
    if task.kind == "embedding" or windows.classes == task.classes:
        return windows
    order = [windows.classes.index(c) for c in task.classes]
    return EmbeddedSet(windows.emb, windows.mask, windows.coverage[:, order], tuple(task.classes))


def fuse_all(runtime: Runtime, data: EmbeddedSet, mask: np.ndarray) -> np.ndarray:
    """The runtime's fusion output for every window under ``mask`` (absent embeddings zeroed, as serving)."""
    out = []
    for start in range(0, len(data), BATCH):
        rows = slice(start, start + BATCH)
        m = mask[rows].astype(np.float32)
        emb = {name: np.ascontiguousarray(data.emb[name][rows] * m[:, i : i + 1], dtype=np.float32)
               for i, name in enumerate(data.modalities)}
        out.append(runtime.fuse(emb, m))
    return np.concatenate(out) if out else np.zeros((0, runtime.task.outputs), np.float32)


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


def evaluate(runtime: Runtime, windows: EmbeddedSet) -> dict[str, Any]:
    """The scores of embedded ``windows`` through ``runtime``'s fusion head: fused, each declared
    modality alone (None for one that no window has), each removed (when there are several), and the task's
    extra figure."""
    task = runtime.task
    names = windows.modalities
    started = time.perf_counter()
    fused_out = fuse_all(runtime, windows, windows.mask)
    fusion_s = time.perf_counter() - started
    single, without = {}, {}
    for i, name in enumerate(names):
        only = np.zeros_like(windows.mask)
        only[:, i] = windows.mask[:, i]
        # A modality no window has (clips without captions) scores what an empty input guesses: no figure.
        single[name] = task_score(task, fuse_all(runtime, windows, only), windows) if only.any() else None
        if len(names) > 1:
            removed = windows.mask.copy()
            removed[:, i] = False
            without[name] = task_score(task, fuse_all(runtime, windows, removed), windows)
    result: dict[str, Any] = {
        "task": task.kind, "metric": METRIC[task.kind], "fused": round(task_score(task, fused_out, windows), 4),
        "single": {k: None if v is None else round(v, 4) for k, v in single.items()},
        "without": {k: round(v, 4) for k, v in without.items()},
        "windows": int((windows.clear & (windows.label >= 0)).sum()), "all_windows": len(windows),
        "fusion_ms_per_window": round(1000 * fusion_s / max(1, len(windows)), 4),
    }
    if task.kind == "single_label":
        labelled = windows.label >= 0
        result["fused_all"] = round(float((fused_out[labelled].argmax(1) == windows.label[labelled]).mean()), 4)
    elif task.kind == "multi_label":
        result["accuracy"] = round(accuracy(fused_out, windows), 4)
    return result


__all__ = [
    "HELDOUT_SECONDS",
    "HELDOUT_SEED",
    "centroid_accuracy",
    "embed_heldout",
    "evaluate",
    "fuse_all",
    "heldout_parts",
    "task_score",
]
