"""The comparison of all fusion heads on the same held-out windows (the README's table)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fusionstream.consumers.training.assemble import assemble, export_dir
from fusionstream.consumers.training.evaluate import evaluate
from fusionstream.consumers.training.evaluate_cli import heldout
from fusionstream.engines.backends import load_backend
from fusionstream.engines.spec import ModelSpec

HELDOUT_SECONDS = 1200.0
HELDOUT_SEED = 10_000


def _ms_per_window(backend, data, batch: int, repeats: int = 5) -> float:
    rows = data.batch(np.arange(min(batch, len(data))))
    backend.infer(rows)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        backend.infer(rows)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(rows)


def compare_heads(encoders, heads: dict, spec: ModelSpec, out: Path, console: Console,
                  cache: Path | None = None) -> str:
    """Export every head with the shared encoders, evaluate each on ONNX Runtime, write a markdown table."""
    data = heldout(spec, HELDOUT_SECONDS, HELDOUT_SEED, console=console, cache=cache)
    lines = [
        f"Held-out data: {int(HELDOUT_SECONDS)} s of synthetic streams (test voices, seed {HELDOUT_SEED}), "
        f"{int((data.clear & (data.label >= 0)).sum())} clear windows. Accuracy over clear windows; "
        "ONNX Runtime on this machine's CPU.",
        "",
        "| head | fused | video alone | audio alone | text alone | without video | without audio | without text "
        "| parameters (head) | ms/window, batch 1 | ms/window, batch 32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table = Table(title="fusion heads on held-out windows")
    for column in ("head", "fused", "single (v/a/t)", "without (v/a/t)", "head params", "ms b1", "ms b32"):
        table.add_column(column)
    for name, head in heads.items():
        model = assemble(encoders, name, head, spec)
        with tempfile.TemporaryDirectory() as tmp:
            export_dir(model, spec.replace(fusion=name), Path(tmp))
            with load_backend("onnxruntime", tmp) as backend:
                result = evaluate(backend, data)
                ms1, ms32 = _ms_per_window(backend, data, 1), _ms_per_window(backend, data, 32)
        params = sum(p.numel() for p in head.parameters())
        s, w = result.single, result.without
        lines.append(
            f"| {name} | {result.fused:.4f} | {s['video']:.4f} | {s['audio']:.4f} | {s['text']:.4f} | "
            f"{w['video']:.4f} | {w['audio']:.4f} | {w['text']:.4f} | {params:,} | {ms1:.2f} | {ms32:.3f} |"
        )
        table.add_row(name, f"{result.fused:.4f}", f"{s['video']:.3f}/{s['audio']:.3f}/{s['text']:.3f}",
                      f"{w['video']:.3f}/{w['audio']:.3f}/{w['text']:.3f}", f"{params:,}", f"{ms1:.2f}",
                      f"{ms32:.3f}")
    console.print(table)
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text
