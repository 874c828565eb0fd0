"""fusionstream's own encoders: a format-1 model directory's graphs as format-2 entries.

Video uses the per-frame graph (``frame.onnx``, ``per_frame: true``) when the directory has one,
else the whole-window graph; audio and text are copied as they are (text keeps format 1's hashed
character n-grams). Names and sizes are read from the graphs, the rest from ``model.json``.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.importers.common import (
    GRAPH_FILES,
    Imported,
    ImportSourceError,
    Job,
    Step,
    Value,
    Window,
    check_error,
    describe_inputs,
    graph_io,
    relative_error,
    session,
)  # fmt: skip
from fusionstream.engines.spec import FRAME_GRAPH, MODALITIES, SPEC_FILE, ModelSpec
from fusionstream.units import MS


def plan(model_dir: Path, modalities: Sequence[str]) -> Job:
    """Check ``model_dir`` (format 1) has the graphs of ``modalities``; return the job copying them."""
    model_dir = Path(model_dir)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ImportSourceError(f"--modalities: expected some of {', '.join(MODALITIES)}, got {','.join(modalities)}")
    try:
        spec = ModelSpec.load(model_dir)
    except ModelDirError as exc:
        raise ImportSourceError(f"--from-model: {exc} (it takes a format-1 model directory)") from None
    wanted = tuple(m for m in MODALITIES if m in modalities)
    for modality in wanted:
        name = _graph_name(spec, model_dir, modality)
        if not (model_dir / spec.files[name]).is_file():
            raise ImportSourceError(f"{model_dir / spec.files[name]}: missing ({model_dir / SPEC_FILE} names it)")
    window = Window(spec.window_ns // MS, spec.hop_ns // MS)
    return Job(f"{', '.join(wanted)} from {model_dir}", wanted, functools.partial(_run, model_dir, spec, wanted),
               window=window, fixes_length="audio" in wanted)


def _graph_name(spec: ModelSpec, model_dir: Path, modality: str) -> str:
    if modality == "video" and spec.has_graph(FRAME_GRAPH) and (model_dir / spec.files[FRAME_GRAPH]).is_file():
        return FRAME_GRAPH
    return modality


def _single_io(path: Path) -> tuple[Value, Value]:
    inputs, outputs = graph_io(path)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ImportSourceError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
    return inputs[0], outputs[0]


def _int(dim: int | str, path: Path, what: str) -> int:
    if not isinstance(dim, int) or dim <= 0:
        raise ImportSourceError(f"{path}: {what} is not a fixed size ({dim})")
    return dim


def _run(model_dir: Path, spec: ModelSpec, modalities: tuple[str, ...], staging: Path, window: Window,
         step: Step) -> list[Imported]:
    results = []
    for modality in modalities:
        step(f"copying {modality}")
        name = _graph_name(spec, model_dir, modality)
        source = model_dir / spec.files[name]
        graph = staging / GRAPH_FILES[modality]
        shutil.copyfile(source, graph)
        value, output = _single_io(graph)
        size = _int(output.dims[-1], source, f"output {output.describe()}")
        entry: dict[str, Any] = {"encoder": {
            "file": graph.name,
            "inputs": {},
            "output": {"name": output.name, "size": size},
        }}
        parity, note = None, f"copied {source.name}"
        if modality == "video":
            per_frame = name == FRAME_GRAPH
            *_, height, width = (_int(d, source, f"input {value.describe()}") for d in value.dims[1:])
            frames = spec.frames_per_window if per_frame else _int(value.dims[1], source, "frames")
            entry["encoder"]["inputs"]["pixels"] = {"name": value.name, "dtype": value.dtype}
            entry["encoder"]["per_frame"] = per_frame
            entry["preprocess"] = {
                "frames": frames, "height": height, "width": width, "resize": "stretch", "colour": "rgb",
                "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "nchw",
            }  # fmt: skip
            if per_frame and (model_dir / spec.files["video"]).is_file():
                step("checking the per-frame graph against the window graph")
                parity = _frames_match_window(graph, model_dir / spec.files["video"], frames, source.name)
                note += f"; its mean over {frames} frames matches {spec.files['video']}"
        elif modality == "audio":
            samples = _int(value.dims[-1], source, f"input {value.describe()}")
            if samples != window.samples(spec.sample_rate, str(source)):
                raise ImportSourceError(f"{source}: takes {samples} samples, not a {window.length_ms} ms window at "
                                        f"{spec.sample_rate} Hz: import it with --window-ms {spec.window_ns // MS}")
            entry["encoder"]["inputs"]["samples"] = {"name": value.name, "dtype": value.dtype}
            entry["preprocess"] = {"sample_rate": spec.sample_rate, "samples": samples, "normalize": False}
        else:
            max_len = _int(value.dims[-1], source, f"input {value.describe()}")
            entry["encoder"]["inputs"]["ids"] = {"name": value.name, "dtype": value.dtype}
            entry["preprocess"] = {"hashed_ngrams": {
                "buckets": spec.text_buckets, "ngrams": list(spec.text_ngrams), "max_len": max_len,
            }}
        if parity is None:
            _runs(graph, value)
        results.append(Imported(modality, str(model_dir), entry, (graph.name,), parity, describe_inputs(graph), note))
    return results


def _zeros(value: Value, batch: int) -> Any:
    import numpy as np

    dtype = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}[value.dtype]
    return np.zeros((batch, *(d if isinstance(d, int) and d > 0 else 1 for d in value.dims[1:])), dtype=dtype)


def _runs(graph: Path, value: Value) -> None:
    """Run the graph on zeros with batch 1 and 2 (it loads, and its batch axis is dynamic)."""
    runner = session(graph)
    for batch in (1, 2):
        try:
            runner.run(None, {value.name: _zeros(value, batch)})
        except Exception as exc:
            raise ImportSourceError(f"{graph.name}: fails with batch {batch}: {' '.join(str(exc).split())}") from None


def _frames_match_window(frame_graph: Path, window_graph: Path, frames: int, what: str) -> float:
    """Max relative error between the mean of the per-frame embeddings and the window graph's."""
    import numpy as np

    per_frame, whole = session(frame_graph), session(window_graph)
    (frame_in,), (window_in,) = per_frame.get_inputs(), whole.get_inputs()
    rng = np.random.default_rng(0)
    shape = [d if isinstance(d, int) else 1 for d in frame_in.shape[1:]]
    error = 0.0
    for batch in (1, 3):
        windows = rng.random((batch, frames, *shape), dtype=np.float32)
        embedded = per_frame.run(None, {frame_in.name: windows.reshape(batch * frames, *shape)})[0]
        mean = embedded.reshape(batch, frames, -1).mean(axis=1)
        ref = whole.run(None, {window_in.name: windows})[0]
        error = max(error, relative_error(mean, ref))
    return check_error(error, what)
