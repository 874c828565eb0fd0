"""The comparison of all fusion heads on the same held-out windows (the README's table)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fusionstream.consumers.pipeline.reuse import Embedder
from fusionstream.consumers.pipeline.runner import Runtime
from fusionstream.consumers.training.assemble import assemble, export_dir
from fusionstream.consumers.training.evaluate import (
    HELDOUT_SECONDS,
    HELDOUT_SEED,
    embed_heldout,
    evaluate,
    heldout_parts,
)
from fusionstream.consumers.training.frozen_data import labelled_windows
from fusionstream.consumers.training.generate import progress_bar
from fusionstream.engines.backends import open_runtime
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.spec import ModelSpec
from fusionstream.stream.windows import Window


def _ms_per_window(runtime: Runtime, windows: list[Window], repeats: int = 5) -> float:
    """Encoders and fusion head on ``windows`` as one batch, nothing reused, best of ``repeats``."""
    runtime.fuse(*Embedder(runtime, reuse=False)(windows))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.fuse(*Embedder(runtime, reuse=False)(windows))
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(windows)


def compare_heads(encoders: Any, heads: dict[str, Any], spec: ModelSpec, out: Path, console: Console,
                  cache: Path | None = None) -> str:
    """Export every head with the shared encoders, evaluate each on ONNX Runtime, write a markdown table."""
    lines: list[str] = []
    table = Table(title="fusion heads on held-out windows")
    for column in ("head", "fused", "single (v/a/t)", "without (v/a/t)", "head params", "ms b1", "ms b32"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as tmp:
        data = timing = None
        for name, head in heads.items():
            model_dir = Path(tmp) / name
            export_dir(assemble(encoders, name, head, spec), spec.replace(fusion=name), model_dir)
            runtime: Runtime
            with open_runtime("onnxruntime", model_dir) as runtime:
                if data is None:
                    # Every head shares the encoders, so the windows are embedded once, by the first.
                    classes, parts = heldout_parts(load_manifest(model_dir), seconds=HELDOUT_SECONDS,
                                                   seed=HELDOUT_SEED, data=None)
                    with progress_bar(console) as progress:
                        data = embed_heldout(runtime, classes, parts, progress=progress, what="held-out streams",
                                             cache=cache)
                    timing = next(iter(labelled_windows(parts[0], runtime.manifest, len(classes),
                                                        runtime.frame_side)))[0][:32]
                    lines += _header(clear_windows=int((data.clear & (data.label >= 0)).sum()))
                assert timing is not None
                result = evaluate(runtime, data)
                ms1, ms32 = _ms_per_window(runtime, timing[:1]), _ms_per_window(runtime, timing)
            params = sum(p.numel() for p in head.parameters())
            s, w = result["single"], result["without"]
            lines.append(
                f"| {name} | {result['fused']:.4f} | {s['video']:.4f} | {s['audio']:.4f} | {s['text']:.4f} | "
                f"{w['video']:.4f} | {w['audio']:.4f} | {w['text']:.4f} | {params:,} | {ms1:.2f} | {ms32:.3f} |"
            )
            table.add_row(name, f"{result['fused']:.4f}", f"{s['video']:.3f}/{s['audio']:.3f}/{s['text']:.3f}",
                          f"{w['video']:.3f}/{w['audio']:.3f}/{w['text']:.3f}", f"{params:,}", f"{ms1:.2f}",
                          f"{ms32:.3f}")
    console.print(table)
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def _header(clear_windows: int) -> list[str]:
    return [
        f"Held-out data: {int(HELDOUT_SECONDS)} s of synthetic streams (test voices, seed {HELDOUT_SEED}), "
        f"{clear_windows} clear windows. Accuracy over clear windows; ONNX Runtime on this machine's CPU.",
        "",
        "| head | fused | video alone | audio alone | text alone | without video | without audio | without text "
        "| parameters (head) | ms/window, batch 1 | ms/window, batch 32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
