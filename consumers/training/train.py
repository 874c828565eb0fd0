"""`fusionstream train` / `export`: the source article's `fit`, on windows from the serving aligner.

Stages:
1. Encoders, end to end: a concatenation head plus one auxiliary classifier per
   modality (so every encoder learns to stand alone), with modality dropout.
2. Heads: with the encoders frozen, every fusion head is fitted on cached
   embeddings with modality dropout, and scored on validation windows.
3. Export: the chosen head with the encoders, as ONNX graphs checked against torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fusionstream.consumers.training.assemble import assemble, export_dir
from fusionstream.consumers.training.dataset import WindowSet
from fusionstream.consumers.training.generate import generate, progress_bar, synthetic_configs
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.spec import FUSION_HEADS, MODALITIES, ModelSpec
from fusionstream.stream.sources.augment import Augmentation

VALIDATION_SECONDS = 600.0
BATCH = 64
HEAD_EPOCHS = 40
MODALITY_DROPOUT = 0.3
#: SpecAugment of the audio encoder's log-mel while training: (masks, widest) of mel bands (of 40),
#: then of frames (of 98 in a 1 s window).
SPEC_AUGMENT = ((2, 5), (2, 10))
#: The audio encoder's pooling over time for new models: the mean and the max (docs/training.md's
#: ablation: +2 points of audio alone on unseen voices over the mean alone, at the same cost).
AUDIO_POOLING = "mean+max"
#: The image encoder's first block for new models: the frame averaged to 32×32 first (``pool``). A
#: strided convolution over the whole 64×64 frame (``strided``) helped the small ablation but not the
#: full recipe (docs/training.md, "Glyph styles and a strided first block").
VIDEO_STEM = "pool"


@dataclass(frozen=True)
class TrainOptions:
    out: Path
    fusion: str = "best"
    data: Path | None = None
    train_seconds: float = 4800.0
    epochs: int = 8
    seed: int = 0
    workers: int = 2
    compare: Path | None = None
    cache: Path | None = None
    init: Path | None = None
    #: Render-time augmentation of the synthetic training streams and SpecAugment (not of validation).
    augment: bool = True
    #: The model's version (every prediction carries it); None: :func:`model_version`.
    version: str | None = None


def _torch_batch(data: WindowSet, index: np.ndarray, mask: np.ndarray | None = None) -> tuple:
    """The model's inputs for the rows: one tensor per modality (``MODALITIES`` order), then the mask."""
    import torch

    batch = data.batch(index, mask)
    return (*(torch.from_numpy(getattr(batch, m)) for m in MODALITIES), torch.from_numpy(batch.mask))


