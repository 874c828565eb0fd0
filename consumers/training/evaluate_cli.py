"""`fusionstream evaluate`: the deployed model directory on held-out windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fusionstream.consumers.training.dataset import WindowSet
from fusionstream.consumers.training.evaluate import Evaluation, evaluate
from fusionstream.consumers.training.generate import generate, progress_bar, synthetic_configs
from fusionstream.engines.backends import load_backend
from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.spec import INT8, ModelSpec

#: fp32 and int8 speed are measured this many times each, alternating.
SPEED_TURNS = 3


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
    options: dict[str, Any] | None = None, cache: Path | None = None, int8: bool = False,
) -> dict[str, Any]:
    from fusionstream.consumers.engine import model_format

    if model_format(model_dir) == 2:  # any encoders, any task: through the format-2 runtime
        from fusionstream.consumers.training.evaluate_v2 import evaluate_v2_command

        return evaluate_v2_command(model_dir, seconds=seconds, seed=seed, data=data, backend=backend, quiet=quiet,
                                   options=options, cache=cache, int8=int8)
    console = Console(stderr=quiet)
    spec = ModelSpec.load(model_dir)
    if int8 and not _int8_graphs(spec):
        raise ModelDirError(f"{model_dir} has no int8 graphs: run `fusionstream quantize {model_dir}` first")
    if data is not None:
        from fusionstream.consumers.training.clips import ClipsError, load_clips

        try:
            with progress_bar(console) as progress:
                windows = load_clips(data, spec, progress=progress)
        except (OSError, ValueError) as exc:  # each names the file (and the line of labels.csv)
            raise ClipsError(str(exc)) from None
    else:
        windows = heldout(spec, seconds, seed, console=console, cache=cache)
    options = options or {}
    with load_backend(backend, model_dir, **options) as engine:
        result = evaluate(engine, windows)
    described = ", ".join(f"{key} {value}" for key, value in options.items())
    console.print(evaluation_table(result, f"{spec.fusion} model v{spec.version} on {backend}"
                                           f"{f' ({described})' if described else ''}, "
                                           f"{result.clear_windows} clear of {result.windows} windows"))
    out = result.to_dict() | {"backend": backend, "backend_options": {k: str(v) for k, v in options.items()}}
    if int8:
        out["int8"] = _int8(model_dir, spec, windows, result, console)
    return out


def _int8(model_dir: Path, spec: ModelSpec, windows: WindowSet, fp32: Evaluation, console: Console) -> dict[str, Any]:
    """The same windows through the int8 encoders: accuracy and its change, and speed beside fp32."""
    from fusionstream.engines.bench import measure_latency

    with (
        load_backend("onnxruntime", model_dir, precision="int8") as int8_engine,
        load_backend("onnxruntime", model_dir) as fp32_engine,
    ):
        result = evaluate(int8_engine, windows)
        # In turns, best of each: this machine's speed drifts from minute to minute by more than
        # int8 and fp32 differ, so one measurement of each would compare two different minutes.
        timings = [
            (measure_latency(int8_engine, 32)["per_window"], measure_latency(fp32_engine, 32)["per_window"])
            for _ in range(SPEED_TURNS)
        ]
    int8_ms, fp32_ms = (min(column) for column in zip(*timings, strict=True))
    graphs = ", ".join(_int8_graphs(spec))
    console.print(evaluation_table(result, f"the same windows with the int8 encoders ({graphs})"))
    change = round(result.fused - fp32.fused, 4)
    console.print(
        f"int8: fused accuracy {result.fused:.4f} ({change:+.4f} against fp32), "
        f"{int8_ms:.2f} ms per window against {fp32_ms:.2f} ms at batch 32 ({fp32_ms / int8_ms:.2f}x)"
    )
    return result.to_dict() | {
        "fused_change": change,
        "ms_per_window": {"int8": round(int8_ms, 3), "fp32": round(fp32_ms, 3)},
        "speedup": round(fp32_ms / int8_ms, 3),
    }


def _int8_graphs(spec: ModelSpec) -> list[str]:
    return [name.removesuffix(INT8) for name in spec.files if name.endswith(INT8)]
