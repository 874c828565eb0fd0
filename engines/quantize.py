"""int8 encoders for the CPU, written beside a model directory's ONNX graphs.

**Format 1** (:func:`quantize_model`): ONNX Runtime's static QDQ quantization, calibrated on real
windows (min/max of each activation), weights per channel. Only the CNN bodies are quantized (convolutions, ReLUs
and poolings, which ONNX Runtime then runs as int8 kernels): the audio front end (a DFT as
a convolution, the mel matrix, the log) and the layer normalisations keep float32, because
a log of int8 power spectra loses the quiet half of the dynamic range, and the final
projections are tiny.
The text encoder (an embedding lookup and a mean) and the fusion head stay float32:
they cost a few percent of a window.

The quantized graphs are written beside the originals (``video.int8.onnx`` ...) and named
in ``model.json`` under ``<graph>_int8``.

**Format 2** (:func:`quantize_manifest`): the encoders are anyone's (transformers, CNNs) and their
inputs come from declared preprocessing, so there is no calibration set to draw on: ONNX Runtime's
dynamic quantization, weights of ``MatMul`` and ``Gemm`` to int8 (per tensor) and their activations
quantized per batch at run time. That is where a transformer spends its time; convolutions stay
float32, because ONNX Runtime's dynamic ``ConvInteger`` is slower on the CPU than its float
convolution (measured: a ResNet-18 at 64×64 took twice as long). Each quantized graph is named in
``model.json`` as its encoder's ``int8_file`` (docs/model-format.md); an encoder with nothing to
quantize gets none.

``open_runtime("onnxruntime", dir, precision="int8")`` runs the int8 graphs of either format;
``fusionstream evaluate --int8`` reports the accuracy change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from fusionstream.engines.errors import EngineError
from fusionstream.engines.features import Batch
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.spec import FRAME_GRAPH, INT8, SPEC_FILE, ModelSpec

#: Graphs quantized, in order; the text encoder and the fusion head stay float32 (see above).
QUANTIZED = ("video", "audio", FRAME_GRAPH)
#: Ops whose weights format 2's dynamic quantization makes int8 (see above).
DYNAMIC_OPS = ("MatMul", "Gemm")
#: Ops a dynamically quantized graph runs in integers (none: nothing was quantized).
_INTEGER_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat"}


def int8_name(file: str) -> str:
    """``video.onnx`` → ``video.int8.onnx``."""
    return f"{Path(file).stem}.int8.onnx"


def _inputs(graph: str, batch: Batch) -> np.ndarray:
    if graph == FRAME_GRAPH:
        return batch.video.reshape(-1, *batch.video.shape[2:])
    return getattr(batch, graph)


def _cnn_body(model_path: Path) -> list[str]:
    """The CNN body of a graph: Conv, Relu and MaxPool nodes from the first convolution that feeds
    a ReLU on. Quantizing the ReLUs and poolings too keeps the body in int8 from end to end;
    a float round trip around every pooling costs more than int8 saves."""
    import onnx

    nodes = list(onnx.load(str(model_path)).graph.node)
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    first = next(
        (i for i, n in enumerate(nodes) if n.op_type == "Conv" and consumers.get(n.output[0]) == ["Relu"]), None
    )
    if first is None:
        return []
    return [n.name for n in nodes[first:] if n.op_type in ("Conv", "Relu", "MaxPool")]


def quantize_model(
    model_dir: str | os.PathLike[str],
    calibration: Sequence[Batch],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the int8 encoder graphs of ``model_dir``, calibrated on ``calibration`` batches (every
    modality present in each row), and name them in ``model.json``. Returns the written paths."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_dir = Path(model_dir)
    spec = ModelSpec.load(model_dir)
    if not calibration:
        raise EngineError("quantization needs at least one calibration batch")

    class Reader(CalibrationDataReader):
        def __init__(self, graph: str) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(
                {graph: _inputs(graph, batch)} for batch in calibration
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    written: list[Path] = []
    files = dict(spec.files)
    for graph in QUANTIZED:
        if not spec.has_graph(graph):
            continue
        if progress is not None:
            progress(graph)
        source = model_dir / spec.files[graph]
        prepared = model_dir / f".{graph}.prep.onnx"
        target = model_dir / int8_name(spec.files[graph])
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            body = _cnn_body(prepared)
            quantize_static(
                str(prepared),
                str(target),
                Reader(graph),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_quantize=body,
            )
        finally:
            prepared.unlink(missing_ok=True)
        files[f"{graph}{INT8}"] = target.name
        written.append(target)
    spec.replace(files=files).save(model_dir)
    return written


def _integer_ops(path: Path) -> int:
    import onnx

    return sum(node.op_type in _INTEGER_OPS for node in onnx.load(str(path)).graph.node)


def quantize_manifest(
    model_dir: str | os.PathLike[str], *, progress: Callable[[str], None] | None = None
) -> dict[str, Path | None]:
    """Write the dynamic int8 graph of each encoder of a format-2 ``model_dir`` (or encoders
    directory) and name it in ``model.json`` as the encoder's ``int8_file``; check them as a
    runtime will. Returns ``{modality: written path, or None when it had nothing to quantize}``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fusionstream.engines.manifest_check import check_model_dir

    manifest = load_manifest(model_dir)
    if manifest.source_format != 2:
        raise EngineError(f"{manifest.path} is format 1: quantize it with quantize_model (calibrated)")
    directory = manifest.directory
    doc = json.loads(manifest.path.read_text(encoding="utf-8"))
    written: dict[str, Path | None] = {}
    for name, modality in manifest.modalities.items():
        if progress is not None:
            progress(name)
        entry = doc["modalities"][name]["encoder"]
        entry.pop("int8_file", None)
        source = directory / modality.encoder.file
        prepared = directory / f".{name}.prep.onnx"
        target = directory / int8_name(modality.encoder.file)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(target), op_types_to_quantize=list(DYNAMIC_OPS),
                             weight_type=QuantType.QInt8, per_channel=False)
        finally:
            prepared.unlink(missing_ok=True)
        if _integer_ops(target) == 0:  # e.g. a CNN: a copy in float32 would only cost disk and load time
            target.unlink()
            written[name] = None
            continue
        entry["int8_file"] = target.name
        written[name] = target
    staged = directory / f".{SPEC_FILE}.tmp{os.getpid()}"
    staged.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    staged.replace(manifest.path)  # atomic: a reader sees the old manifest or the new one
    check_model_dir(directory, int8=True)
    return written