def _drop(mask: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Modality dropout: hide each present modality with probability ``p``, keeping at least one."""
    keep = rng.random(mask.shape) >= p
    dropped = mask & keep
    empty = ~dropped.any(axis=1) & mask.any(axis=1)
    if empty.any():
        # Restore one present modality at random in rows that lost all of them.
        for row in np.flatnonzero(empty):
            dropped[row, rng.choice(np.flatnonzero(mask[row]))] = True
    return dropped


def speed_perturb(audio, rng: np.random.Generator, low: float = 0.88, high: float = 1.12):
    """Resample each waveform by a random factor (pitch and tempo together, like another speaker's
    vocal tract), freshly every epoch: the training voices then stand for many more."""
    import torch

    n = audio.shape[1]
    out = torch.empty_like(audio)
    for row, factor in enumerate(rng.uniform(low, high, len(audio))):
        length = max(2, round(n * factor))
        stretched = torch.nn.functional.interpolate(audio[row : row + 1, None], size=length, mode="linear")[0, 0]
        if length >= n:
            start = (length - n) // 2
            out[row] = stretched[start : start + n]
        else:
            out[row].zero_()
            out[row, (n - length) // 2 : (n - length) // 2 + length] = stretched
    return out


def train_encoders(
    spec: ModelSpec, train: WindowSet, epochs: int, seed: int, progress: Progress, init: Path | None = None,
    spec_augment: tuple[tuple[int, int], tuple[int, int]] | None = None,
):
    """Stage 1; returns the trained ``MultimodalModel`` (concat head)."""
    import torch
    from torch import nn

    from fusionstream.engines.model import MultimodalModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultimodalModel(spec.replace(fusion="concat", fusion_options={}))
    if init is not None:
        # Fine-tuning: start from another model directory's encoders (its head is not reused).
        from fusionstream.engines.spec import TORCH_WEIGHTS

        state = torch.load(init / TORCH_WEIGHTS, map_location="cpu", weights_only=True)
        encoders = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing = model.load_state_dict(encoders, strict=False).missing_keys
        if any(not k.startswith("head.") for k in missing):
            raise SystemExit(f"{init} has other encoders than this model: missing {missing[:3]}")
    if "audio" in model.modalities:
        model.encoders["audio"].spec_augment = spec_augment  # type: ignore[union-attr]
    aux = nn.ModuleList(nn.Linear(spec.embed_dim, spec.n_classes) for _ in model.modalities)
    params = list(model.parameters()) + list(aux.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    labelled = np.flatnonzero(train.label >= 0)
    steps = epochs * math.ceil(len(labelled) / BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    task = progress.add_task("training encoders", total=steps, info="")
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(labelled)
        running, seen = 0.0, 0
        for start in range(0, len(order), BATCH):
            index = np.sort(order[start : start + BATCH])
            mask = _drop(train.mask[index], rng, MODALITY_DROPOUT)
            *inputs, present_t = _torch_batch(train, index)
            if "audio" in model.modalities:  # an augmentation of the waveform itself
                column = model.modalities.index("audio")
                inputs[column] = speed_perturb(inputs[column], rng)
            labels = torch.from_numpy(train.label[index])
            # Encoders see every present row (for the auxiliary losses); the head sees the dropped mask.
            embeddings = model.embed(*inputs, present_t)
            loss = loss_fn(model.head(*embeddings, torch.from_numpy(mask.astype(np.float32))), labels)
            present = torch.from_numpy(train.mask[index])
            for m, emb in enumerate(embeddings):
                rows = present[:, m]
                if rows.any():
                    loss = loss + 0.5 * loss_fn(aux[m](emb[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(index)
            seen += len(index)
            progress.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {running / seen:.3f}")
    model.eval()
    if "audio" in model.modalities:
        model.encoders["audio"].spec_augment = None  # type: ignore[union-attr]
    return model


# -- stage 2: heads on frozen embeddings -----------------------------------------------------------


def embed(model, data: WindowSet, progress: Progress, what: str) -> np.ndarray:
    """Frozen embeddings ``[N, M, D]``, one per modality of the model (zeros where absent)."""
    import torch

    out = np.zeros((len(data), len(model.modalities), model.spec.embed_dim), np.float32)
    task = progress.add_task(f"embedding {what}", total=len(data), info="")
    with torch.inference_mode():
        for start in range(0, len(data), 256):
            index = np.arange(start, min(start + 256, len(data)))
            out[index] = torch.stack(model.embed(*_torch_batch(data, index)), dim=1).numpy()
            progress.advance(task, len(index))
    return out


def train_head(name: str, spec: ModelSpec, emb: np.ndarray, data: WindowSet, seed: int,
               options: dict | None = None):
    """Fit one fusion head on frozen embeddings ``emb [N, M, D]`` with modality dropout."""
    import torch
    from torch import nn

    from fusionstream.engines.fusion import make_head

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = make_head(name, spec.embed_dim, spec.n_classes, modalities=emb.shape[1], **(options or {}))
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    labelled = np.flatnonzero(data.label >= 0)
    loss_fn = nn.CrossEntropyLoss()
    steps = HEAD_EPOCHS * math.ceil(len(labelled) / 256)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    emb_t = torch.from_numpy(emb)
    for _ in range(HEAD_EPOCHS):
        head.train()
        order = rng.permutation(labelled)
        for start in range(0, len(order), 256):
            index = order[start : start + 256]
            mask = torch.from_numpy(_drop(data.mask[index], rng, MODALITY_DROPOUT).astype(np.float32))
            e = emb_t[index] * mask[:, :, None]
            logits, aux = head.forward_train(*e.unbind(1), mask)
            loss = loss_fn(logits, torch.from_numpy(data.label[index])) + aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    head.eval()
    return head


def head_accuracy(head, emb: np.ndarray, data: WindowSet, mask: np.ndarray | None = None) -> float:
    """Accuracy over clear windows of ``head`` on frozen embeddings."""
    import torch

    mask = data.mask if mask is None else mask
    over = data.clear & (data.label >= 0)
    with torch.inference_mode():
        m = torch.from_numpy(mask.astype(np.float32))
        e = torch.from_numpy(emb) * m[:, :, None]
        predicted = head(*e.unbind(1), m).argmax(dim=1).numpy()
    return float((predicted[over] == data.label[over]).mean())


def robust_score(head, emb: np.ndarray, data: WindowSet) -> tuple[float, float]:
    """(fused accuracy, worst accuracy with one modality removed): what a head is chosen on."""
    fused = head_accuracy(head, emb, data)
    worst = 1.0
    for m in range(emb.shape[1]):
        removed = data.mask.copy()
        removed[:, m] = False
        worst = min(worst, head_accuracy(head, emb, data, removed))
    return fused, worst


# -- stage 3: export -------------------------------------------------------------------------------


def model_version(out: Path, today: str) -> str:
    """``today``, or ``today.N`` when the model this run replaces in ``out`` was trained today too:
    every prediction carries its model's version, so two models must never share one."""
    try:
        previous = load_manifest(out).version  # either format: `train --encoders` writes format 2
    except (OSError, ValueError, ModelDirError):  # no model there yet, or not one this version can read
        return today
    if previous != today and not previous.startswith(today + "."):
        return today
    number = previous.removeprefix(today + ".") if previous != today else "1"
    return f"{today}.{int(number) + 1 if number.isdigit() else 2}"


def train_command(options: TrainOptions) -> ModelSpec:
    console = Console()
    started = time.perf_counter()
    version = options.version or model_version(options.out, time.strftime("%Y.%m.%d"))
    spec = ModelSpec(version=version, fusion="concat",
                     audio_pooling=AUDIO_POOLING, video_stem=VIDEO_STEM)
    if options.init is not None:  # a fine-tune keeps the encoders' architecture, older models' too
        init = ModelSpec.load(options.init)
        spec = spec.replace(audio_pooling=init.audio_pooling, video_stem=init.video_stem)
    if options.fusion != "best" and options.fusion not in FUSION_HEADS:
        raise SystemExit(f"unknown fusion head {options.fusion!r}: choose one of {', '.join(FUSION_HEADS)} or best")
    if options.compare is not None and options.data is not None:
        import typer  # a usage error: refused before the training, which it failed after

        raise typer.BadParameter("compares the heads on the synthetic digit streams, not on your clips (the table "
                                 "printed after training compares them on your validation windows)",
                                 param_hint="--compare")
    with progress_bar(console) as progress:
        if options.data is not None:
            from fusionstream.consumers.training.clips import ClipsError, classes_of, load_clips, read_labels, split

            try:
                spec = spec.replace(classes=classes_of(read_labels(options.data)))
                clips = load_clips(options.data, spec, progress=progress)
            except (OSError, ValueError) as exc:  # each names the file (and the line of labels.csv)
                raise ClipsError(str(exc)) from None
            train_set, val_set = split(clips, 0.2, options.seed)
            _warn_of_scarce_classes(spec, train_set, console)
        else:
            augment = Augmentation() if options.augment else Augmentation.none()
            try:
                augment.require()
            except ImportError as exc:
                raise SystemExit(f"error: {exc} (or train with --no-augment)") from None
            train_set = generate(spec, synthetic_configs(options.train_seconds, options.seed, "train", augment),
                                 "training streams", options.workers, progress, options.cache)
            val_set = generate(spec, synthetic_configs(VALIDATION_SECONDS, options.seed + 500, "train"),
                               "validation streams", options.workers, progress, options.cache)
        encoders = train_encoders(spec, train_set, options.epochs, options.seed, progress, options.init,
                                  spec_augment=SPEC_AUGMENT if options.augment else None)
        train_emb = embed(encoders, train_set, progress, "training windows")
        val_emb = embed(encoders, val_set, progress, "validation windows")
        names = list(FUSION_HEADS) if options.fusion == "best" else [options.fusion]
        task = progress.add_task("fitting fusion heads", total=len(names), info="")
        scored: dict[str, tuple[object, tuple[float, float]]] = {}
        for name in names:
            progress.update(task, info=name)
            head = train_head(name, spec, train_emb, train_set, options.seed)
            scored[name] = (head, robust_score(head, val_emb, val_set))
            progress.advance(task)

    table = Table(title="fusion heads on validation windows (clear windows)")
    for column in ("head", "fused", "worst with one modality removed"):
        table.add_column(column)
    for name, (_, (fused, worst)) in scored.items():
        table.add_row(name, f"{fused:.4f}", f"{worst:.4f}")
    console.print(table)
    # The fused figure decides; the worst-case one breaks near-ties (within half a point).
    best_fused = max(f for _, (f, _) in scored.values())
    chosen = max((n for n, (_, (f, _)) in scored.items() if f >= best_fused - 0.005),
                 key=lambda n: scored[n][1][1])
    head = scored[chosen][0]
    fused, worst = scored[chosen][1]
    spec = spec.replace(
        fusion=chosen,
        metrics={"validation": {"fused": round(fused, 4), "worst_without_one": round(worst, 4)},
                 "trained_on_windows": len(train_set), "train_seconds": round(time.perf_counter() - started, 1)},
    )
    model = assemble(encoders, chosen, head, spec)
    parity = export_dir(model, spec, options.out)
    console.print(f"[bold]{chosen}[/] head exported to {options.out} (ONNX parity: max rel. error "
                  f"{max(parity.values()):.2e}) in {time.perf_counter() - started:.0f} s")
    if options.compare is not None:
        from fusionstream.consumers.training.compare import compare_heads

        compare_heads(encoders, {n: h for n, (h, _) in scored.items()}, spec, options.compare, console,
                      cache=options.cache)
    return spec


#: Fewer clear training windows than this for a class, and it is unlikely to be learnt at all.
SCARCE_WINDOWS = 5


def _warn_of_scarce_classes(spec: ModelSpec, train_set: WindowSet, console: Console) -> None:
    """A class whose spans give (almost) no clear window is in the model and never predicted: say so."""
    clear = train_set.label[train_set.clear]
    warn_of_scarce_classes({name: int((clear == index).sum()) for index, name in enumerate(spec.classes)}, console)


def warn_of_scarce_classes(clear_windows: dict[str, int], console: Console) -> None:
    """Warn of the classes with fewer than :data:`SCARCE_WINDOWS` clear training windows (counts by class)."""
    scarce = {name: n for name, n in clear_windows.items() if n < SCARCE_WINDOWS}
    if scarce:
        listed = ", ".join(f"{name!r} ({n})" for name, n in scarce.items())
        console.print(f"[yellow]warning:[/] too few clear training windows for {listed} (a window is clear when one "
                      f"span covers 75 % of it; fewer than {SCARCE_WINDOWS}): label more of it, or it will hardly "
                      "ever be predicted")


def export_command(model_dir: Path, out: Path) -> None:
    """Load ``model.pt`` from ``model_dir`` and write checked ONNX graphs to ``out``."""
    import torch

    from fusionstream.engines.model import MultimodalModel
    from fusionstream.engines.spec import TORCH_WEIGHTS

    console = Console()
    manifest = load_manifest(model_dir)  # either format, or one line on what is wrong with it
    if manifest.source_format != 1:
        raise ModelDirError(f"{model_dir} is a format {manifest.source_format} model (imported encoders, "
                            "`train --encoders`): its graphs are ONNX already and it has no torch weights to export; "
                            "`fusionstream model check` checks it")
    spec = ModelSpec.load(model_dir)
    model = MultimodalModel(spec)
    model.load_state_dict(torch.load(model_dir / TORCH_WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    errors = export_dir(model, spec, out)
    console.print(f"exported {spec.fusion} model to {out}; parity against torch: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))

