"""Format-2 model directories for tests (docs/model-format.md), built here with no download: the
shipped model's encoder graphs (per-frame video, audio, hashed-n-gram text) with a small fusion
head exported from torch, for any subset of modalities and any task."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from fusionstream.consumers.settings import default_model_dir
from fusionstream.engines.spec import ModelSpec

#: The shipped model's graph per modality, and its input (role, name, dtype).
ENCODERS = {
    "video": ("frame.onnx", "pixels", "frame", "float32"),
    "audio": ("audio.onnx", "samples", "audio", "float32"),
    "text": ("text.onnx", "ids", "text", "int64"),
}


def _output(path: Path) -> tuple[str, int]:
    graph = onnx.load(str(path)).graph
    out = graph.output[0]
    return out.name, out.type.tensor_type.shape.dim[1].dim_value


def encoders_manifest(out: Path, modalities: Sequence[str], source: Path | None = None) -> dict[str, Any]:
    """Copy the shipped encoders of ``modalities`` into ``out``; their manifest entries."""
    source = source or default_model_dir()
    spec = ModelSpec.load(source)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for name in modalities:
        file, role, graph_input, dtype = ENCODERS[name]
        shutil.copy2(source / file, out / file)
        output, size = _output(out / file)
        encoder: dict[str, Any] = {"file": file, "inputs": {role: {"name": graph_input, "dtype": dtype}},
                                   "output": {"name": output, "size": size}}
        if name == "video":
            encoder["per_frame"] = True
            pre: dict[str, Any] = {"frames": spec.frames_per_window, "height": spec.image_size,
                                   "width": spec.image_size}
        elif name == "audio":
            pre = {"sample_rate": spec.sample_rate, "samples": spec.samples_per_window}
        else:
            pre = {"hashed_ngrams": {"buckets": spec.text_buckets, "ngrams": list(spec.text_ngrams),
                                     "max_len": spec.text_max_len}}
        entries[name] = {"encoder": encoder, "preprocess": pre}
    return entries


def export_head(path: Path, sizes: dict[str, int], outputs: int, seed: int = 0) -> None:
    """A small fusion head: per-modality projections, masked, concatenated, one linear layer."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project = nn.ModuleList(nn.Linear(size, 16) for size in sizes.values())
            self.out = nn.Linear(16 * len(sizes), outputs)

        def fuse(self, embeddings: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
            parts = [torch.relu(p(e)) * mask[:, i : i + 1]
                     for i, (p, e) in enumerate(zip(self.project, embeddings, strict=True))]
            return self.out(torch.cat(parts, dim=1))

    # torch.export needs a fixed signature: one per modality count.
    class Head1(Head):
        def forward(self, e0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.fuse([e0], mask)

    class Head2(Head):
        def forward(self, e0: torch.Tensor, e1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.fuse([e0, e1], mask)

    class Head3(Head):
        def forward(self, e0: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.fuse([e0, e1, e2], mask)

    head = (Head1, Head2, Head3)[len(sizes) - 1]()
    from fusionstream.engines.export import export_graph

    example = (*(torch.randn(2, size) for size in sizes.values()), torch.ones(2, len(sizes)))
    export_graph(head.eval(), example, path, input_names=[*(f"emb_{m}" for m in sizes), "mask"],
                 output_name="scores")


def write_v2_model(
    out: Path,
    modalities: Sequence[str] = ("video", "audio"),
    task: dict[str, Any] | None = None,
    activation: str = "softmax",
    window: tuple[int, int] = (1000, 500),
) -> Path:
    """A complete, servable format-2 directory at ``out``; returns it."""
    task = task or {"kind": "single_label", "classes": [str(d) for d in range(10)]}
    entries = encoders_manifest(out, modalities)
    sizes = {m: entries[m]["encoder"]["output"]["size"] for m in modalities}
    outputs = task["size"] if task["kind"] == "embedding" else len(task["classes"])
    export_head(out / "fusion.onnx", sizes, outputs)
    doc = {
        "format": 2,
        "version": f"test-{'-'.join(modalities)}-{task['kind']}",
        "window": {"length_ms": window[0], "hop_ms": window[1]},
        "task": task,
        "modalities": entries,
        "fusion": {"file": "fusion.onnx", "method": "custom",
                   "inputs": {**{m: f"emb_{m}" for m in modalities}, "mask": "mask"},
                   "output": {"name": "scores", "activation": activation}},
    }
    (out / "model.json").write_text(json.dumps(doc, indent=2))
    return out
