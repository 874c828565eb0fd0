"""docs/training.md's ablation tables: what each change to the recipe does to one modality alone.

Each row trains one encoder (audio or video, the shipped architecture unless the row changes it)
with a linear classifier on that modality alone, on the same number of synthetic windows, for the
same epochs, and scores it on the same clean held-out windows (test voices, seed 10000; for video
also drawn by the second renderer): only the row's change differs. It is a small budget next to
`make model` (minutes, not most of an hour), so compare rows with each other, not with the
shipped model's figures, and mind the seed: run it with two.

    .venv/bin/python scripts/ablate.py [--modality audio|video] [--train-seconds 1200] [--epochs 4]
        [--seed 0] [--rows 0 3] [--by-voice] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from fusionstream.consumers.training.dataset import WindowSet
from fusionstream.consumers.training.generate import generate, progress_bar, synthetic_configs
from fusionstream.consumers.training.train import BATCH, SPEC_AUGMENT, speed_perturb
from fusionstream.engines.encoders.audio import AudioEncoder
from fusionstream.engines.encoders.image import ImageEncoder
from fusionstream.engines.spec import MODALITIES, ModelSpec
from fusionstream.stream.sources import Corruption, SyntheticConfig
from fusionstream.stream.sources.augment import Augmentation
from fusionstream.stream.sources.speech import SpeechBank, voices_of

#: The six voices of the first speech bank (the recipe before this table).
FIRST_VOICES = "voice:en-us,en,en-gb-x-rp,en+f3,en+m3,en+klatt"
AUDIO_ONLY = Augmentation().only("audio")
SHIPPED = {"channels": (32, 64, 96, 128), "pooling": "mean"}
#: (row, voices, render-time augmentation, SpecAugment, encoder options)
ROWS = (
    ("first bank's 6 voices, speed perturbation only", FIRST_VOICES, Augmentation.none(), None, SHIPPED),
    ("+ the 60 training voices", "train", Augmentation.none(), None, SHIPPED),
    ("+ pitch, tempo, room, gain per word", "train", AUDIO_ONLY, None, SHIPPED),
    ("+ SpecAugment", "train", AUDIO_ONLY, SPEC_AUGMENT, SHIPPED),
    ("+ wider encoder (48, 96, 144, 192 channels)", "train", AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "channels": (48, 96, 144, 192)}),
    ("+ mean and max pooling over time", "train", AUDIO_ONLY, SPEC_AUGMENT, {**SHIPPED, "pooling": "mean+max"}),
    ("+ vocal tract length perturbation, warp 0.85-1.18", "train", AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "pooling": "mean+max", "vtlp": (0.85, 1.18)}),
    ("+ cepstral smoothing, 16 coefficients", "train", AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "pooling": "mean+max", "cepstra": 16}),
    ("+ cepstral smoothing, 12 coefficients", "train", AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "pooling": "mean+max", "cepstra": 12}),
    ("+ vocal tract length perturbation, warp 0.9-1.1", "train", AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "pooling": "mean+max", "vtlp": (0.9, 1.1)}),
    # Row 5 against this on a bank made with WITH_MBROLA=1 (scripts/make_speech_bank.sh); the same on the other.
    ("row 5 without MBROLA's voices", "voice:" + ",".join(
        v for v in voices_of("train") if not v.startswith("mb-")), AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "pooling": "mean+max"}),
    # Row 5 against this on a bank with SVOX Pico's and RHVoice's voices in training (scripts/make_speech_bank.sh).
    ("row 5 without Pico's and RHVoice's voices", "voice:" + ",".join(
        v for v in voices_of("train") if not v.startswith(("pico-", "rhvoice-"))), AUDIO_ONLY, SPEC_AUGMENT,
     {**SHIPPED, "pooling": "mean+max"}),
)


#: The scene kinds at the rates first tried (the shipped recipe runs them at half these).
SCENE = {"affine": 0.6, "colour": 0.6, "blur": 0.3, "low_jpeg": 0.3, "occlusion": 0.15, "elastic": 0.35,
         "stroke": 0.3, "low_res": 0.25}
_SCENE_FIRST = {k: SCENE[k] for k in ("affine", "colour", "blur", "low_jpeg", "occlusion")}
_SCENE_HALF = {k: v / 2 for k, v in SCENE.items()}
_GLYPHS = dataclasses.replace(Augmentation.none(), **_SCENE_HALF, typeface=0.5, typeface_pool="all", glyph_style=0.3)
#: (row, render-time augmentation[, image encoder options]) for video; every row hears the same voices.
VIDEO_ROWS: tuple[tuple, ...] = (
    ("no augmentation", Augmentation.none()),
    ("+ affine, colour, blur, cheap JPEG, patches", dataclasses.replace(Augmentation.none(), **_SCENE_FIRST)),
    ("+ elastic, stroke width, low resolution", dataclasses.replace(Augmentation.none(), **SCENE)),
    ("+ TrueType typefaces on half the segments", dataclasses.replace(Augmentation.none(), **SCENE, typeface=0.5,
                                                                      typeface_pool="matplotlib")),
    ("typefaces alone, no scene augmentation",
     dataclasses.replace(Augmentation.none(), typeface=0.5, typeface_pool="matplotlib")),
    ("typefaces, scene augmentation at half its rates (the recipe of v2026.12.05.2)",
     dataclasses.replace(Augmentation.none(), **_SCENE_HALF, typeface=0.5, typeface_pool="matplotlib")),
    ("typefaces on 80 % of the segments, no scene augmentation",
     dataclasses.replace(Augmentation.none(), typeface=0.8, typeface_pool="matplotlib")),
    ("+ the font packages' typefaces beside matplotlib's, half-rate scenes (the shipped recipe)",
     dataclasses.replace(Augmentation.none(), **_SCENE_HALF, typeface=0.5, typeface_pool="all")),
    ("+ glyph styles (outlined, hollow, shadowed, blocky) on 30 % of the segments", _GLYPHS),
    ("+ the CNN on 64x64 grey (five pooling blocks, 16-128 channels) instead of 32x32", _GLYPHS,
     {"cnn_side": 64, "channels": (16, 32, 64, 96, 128)}),
    ("+ the CNN on 64x64 grey, a narrow first block (8-128 channels)", _GLYPHS,
     {"cnn_side": 64, "channels": (8, 32, 64, 96, 128)}),
    ("+ a strided first block on the 64x64 frame instead of averaging it to 32x32 (the shipped channels)", _GLYPHS,
     {"stem": "strided"}),
)


def modality_rows(data: WindowSet, modality: str) -> tuple[np.ndarray, np.ndarray]:
    column = MODALITIES.index(modality)
    rows = np.flatnonzero(data.mask[:, column] & (data.label >= 0) & data.clear)
    return getattr(data, modality)[rows], data.label[rows]


def _inputs(x: np.ndarray, modality: str) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32) / (255.0 if modality == "video" else 1.0))


def train(x: np.ndarray, labels: np.ndarray, spec: ModelSpec, epochs: int, seed: int, masks,
          options: dict, modality: str = "audio") -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if modality == "video":
        encoder: nn.Module = ImageEncoder(spec.embed_dim, spec.frames_per_window, spec.image_size, **options)
    else:
        options = dict(options)
        vtlp = options.pop("vtlp", None)
        encoder = AudioEncoder(spec.embed_dim, spec.sample_rate, spec.n_mels, **options)
        encoder.spec_augment, encoder.vtlp = masks, vtlp
    model = nn.Sequential(encoder, nn.Linear(spec.embed_dim, spec.n_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(labels) / BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), BATCH):
            index = np.sort(order[start : start + BATCH])
            batch = _inputs(x[index], modality)
            batch = speed_perturb(batch, rng) if modality == "audio" else batch
            loss = loss_fn(model(batch), torch.from_numpy(labels[index]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def score(
    model: nn.Module, x: np.ndarray, labels: np.ndarray, modality: str = "audio"
) -> tuple[float, dict[int, float]]:
    with torch.no_grad():
        predicted = np.concatenate([
            model(_inputs(x[i : i + 256], modality)).argmax(1).numpy() for i in range(0, len(labels), 256)
        ])
    right = predicted == labels
    return float(right.mean()), {d: float(right[labels == d].mean()) for d in range(10) if (labels == d).any()}


def held_out(spec: ModelSpec, seconds: float, renderer: str, progress, cache: Path, modality: str,
             voices: str = "test"):
    configs = [SyntheticConfig(streams=c.streams, seconds=c.seconds, seed=c.seed, voices=voices,
                               corruption=Corruption.none(), renderer=renderer)
               for c in synthetic_configs(seconds, 10, "test")]
    what = f"clean held-out windows ({renderer}{'' if voices == 'test' else ', ' + voices})"
    return modality_rows(generate(spec, configs, what, 1, progress, cache), modality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=["audio", "video"], default="audio")
    parser.add_argument("--train-seconds", type=float, default=1200.0)
    parser.add_argument("--eval-seconds", type=float, default=300.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(".cache/ablation"))
    parser.add_argument("--json", action="store_true", help="Also print the rows as one JSON line.")
    parser.add_argument("--rows", type=int, nargs="*", help="Only these rows (0-based), e.g. --rows 3 4 5.")
    parser.add_argument("--by-voice", action="store_true",
                        help="Audio: also score each test voice alone (their windows rendered apart).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    modality = args.modality
    console, spec, results = Console(), ModelSpec(version="ablation", fusion="concat"), []
    renderers = ("opencv", "pillow") if modality == "video" else ("opencv",)
    if modality == "video":
        table_rows = [(name, "train", augment, None, options[0] if options else {})
                      for name, augment, *options in VIDEO_ROWS]
    else:
        table_rows = list(ROWS)
    with progress_bar(console) as progress:
        sets = {r: held_out(spec, args.eval_seconds, r, progress, args.cache, modality) for r in renderers}
        voices = SpeechBank.load("test").voices if args.by_voice and modality == "audio" else ()
        by_voice = {v: held_out(spec, args.eval_seconds, "opencv", progress, args.cache, modality, f"voice:{v}")
                    for v in voices}
        rows = [table_rows[i] for i in args.rows] if args.rows else table_rows
        for name, voices, augment, masks, options in rows:
            started = time.perf_counter()
            data = generate(spec, synthetic_configs(args.train_seconds, args.seed, voices, augment),
                            f"training windows: {name}", 1, progress, args.cache)
            model = train(*modality_rows(data, modality), spec, args.epochs, args.seed, masks, options, modality)
            row: dict = {"row": name}
            for renderer, (x, labels) in sets.items():
                overall, digits = score(model, x, labels, modality)
                worst = min(digits, key=digits.__getitem__)
                suffix = "" if renderer == "opencv" else f"_{renderer}"
                row |= {f"{modality}_clean{suffix}": round(overall, 4), f"worst_digit{suffix}": worst,
                        f"worst_digit_accuracy{suffix}": round(digits[worst], 4)}
            for voice, (x, labels) in by_voice.items():
                row[f"voice:{voice}"] = round(score(model, x, labels, modality)[0], 4)
            results.append(row | {"seconds": round(time.perf_counter() - started, 1)})
    windows = {r: len(labels) for r, (_, labels) in sets.items()}
    table = Table(title=f"{modality} alone, clean held-out windows {windows}, test voices, seed {args.seed}")
    table.add_column("recipe")
    for renderer in renderers:
        table.add_column(f"{modality} alone ({renderer})")
        table.add_column("worst digit")
    table.add_column("s")
    for r in results:
        cells = []
        for renderer in renderers:
            suffix = "" if renderer == "opencv" else f"_{renderer}"
            cells += [f"{r[f'{modality}_clean{suffix}']:.4f}",
                      f"{r[f'worst_digit{suffix}']}: {r[f'worst_digit_accuracy{suffix}']:.2f}"]
        table.add_row(r["row"], *cells, f"{r['seconds']:.0f}")
    console.print(table)
    if by_voice:
        voice_table = Table(title=f"{modality} alone per test voice, clean held-out windows")
        voice_table.add_column("recipe")
        for voice in by_voice:
            voice_table.add_column(voice, justify="right")
        for r in results:
            voice_table.add_row(r["row"], *(f"{r[f'voice:{v}']:.4f}" for v in by_voice))
        console.print(voice_table)
    if args.json:
        print(json.dumps({"modality": modality, "windows": windows, "train_seconds": args.train_seconds,
                          "epochs": args.epochs, "seed": args.seed, "rows": results}))


if __name__ == "__main__":
    main()
