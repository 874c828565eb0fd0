"""Fitting and scoring fusion heads on frozen embeddings of any sizes, for the three format-2 tasks.

- ``single_label``: softmax cross-entropy on the windows some class covers; scored by accuracy over
  clear windows (as ``train``'s stage 2).
- ``multi_label``: one binary loss per class on every window (a window no class covers is a
  negative for all), per-class thresholds chosen on validation to maximise each class's F1; scored
  by micro-F1 over windows where every class is clearly in or out.
- ``embedding``: the head outputs the ``size``-wide fused vector, trained through a linear
  classifier with cross-entropy (the classifier is not exported); scored by that classifier's accuracy.

Every head is :class:`~fusionstream.engines.fusion.projected.ProjectedHead`, trained with modality
dropout over the declared modalities, so it copes with any of them missing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionstream.consumers.training.embed_cache import EmbeddedSet

#: As ``train``'s stage 2 (not imported from there: ``train`` imports ``evaluate``, which imports this).
MODALITY_DROPOUT = 0.3

HEAD_EPOCHS = 40
#: Largest and smallest training batch: a few hundred windows still get several steps per epoch.
BATCH, MIN_BATCH = 256, 32
#: Candidate multi-label thresholds (each must lie in (0, 1): docs/model-format.md).
THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)


@dataclass
class FittedHead:
    """A trained head; ``classifier`` is the embedding task's training-only classifier."""

    method: str
    head: Any  # ProjectedHead
    classifier: Any = None
    thresholds: np.ndarray | None = None
    #: (fused, worst with one declared modality removed: None with a single modality).
    score: tuple[float, float | None] = (0.0, None)
    metrics: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: a head's tensors are tiny ([256, 64]), and on a busy machine
    intra-op threads cost far more in contention than they save (measured: 12 s vs 0.7 s per head)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tensors(data: EmbeddedSet, index: np.ndarray, mask: np.ndarray) -> list:
    """Embeddings of the rows (zeroed where ``mask`` says absent) and the mask, as the head takes them."""
    import torch

    m = torch.from_numpy(mask.astype(np.float32))
    embs = [torch.from_numpy(data.emb[name][index]) * m[:, i : i + 1] for i, name in enumerate(data.modalities)]
    return [*embs, m]


def rows_for(task: str, data: EmbeddedSet) -> np.ndarray:
    """The windows a task trains on: labelled ones, or every window for multi-label (negatives too)."""
    return np.arange(len(data)) if task == "multi_label" else np.flatnonzero(data.label >= 0)


def fit_head(method: str, task: str, data: EmbeddedSet, *, outputs: int, epochs: int = HEAD_EPOCHS,
             seed: int = 0) -> FittedHead:
    """Fit one head (``outputs`` wide: the classes, or the embedding size) on frozen embeddings."""
    import torch
    from torch import nn

    from fusionstream.engines.fusion.projected import ProjectedHead
    from fusionstream.engines.model import modality_dropout

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sizes = {m: e.shape[1] for m, e in data.emb.items()}
    head = ProjectedHead(method, sizes, outputs)
    rows = rows_for(task, data)
    head.fit_normalizer({m: torch.from_numpy(e[rows]) for m, e in data.emb.items()},
                        torch.from_numpy(data.mask[rows].astype(np.float32)))
    classifier = nn.Linear(outputs, len(data.classes)) if task == "embedding" else None
    params = list(head.parameters()) + (list(classifier.parameters()) if classifier is not None else [])
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    batch = int(np.clip(len(rows) // 16, MIN_BATCH, BATCH))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * math.ceil(len(rows) / batch)))
    ce, bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()
    labels = torch.from_numpy(data.label)
    targets = torch.from_numpy(data.targets.astype(np.float32))
    for _ in range(epochs):
        head.train()
        order = rng.permutation(rows)
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            # each present modality hidden with probability MODALITY_DROPOUT, at least one kept per row
            dropped = modality_dropout(torch.from_numpy(data.mask[index].astype(np.float32)), MODALITY_DROPOUT,
                                       generator=generator).numpy() > 0.5
            out, aux = head.forward_train(*_tensors(data, index, dropped))
            if task == "multi_label":
                loss = bce(out, targets[index])
            else:
                loss = ce(out if classifier is None else classifier(out), labels[index])
            optimizer.zero_grad(set_to_none=True)
            (loss + aux).backward()
            optimizer.step()
            scheduler.step()
    head.eval()
    if classifier is not None:
        classifier.eval()
    return FittedHead(method, head, classifier)


def scores(fitted: FittedHead, task: str, data: EmbeddedSet, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-window class scores: probabilities (single-, multi-label) or the classifier's logits (embedding)."""
    import torch

    mask = data.mask if mask is None else mask
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), 1024):
            index = np.arange(start, min(start + 1024, len(data)))
            y = fitted.head(*_tensors(data, index, mask[index]))
            if fitted.classifier is not None:
                y = fitted.classifier(y)
            out.append((torch.sigmoid(y) if task == "multi_label" else torch.softmax(y, dim=-1)).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(data.classes)), np.float32)


