"""`fusionstream evaluate`: a model directory (either format) on held-out windows, on the configured backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fusionstream.consumers.engine import model_title
from fusionstream.consumers.pipeline.reuse import Embedder
from fusionstream.consumers.pipeline.runner import Runtime
from fusionstream.consumers.training.embed_cache import EmbeddedSet
from fusionstream.consumers.training.evaluate import (
    HELDOUT_SECONDS,
    HELDOUT_SEED,
    embed_heldout,
    evaluate,
    heldout_parts,
)
from fusionstream.consumers.training.evaluate_by import heldout_voices, per_class, print_breakdowns, voice_scores
from fusionstream.consumers.training.frozen_data import Part, labelled_windows
from fusionstream.consumers.training.generate import progress_bar
from fusionstream.engines.backends import open_runtime
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.manifest import load_manifest
from fusionstream.stream.sources.renderers import DEFAULT_RENDERER
from fusionstream.stream.windows import Window

#: fp32 and int8 speed are measured this many times each, alternating.
SPEED_TURNS = 3
#: Windows per timed batch of the int8 speed comparison.
SPEED_BATCH = 32


def evaluate_command(
    model_dir: Path, *, seconds: float | None, seed: int | None, data: Path | None, backend: str, quiet: bool,
    options: dict[str, Any] | None = None, cache: Path | None = None, int8: bool = False,
    by: tuple[str, ...] = (), voices: tuple[str, ...] = (), clean: bool = False, renderer: str = DEFAULT_RENDERER,
) -> dict[str, Any]:
    """Score ``model_dir`` on held-out windows; ``by`` (``voice``, ``digit``) adds the breakdowns of
    :mod:`~fusionstream.consumers.training.evaluate_by` (``voices``: which, default the bank's test
    voices), ``clean`` renders the synthetic streams with no corruption, ``renderer`` names who draws
    their frames (``pillow``: :mod:`~fusionstream.stream.sources.render_alt`, a look training never saw).
    ``seconds`` and ``seed`` (None: :data:`HELDOUT_SECONDS`, :data:`HELDOUT_SEED`) draw the synthetic
    streams, so they are refused with ``data``, which scores every window of the clips."""
    console = Console(stderr=quiet)
    options = options or {}
    manifest = load_manifest(model_dir)
    if not manifest.servable:
        raise ModelDirError(f"{manifest.path}: an encoders-only directory (no task, no fusion head) has nothing to "
                            f"evaluate: train a head on it first (fusionstream train OUT --encoders {model_dir})")
    _check_breakdowns(manifest.task.kind if manifest.task else "", data, by, clean, renderer)
    if data is not None and (seconds is not None or seed is not None):
        raise ModelDirError("--seconds and --seed draw the synthetic held-out streams: --data scores every window "
                            "of your clips (choose which in labels.csv)")
    seconds = HELDOUT_SECONDS if seconds is None else seconds
    seed = HELDOUT_SEED if seed is None else seed
    classes, parts = heldout_parts(manifest, seconds=seconds, seed=seed, data=data, clean=clean, renderer=renderer)
    # Checked before anything is embedded: an unknown voice is one line, not a minute of work and a traceback.
    per_voice = heldout_voices(voices) if "voice" in by else ()
    drawn = f" ({renderer} renderer)" if renderer != DEFAULT_RENDERER else ""
    what = "clips" if data is not None else f"{'clean ' if clean else ''}held-out streams{drawn}"
    runtime: Runtime
    with open_runtime(backend, model_dir, **options) as runtime:
        with progress_bar(console) as progress:
            windows = embed_heldout(runtime, classes, parts, progress=progress, what=what, cache=cache,
                                    options=options)
            voice_windows = {
                voice: embed_heldout(runtime, classes, heldout_parts(manifest, seconds=seconds, seed=seed, data=None,
                                                                     voices=f"voice:{voice}", clean=clean,
                                                                     renderer=renderer)[1],
                                     progress=progress, what=f"voice {voice}", cache=cache, options=options)
                for voice in per_voice
            }
        if not len(windows) or not all(len(w) for w in voice_windows.values()):
            raise ModelDirError(f"{model_dir}: no held-out windows to evaluate on")
        result = evaluate(runtime, windows)
        if voice_windows:
            result["by_voice"] = {voice: voice_scores(runtime, w, "digit" in by) for voice, w in voice_windows.items()}
        if "digit" in by:
            result["by_digit"] = per_class(runtime, windows)
    described = ", ".join(f"{key} {value}" for key, value in options.items())
    task = result["task"]
    console.print(evaluation_table(result, f"{model_title(manifest)} ({task}) on {backend}"
                                           f"{f' ({described})' if described else ''}, "
                                           f"{result['windows']} clear of {result['all_windows']} windows{drawn}"))
    print_breakdowns(console, result, what)
    result |= {"backend": backend, "backend_options": {k: str(v) for k, v in options.items()}}
    if data is None:
        result |= {"clean": clean, "renderer": renderer}
    if int8:
        result["int8"] = _int8(model_dir, classes, parts, windows, result, cache, console)
    return result


def _check_breakdowns(task: str, data: Path | None, by: tuple[str, ...], clean: bool, renderer: str) -> None:
    """Refuse what cannot be measured: voices, clean rendering and another renderer are the synthetic
    streams' (a clip has one soundtrack and its own pictures), and a per-digit accuracy needs labels the
    model predicts (not an embedding task)."""
    if data is not None and ("voice" in by or clean or renderer != DEFAULT_RENDERER):
        raise ModelDirError("--by voice, --clean and --renderer render the synthetic held-out streams: they do not "
                            "apply to --data clips")
    if "digit" in by and task == "embedding":
        raise ModelDirError("--by digit needs a model that predicts labels: this one's task is embedding")


def evaluation_table(result: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("inputs")
    table.add_column(f"{result['metric']} (clear windows)" if result["metric"] == "accuracy" else result["metric"],
                     justify="right")
    table.add_row("fused (all declared modalities)", f"{result['fused']:.4f}")
    for name, value in result["single"].items():
        table.add_row(f"{name} alone", f"{value:.4f}" if value is not None else f"– (no window has {name})")
    for name, value in result["without"].items():
        table.add_row(f"without {name}", f"{value:.4f}")
    if "fused_all" in result:
        table.add_row("fused, over all labelled windows", f"{result['fused_all']:.4f}")
    if "accuracy" in result:
        table.add_row("top-class accuracy (clear windows)", f"{result['accuracy']:.4f}")
    return table


def _int8(model_dir: Path, classes: tuple[str, ...], parts: list[Part], fp32_windows: EmbeddedSet,
          fp32: dict[str, Any], cache: Path | None, console: Console) -> dict[str, Any]:
    """The same windows through the int8 encoders (``fusionstream quantize``): scores and their change,
    and speed beside fp32 (encoders + fusion, every frame encoded, batches of :data:`SPEED_BATCH`)."""
    int8_runtime: Runtime
    fp32_runtime: Runtime
    # onnxruntime is the backend that runs int8 graphs; it refuses, naming the directory, when there are none.
    with (
        open_runtime("onnxruntime", model_dir, precision="int8") as int8_runtime,
        open_runtime("onnxruntime", model_dir) as fp32_runtime,
    ):
        with progress_bar(console) as progress:
            windows = embed_heldout(int8_runtime, classes, parts, progress=progress, what="the same windows (int8)",
                                    cache=cache, options={"precision": "int8"})
        result = evaluate(int8_runtime, windows)
        sample = next(iter(labelled_windows(parts[0], fp32_runtime.manifest, len(classes),
                                            fp32_runtime.frame_side)))[0][:SPEED_BATCH]
        # In turns, best of each: this machine's speed drifts from minute to minute by more than
        # int8 and fp32 differ, so one measurement of each would compare two different minutes.
        timings = [(_ms_per_window(int8_runtime, sample), _ms_per_window(fp32_runtime, sample))
                   for _ in range(SPEED_TURNS)]
    assert len(windows) == len(fp32_windows)
    int8_ms, fp32_ms = (min(column) for column in zip(*timings, strict=True))
    console.print(evaluation_table(result, "the same windows with the int8 encoders"))
    change = round(result["fused"] - fp32["fused"], 4)
    console.print(
        f"int8: fused {result['metric']} {result['fused']:.4f} ({change:+.4f} against fp32), "
        f"{int8_ms:.2f} ms per window against {fp32_ms:.2f} ms at batch {len(sample)} ({fp32_ms / int8_ms:.2f}x)"
    )
    return result | {
        "fused_change": change,
        "ms_per_window": {"int8": round(int8_ms, 3), "fp32": round(fp32_ms, 3)},
        "speedup": round(fp32_ms / int8_ms, 3),
    }


def _ms_per_window(runtime: Runtime, windows: list[Window]) -> float:
    """Encoders and fusion head on ``windows`` as one batch, nothing reused (a fresh embedder)."""
    started = time.perf_counter()
    runtime.fuse(*Embedder(runtime, reuse=False)(windows))
    return 1000 * (time.perf_counter() - started) / max(1, len(windows))
