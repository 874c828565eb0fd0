"""Write a model directory from a trained ``MultimodalModel``, and check it against torch.

``export_model`` splits the model into four ONNX graphs — one per encoder and one for the
fusion head — because backends run each encoder only on rows where its modality is present
and may reuse embeddings (docs/architecture.md). Every graph has a dynamic batch axis named
``batch``. ``check_parity`` runs the directory through the onnxruntime backend against the
torch modules on fresh random inputs; ``export_model`` calls it unless told not to.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fusionstream.engines.encoders.image import FrameEncoder
from fusionstream.engines.errors import EngineError
from fusionstream.engines.features import random_batch
from fusionstream.engines.model import MultimodalModel
from fusionstream.engines.spec import FRAME_GRAPH, MODALITIES, TORCH_WEIGHTS, ModelSpec

if TYPE_CHECKING:
    import onnx

#: Output name of each encoder graph; the fusion graph's output is ``probs``.
EMBEDDING = "embedding"
PROBS = "probs"
#: Example batch for tracing: torch.export treats sizes 0 and 1 as constants, so never trace with those.
_TRACE_BATCH = 2
#: Placeholder output name during export (see ``export_graph``).
_TEMP_OUTPUT = "fusionstream_output"
#: Spec fields the weights depend on; the rest (version, metrics, hop, class names) may change freely.
_ARCHITECTURE = (
    "fusion", "fusion_options", "embed_dim", "frames_per_window", "image_size",
    "sample_rate", "window_ns", "text_buckets", "text_max_len", "n_mels", "audio_pooling",
    "video_stem",
)  # fmt: skip


class FusionProbs(nn.Module):
    """The exported fusion graph: a head's logits turned into probabilities."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``softmax(head(video, audio, text, mask))``."""
        return torch.softmax(self.head(video, audio, text, mask), dim=-1)


def _check_compatible(model: MultimodalModel, spec: ModelSpec) -> None:
    ours = model.spec
    changed = [name for name in _ARCHITECTURE if getattr(ours, name) != getattr(spec, name)]
    if ours.n_classes != spec.n_classes:
        changed.append("classes (count)")
    if changed:
        raise EngineError(f"the spec does not describe this model: {', '.join(changed)} differ from model.spec")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known-irrelevant chatter, and nothing else.

    - "The axis name: batch will not be used, since it shares the same shape constraints":
      every input of the fusion graph shares one batch ``Dim`` on purpose, and the axis is
      named ``batch`` regardless.
    - The registration logger's "torchvision is not installed. Skipping torchvision::nms":
      we use no torchvision ops.
    """
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*The axis name: \w+ will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere it appears in a (flat, subgraph-free) ONNX graph."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if info.name == old:
            info.name = new


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_name: str,
    opset: int = 18,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export one module to ONNX with a dynamic ``batch`` axis shared by all inputs and the output.

    ``args`` are example inputs whose batch size must be at least 2 (size 1 would be baked
    in as a constant). The file is self-contained (no external data) and passes the ONNX
    checker. Used by :func:`export_model`; public so tests and tools can export a single head.
    """
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=[_TEMP_OUTPUT],
            dynamic_shapes=tuple({0: batch} for _ in args),
            opset_version=opset,
            dynamo=True,  # the TorchScript exporter is deprecated since torch 2.9
            external_data=False,  # one self-contained file per graph (ours are a few MB)
            verbose=False,
        )
    path = Path(path)
    graph = onnx.load(str(path))
    # The exporter names values after aten ops, so the text encoder already has a value called
    # "embedding" (from aten.embedding): give that one a fresh name before naming the output.
    taken = {name for node in graph.graph.node for name in (*node.input, *node.output)}
    if output_name in taken:
        _rename_value(graph.graph, output_name, f"{output_name}_{len(taken)}")
    _rename_value(graph.graph, _TEMP_OUTPUT, output_name)
    onnx.helper.set_model_props(graph, metadata or {})
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path


def export_model(
    model: MultimodalModel,
    spec: ModelSpec,
    model_dir: str | os.PathLike[str],
    *,
    opset: int = 18,
    check: bool = True,
    rtol: float = 1e-4,
) -> list[Path]:
    """Write ``model_dir``: the ONNX graphs named in ``spec.files`` (four, plus the per-frame image
    encoder when the spec names one), ``model.pt`` and ``model.json``.

    ``spec`` may differ from ``model.spec`` in what does not change the weights (version,
    metrics, class names), so ``evaluate`` can record results. The model is exported from a
    float32 CPU copy in eval mode; the caller's model is left as it was. With ``check`` the
    files are then compared with torch (:func:`check_parity`), raising :class:`EngineError`
    beyond ``rtol``. Returns the written paths.
    """
    return _export_staged(model, spec, Path(model_dir), opset=opset, rtol=rtol if check else None)[0]


def export_checked(
    model: MultimodalModel, spec: ModelSpec, model_dir: str | os.PathLike[str], *, opset: int = 18, rtol: float = 1e-4
) -> dict[str, float]:
    """:func:`export_model` with its check, returning :func:`check_parity`'s errors per graph (what ``train``
    reports) rather than the paths: the check runs once, before the files replace anything."""
    return _export_staged(model, spec, Path(model_dir), opset=opset, rtol=rtol)[1]


