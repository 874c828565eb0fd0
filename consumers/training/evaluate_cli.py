"""`fusionstream evaluate`: the deployed model directory on held-out windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from consumers.training.dataset import WindowSet
from consumers.training.evaluate import Evaluation, evaluate
from consumers.training.train import generate, progress_bar, synthetic_configs
from engines.backends import load_backend
from engines.spec import ModelSpec


def heldout(spec: ModelSpec, seconds: float, seed: int, workers: int = 2, console: Console | None = None,
            cache: Path | None = None) -> WindowSet:
    """Held-out synthetic windows: other seeds and the test voices of the speech bank."""
    with progress_bar(console) as progress:
        return generate(spec, synthetic_configs(seconds, seed, "test"), "held-out streams", workers, progress, cache)


def evaluation_table(result: Evaluation, title: str) -> Table:
    table = Table(title=title)
    table.add_column("inputs")
    table.add_column("accuracy (clear windows)", justify="right")
    table.add_row("fused (all modalities)", f"{result.fused:.4f}")
    for name, value in result.single.items():
        table.add_row(f"{name} alone", f"{value:.4f}")
    for name, value in result.without.items():
        table.add_row(f"without {name}", f"{value:.4f}")
    table.add_row("fused, over all windows", f"{result.fused_all:.4f}")
    return table


def evaluate_command(
    model_dir: Path, *, seconds: float, seed: int, data: Path | None, backend: str, quiet: bool,
    cache: Path | None = None,
) -> dict[str, Any]:
    console = Console(stderr=quiet)
    spec = ModelSpec.load(model_dir)
    if data is not None:
        from consumers.training.clips import load_clips

        with progress_bar(console) as progress:
            windows = load_clips(data, spec, progress=progress)
    else:
        windows = heldout(spec, seconds, seed, console=console, cache=cache)
    with load_backend(backend, model_dir) as engine:
        result = evaluate(engine, windows)
    console.print(evaluation_table(result, f"{spec.fusion} model v{spec.version} on {backend}, "
                                           f"{result.clear_windows} clear of {result.windows} windows"))
    return result.to_dict()
