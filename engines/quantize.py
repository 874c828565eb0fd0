"""int8 encoders for the CPU: static quantization of a model directory's ONNX graphs.

ONNX Runtime's static QDQ quantization, calibrated on real windows (min/max of each
activation), weights per channel. Only the CNN bodies are quantized (convolutions, ReLUs
and poolings, which ONNX Runtime then runs as int8 kernels): the audio front end (a DFT as
a convolution, the mel matrix, the log) and the layer normalisations keep float32, because
a log of int8 power spectra loses the quiet half of the dynamic range, and the final
projections are tiny.
The text encoder (an embedding lookup and a mean) and the fusion head stay float32:
they cost a few percent of a window.

The quantized graphs are written beside the originals (``video.int8.onnx`` ...) and named
in ``model.json`` under ``<graph>_int8``; ``load_backend("onnxruntime", dir, precision="int8")``
runs them. ``fusionstream evaluate --int8`` reports the accuracy change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from fusionstream.engines.errors import EngineError
from fusionstream.engines.features import Batch
from fusionstream.engines.spec import FRAME_GRAPH, INT8, ModelSpec

#: Graphs quantized, in order; the text encoder and the fusion head stay float32 (see above).
QUANTIZED = ("video", "audio", FRAME_GRAPH)


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
        target = model_dir / f"{Path(spec.files[graph]).stem}.int8.onnx"
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
