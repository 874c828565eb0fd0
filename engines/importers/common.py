"""What every importer shares: the error, the window, a job and its result, ONNX export and reading.

torch and onnxruntime are imported inside the functions that need them, so that importing an
importer (as ``fusionstream model --help`` does) costs nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionstream.engines.errors import EngineError

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    import torch

#: Largest relative error between the ONNX graph and the torch module it was exported from.
RTOL = 1e-4
#: The graph file of each modality inside an encoders directory.
GRAPH_FILES = {"video": "video.onnx", "audio": "audio.onnx", "text": "text.onnx"}
#: ONNX element types of the dtypes the format allows (docs/model-format.md).
DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}
#: The exporter's placeholder output name, renamed afterwards (see ``export_onnx``).
_TEMP_OUTPUT = "fusionstream_output"
#: Example sizes for tracing: torch.export treats sizes 0 and 1 as constants.
TRACE_BATCH = 2

#: A progress callback: told the step an importer starts ("exporting", "checking parity", ...).
Step = Callable[[str], None]


class ImportSourceError(EngineError):
    """What was given to ``model import`` cannot be imported; the message names the file or field."""


@dataclass(frozen=True)
class Window:
    """The window the encoders directory is for (``window`` in ``model.json``)."""

    length_ms: int
    hop_ms: int

    def samples(self, rate: int, what: str) -> int:
        """Samples of one window at ``rate`` Hz; refuses a window that is not a whole number of them."""
        if (self.length_ms * rate) % 1000:
            raise ImportSourceError(
                f"{what}: a {self.length_ms} ms window is not a whole number of samples at {rate} Hz"
            )
        return self.length_ms * rate // 1000

    def to_dict(self) -> dict[str, int]:
        return {"length_ms": self.length_ms, "hop_ms": self.hop_ms}


#: The window of a new encoders directory when neither the options nor the sources say (format 1's).
DEFAULT_WINDOW = Window(1000, 500)


@dataclass(frozen=True)
class Imported:
    """One modality an importer wrote into the staging directory."""

    modality: str
    #: Where it came from, for the summary (a directory, a ``module:function``, a file).
    source: str
    #: The modality's ``model.json`` entry: ``{"encoder": ..., "preprocess": ...}``.
    entry: dict[str, Any]
    #: The plain file names it wrote (the graph first).
    files: tuple[str, ...]
    #: Max relative error of the graph against its torch reference; ``None`` where there is none.
    parity: float | None
    #: The graph's inputs as ``name [dims]`` (for the summary).
    inputs: str = ""
    #: Anything the user should know (an assumed default, "copied").
    note: str = ""

    @property
    def size(self) -> int:
        return int(self.entry["encoder"]["output"]["size"])


@dataclass(frozen=True)
class Job:
    """One source to import: checked when planned (cheap), run into a staging directory later."""

    #: What the progress line says (``text from ./minilm``).
    label: str
    #: The modalities it writes.
    modalities: tuple[str, ...]
    run: Callable[[Path, Window, Step], list[Imported]] = field(repr=False)
    #: The window the source was made for, if it says (the default window of a new directory).
    window: Window | None = None
    #: Whether its graphs only work with that window's length (a format-1 audio graph takes fixed samples).
    fixes_length: bool = False


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def check_error(error: float, what: str, rtol: float = RTOL) -> float:
    """``error`` when within ``rtol``; else the one-line refusal naming ``what``."""
    if not error <= rtol:  # NaN fails too
        raise ImportSourceError(
            f"{what}: ONNX Runtime disagrees with torch: max relative error {error:.2e} > {rtol:.0e}"
        )
    return error


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and transformers' chatter (progress bars, known-irrelevant warnings)."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_name: str,
    axes: Sequence[dict[int, str]],
    max_sizes: dict[str, int] | None = None,
    metadata: dict[str, str] | None = None,
    opset: int = 18,
) -> Path:
    """Export ``module`` to one self-contained ONNX file with the named dynamic ``axes`` per input.

    Axes with the same name share one dimension (``batch``, ``sequence``); ``max_sizes`` bounds
    some. Like ``engines.export.export_graph`` (opset 18, the dynamo exporter, output renamed
    afterwards), which only knows the batch axis; falls back to the TorchScript exporter for a
    module torch.export cannot trace.
    """
    import onnx
    import torch

    from fusionstream.engines.export import _rename_value

    bounds = max_sizes or {}
    dims = {name: torch.export.Dim(name, min=1, **({"max": bounds[name]} if name in bounds else {}))
            for axis in axes for name in axis.values()}
    named = list(zip(input_names, axes, strict=True))
    dynamic_shapes = {name: {i: dims[dim] for i, dim in axis.items()} for name, axis in named}
    common = {"input_names": list(input_names), "output_names": [_TEMP_OUTPUT], "opset_version": opset}
    with quiet(), torch.no_grad():
        try:
            torch.onnx.export(module, args, str(path), dynamic_shapes=dynamic_shapes, dynamo=True,
                              external_data=False, verbose=False, **common)
        except Exception as first:
            dynamic_axes = {name: dict(axis) for name, axis in named}
            dynamic_axes[_TEMP_OUTPUT] = {0: "batch"}
            try:
                torch.onnx.export(module, args, str(path), dynamic_axes=dynamic_axes, dynamo=False, **common)
            except Exception:
                raise ImportSourceError(f"cannot export to ONNX: {type(first).__name__}: {first}") from first
    graph = onnx.load(str(path))
    taken = {name for node in graph.graph.node for name in (*node.input, *node.output)}
    if output_name in taken:  # a value the exporter named after an op (aten.embedding → "embedding")
        _rename_value(graph.graph, output_name, f"{output_name}_{len(taken)}")
    _rename_value(graph.graph, _TEMP_OUTPUT, output_name)
    onnx.helper.set_model_props(graph, metadata or {})
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path


@dataclass(frozen=True)
class Value:
    """One graph input or output: name, dtype name (or ``type N``), dims (an int or an axis name)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def describe(self) -> str:
        return f"{self.name} [{', '.join(str(d) for d in self.dims)}]"


def _value(info: onnx.ValueInfoProto) -> Value:
    tensor = info.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return Value(info.name, DTYPES.get(tensor.elem_type, f"type {tensor.elem_type}"), dims)


def graph_io(path: Path) -> tuple[list[Value], list[Value]]:
    """A graph's real inputs (initializers listed as inputs left out) and outputs, without its weights."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise ImportSourceError(f"{path}: not an ONNX graph ({type(exc).__name__}: {exc})") from None
    weights = {init.name for init in graph.initializer}
    return [_value(i) for i in graph.input if i.name not in weights], [_value(o) for o in graph.output]


def describe_inputs(path: Path) -> str:
    """``name [dims], ...`` of a graph's inputs."""
    return ", ".join(value.describe() for value in graph_io(path)[0])


def session(path: Path) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session, or the one-line refusal naming the file."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportSourceError(f"{path}: ONNX Runtime cannot load it: {' '.join(str(exc).split())}") from None


def metadata(modality: str, source: str) -> dict[str, str]:
    """The ONNX metadata an imported graph carries: which modality, and where it came from."""
    return {"fusionstream.graph": modality, "fusionstream.source": source}