def accuracy(probs: np.ndarray, data: EmbeddedSet) -> float:
    """Top-class accuracy over clear labelled windows."""
    over = data.clear & (data.label >= 0)
    return float((probs[over].argmax(axis=1) == data.label[over]).mean()) if over.any() else 0.0


def micro_f1(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> float:
    predicted = probs >= thresholds
    tp = float((predicted & targets).sum())
    wrong = float((predicted ^ targets).sum())
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 1.0


def pick_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class, the candidate threshold with the best F1 (ties: the one nearest 0.5; no positives: 0.5)."""
    out = np.full(probs.shape[1], 0.5)
    for c in range(probs.shape[1]):
        positives = targets[:, c]
        if not positives.any():
            continue
        best = (-1.0, 0.0)
        for t in THRESHOLDS:
            predicted = probs[:, c] >= t
            tp = float((predicted & positives).sum())
            key = (2 * tp / (2 * tp + float((predicted ^ positives).sum())), -abs(float(t) - 0.5))
            if key > best:
                best, out[c] = key, float(t)
    return out


def _task_score(fitted: FittedHead, task: str, data: EmbeddedSet, mask: np.ndarray | None = None) -> float:
    probs = scores(fitted, task, data, mask)
    if task == "multi_label":
        assert fitted.thresholds is not None
        over = data.certain
        return micro_f1(probs[over], data.targets[over], fitted.thresholds)
    return accuracy(probs, data)


def evaluate_head(fitted: FittedHead, task: str, data: EmbeddedSet) -> FittedHead:
    """Score ``fitted`` on validation windows (choosing its thresholds first, for multi-label)."""
    probs = scores(fitted, task, data)
    metrics: dict[str, float] = {"accuracy": accuracy(probs, data)}
    if task == "multi_label":
        over = data.certain
        fitted.thresholds = pick_thresholds(probs[over], data.targets[over])
    fused = _task_score(fitted, task, data)
    if task == "multi_label":
        metrics["micro_f1"] = fused
    worst: float | None = None
    if len(data.modalities) > 1:
        for i in range(len(data.modalities)):
            removed = data.mask.copy()
            removed[:, i] = False
            value = _task_score(fitted, task, data, removed)
            worst = value if worst is None else min(worst, value)
        metrics["worst_without_one"] = worst  # type: ignore[assignment]
    fitted.score = (fused, worst)
    fitted.metrics = {k: round(float(v), 4) for k, v in metrics.items()}
    return fitted


def choose(fitted: dict[str, FittedHead]) -> str:
    """The best fused score decides; the worst-case one breaks near-ties (within half a point), as ``train``."""
    best = max(f.score[0] for f in fitted.values())
    near = [n for n, f in fitted.items() if f.score[0] >= best - 0.005]
    return max(near, key=lambda n: (fitted[n].score[1] if fitted[n].score[1] is not None else 0.0,
                                    fitted[n].score[0]))


__all__ = ["HEAD_EPOCHS", "FittedHead", "accuracy", "choose", "evaluate_head", "fit_head", "micro_f1",
           "pick_thresholds", "rows_for", "scores"]