def _export_staged(
    model: MultimodalModel, spec: ModelSpec, out: Path, *, opset: int, rtol: float | None
) -> tuple[list[Path], dict[str, float]]:
    _check_compatible(model, spec)
    # Written and checked in a staging folder beside ``out``, then moved in (model.json last): a training
    # stopped with Ctrl-C, or a failed check, used to leave ``out`` with new graphs beside the old head and
    # manifest, which `model check` could not tell from a model.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        staged = _export_into(model, spec, staging, opset=opset)
        errors = {} if rtol is None else check_parity(copy.deepcopy(model).float().cpu().eval(), staging, rtol=rtol)
        out.mkdir(parents=True, exist_ok=True)
        for path in staged:  # model.json is the last of them
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / path.name for path in staged], errors


def _export_into(model: MultimodalModel, spec: ModelSpec, out: Path, *, opset: int) -> list[Path]:
    """:func:`export_model`'s files, written into ``out``, ``model.json`` last in the list."""
    frozen = copy.deepcopy(model).float().cpu().eval()
    example = random_batch(spec, _TRACE_BATCH, 0, p_present=1.0)
    d = spec.embed_dim
    graphs: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], Sequence[str], str]] = {
        name: (encoder, (torch.from_numpy(getattr(example, name)),), [name], EMBEDDING)
        for name, encoder in frozen.encoders.items()
    }
    if spec.has_graph(FRAME_GRAPH):
        frames = torch.from_numpy(example.video[:, 0])
        graphs[FRAME_GRAPH] = (FrameEncoder(frozen.video_encoder).eval(), (frames,), [FRAME_GRAPH], EMBEDDING)
    embeddings = tuple(torch.randn(_TRACE_BATCH, d) for _ in MODALITIES)
    graphs["fusion"] = (
        FusionProbs(frozen.head).eval(),
        (*embeddings, torch.ones(_TRACE_BATCH, 3)),
        [*MODALITIES, "mask"],
        PROBS,
    )
    written = []
    with torch.no_grad():
        for name, (module, args, inputs, output) in graphs.items():
            path = out / spec.files[name]
            meta = {
                "fusionstream.graph": name,
                "fusionstream.version": spec.version,
                "fusionstream.fusion": spec.fusion,
            }
            written.append(
                export_graph(module, args, path, input_names=inputs, output_name=output, opset=opset, metadata=meta)
            )
    weights = out / TORCH_WEIGHTS
    torch.save(frozen.state_dict(), weights)
    return [*written, weights, spec.save(out)]


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def check_parity(
    model: MultimodalModel,
    model_dir: str | os.PathLike[str],
    batch_sizes: Sequence[int] = (1, 5),
    rtol: float = 1e-4,
    *,
    seed: int | None = None,
) -> dict[str, float]:
    """Run the directory through the onnxruntime backend (:func:`~fusionstream.engines.backends.open_runtime`,
    as serving does) and the matching torch modules on the same fresh random inputs (random masks
    included) at every batch size; return ``{graph: max relative error}``, a graph being a modality
    (its encoder: the per-frame one when the directory has it) or ``fusion``.

    The error is ``max|onnx - torch| / max|torch|`` over a graph's output. Raises
    :class:`EngineError` naming the worst graph's file if any error exceeds ``rtol``.
    """
    from fusionstream.engines.backends import open_runtime

    spec = ModelSpec.load(model_dir)
    _check_compatible(model, spec)
    reference = copy.deepcopy(model).float().cpu().eval()
    fusion = FusionProbs(reference.head).eval()
    rng = np.random.default_rng(seed)
    with open_runtime("onnxruntime", model_dir) as runtime, torch.no_grad():
        files = runtime.graph_files()
        errors = dict.fromkeys(files, 0.0)
        for size in batch_sizes:
            batch = random_batch(spec, size, rng)
            for name in runtime.modalities:
                x = getattr(batch, name)
                if name == "video" and runtime.embeds_frames:  # single frames: [B, K, 3, S, S] -> [B*K, 3, S, S]
                    x = x.reshape(-1, *x.shape[2:])
                    ref = reference.video_encoder.embed_frames(torch.from_numpy(x)).numpy()
                else:
                    ref = reference.encoders[name](torch.from_numpy(x)).numpy()
                (tensor,) = runtime.encoder(name).inputs.values()
                got = runtime.encode(name, {tensor.name: x})
                errors[name] = max(errors[name], _relative_error(got, ref))
            embeddings = {m: rng.standard_normal((size, spec.embed_dim), dtype=np.float32) for m in MODALITIES}
            ref = fusion(*(torch.from_numpy(e) for e in embeddings.values()), torch.from_numpy(batch.mask)).numpy()
            got = runtime.fuse(embeddings, batch.mask)
            errors["fusion"] = max(errors["fusion"], _relative_error(got, ref))
    worst = max(errors, key=errors.__getitem__)
    if errors[worst] > rtol:
        raise EngineError(
            f"ONNX Runtime disagrees with torch in {files[worst]}: max relative error "
            f"{errors[worst]:.2e} > {rtol:.0e} (all: {', '.join(f'{k} {v:.1e}' for k, v in errors.items())})"
        )
    return errors
