"""Writing a complete format-2 model directory from an encoders directory and a trained head.

The fusion graph takes ``emb_<modality>`` ``[B, size]`` per declared modality and ``mask``
``[B, declared]`` and gives the head's raw output; ``model.json`` declares the activation the
runtime applies (``softmax`` for single-label, ``sigmoid`` for multi-label, ``none`` for the
embedding task's fused vector), so the graph stays the torch module and parity is exact. The
directory is written to a staging folder beside ``OUT``, checked there (ONNX against torch, then
``fusionstream model check``'s :func:`check_model_dir`), and only then moved into ``OUT``: a failed
export leaves ``OUT`` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fusionstream.consumers.training.embed_cache import EmbeddedSet
from fusionstream.engines.errors import EngineError, ModelDirError
from fusionstream.engines.manifest import Manifest, TextPreprocess
from fusionstream.engines.spec import SPEC_FILE

FUSION_FILE = "fusion.onnx"
ACTIVATION = {"single_label": "softmax", "multi_label": "sigmoid", "embedding": "none"}
#: Largest relative error between the ONNX head and torch (as ``export_model``'s check).
RTOL = 1e-4


def encoder_files(manifest: Manifest) -> list[str]:
    """Every file the declared modalities use: their graphs (fp32 and int8) and tokenizers."""
    files = []
    for modality in manifest.modalities.values():
        files.append(modality.encoder.file)
        if modality.encoder.int8_file:  # `fusionstream quantize` ran on the encoders: their int8 graphs too
            files.append(modality.encoder.int8_file)
        if isinstance(modality.preprocess, TextPreprocess) and modality.preprocess.tokenizer:
            files.append(modality.preprocess.tokenizer)
    return files


def input_names(modalities: tuple[str, ...]) -> list[str]:
    return [*(f"emb_{m}" for m in modalities), "mask"]


def check_out(out: Path, encoders: Manifest) -> None:
    """Refuse writing the model over its own encoders directory (it would stop being one)."""
    if out.resolve() == encoders.directory.resolve():
        raise ModelDirError(f"{out}: this is the encoders directory; write the trained model to another directory")
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"{out} exists and is not a directory")


def parity(head: Any, path: Path, data: EmbeddedSet, seed: int = 0) -> float:
    """Max relative error of the ONNX head against torch, on validation embeddings at batch 1 and 5 with
    random presence masks (some rows with nothing present)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    names = input_names(head.modalities)
    worst = 0.0
    for size in (1, 5):
        index = rng.choice(len(data), size) if len(data) else np.zeros(0, int)
        embs = [data.emb[m][index] if len(data) else rng.standard_normal((size, head.sizes[m]), dtype=np.float32)
                for m in head.modalities]
        mask = (rng.random((size, len(head.modalities))) < 0.7).astype(np.float32)
        embs = [np.ascontiguousarray(e * mask[:, i : i + 1], dtype=np.float32) for i, e in enumerate(embs)]
        (got,) = session.run(None, dict(zip(names, [*embs, mask], strict=True)))
        with torch.inference_mode():
            ref = head(*(torch.from_numpy(a) for a in (*embs, mask))).numpy()
        worst = max(worst, float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12)))
    return worst


def write_model_dir(out: Path, encoders: Manifest, head: Any, *, task: dict[str, Any], version: str,
                    metrics: dict[str, Any], validation: EmbeddedSet) -> float:
    """Write ``out`` (encoders copied, ``fusion.onnx``, ``model.json``), checked; returns the parity error."""
    import torch

    from fusionstream.engines.export import export_graph
    from fusionstream.engines.fusion.projected import exportable
    from fusionstream.engines.manifest_check import check_model_dir

    check_out(out, encoders)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        files = encoder_files(encoders)
        for name in files:
            shutil.copy2(encoders.directory / name, staging / name)
        modalities = tuple(encoders.modalities)
        if tuple(head.modalities) != modalities:  # the graph's inputs are named after the encoders' modalities
            raise EngineError(f"the head takes {', '.join(head.modalities)} but {encoders.path} declares "
                              f"{', '.join(modalities)}")
        output = "embedding" if task["kind"] == "embedding" else "scores"
        head = head.eval()
        example = (*(torch.randn(2, head.sizes[m]) for m in modalities), torch.ones(2, len(modalities)))
        meta = {"fusionstream.graph": "fusion", "fusionstream.version": version, "fusionstream.fusion": head.method}
        with torch.no_grad():
            export_graph(exportable(head).eval(), example, staging / FUSION_FILE, input_names=input_names(modalities),
                         output_name=output, metadata=meta)
        error = parity(head, staging / FUSION_FILE, validation)
        if error > RTOL:
            raise EngineError(f"ONNX Runtime disagrees with torch in {FUSION_FILE}: max relative error "
                              f"{error:.2e} > {RTOL:.0e}")
        source = json.loads(encoders.path.read_text(encoding="utf-8"))
        doc = {
            "format": 2,
            "version": version,
            "window": source["window"],
            "task": task,
            "modalities": source["modalities"],  # verbatim: the encoders' declared preprocessing
            "fusion": {
                "file": FUSION_FILE,
                "method": head.method,
                "inputs": {**{m: f"emb_{m}" for m in modalities}, "mask": "mask"},
                "output": {"name": output, "activation": ACTIVATION[task["kind"]]},
            },
            "metrics": metrics,
        }
        (staging / SPEC_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        check_model_dir(staging)
        out.mkdir(parents=True, exist_ok=True)
        for name in (*files, FUSION_FILE, SPEC_FILE):  # model.json last: a reader never sees it without its graphs
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return error


__all__ = ["ACTIVATION", "FUSION_FILE", "check_out", "encoder_files", "parity", "write_model_dir"]
