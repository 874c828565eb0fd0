"""Image encoders for the video modality: a torch factory (``module:function``) or an existing ONNX file.

A factory returns an ``nn.Module`` mapping frames ``[N, 3, H, W]`` to ``[N, D]`` (a torchvision,
timm or open_clip image model); it is exported per frame (``per_frame: true``, input
``pixel_values``, output ``embedding``) and checked against torch. ``features=True`` first
replaces a classifier's last layer (``fc``, ``classifier``, ``head``, ``heads``; timm's
``reset_classifier(0)``) with the identity, so the embedding is the pooled features. An ONNX file
is copied with the preprocessing given for it; its input and output names, layout, frame size
and per-frame/whole-window shape are read from the graph where it fixes them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusionstream.engines.importers.common import (
    GRAPH_FILES,
    TRACE_BATCH,
    Imported,
    ImportSourceError,
    Job,
    Step,
    Value,
    Window,
    check_error,
    describe_inputs,
    export_onnx,
    graph_io,
    metadata,
    relative_error,
    session,
)  # fmt: skip

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

INPUT = "pixel_values"
OUTPUT = "embedding"
DEFAULT_SIZE = 224
DEFAULT_FRAMES = 4
#: Named normalisations (mean, std), for ``--video-mean imagenet``.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
RESIZES = ("stretch", "center_crop", "letterbox")
_CLASSIFIERS = ("fc", "classifier", "head", "heads")


@dataclass(frozen=True)
class VideoPreprocess:
    """The video preprocessing to declare; ``None`` fields are read from the graph (or take the default)."""

    frames: int | None = None
    size: int | None = None
    resize: str = "stretch"
    colour: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.frames is None or self.frames >= 1, "--video-frames", "at least 1"),
            (self.size is None or self.size >= 1, "--video-size", "at least 1"),
            (self.resize in RESIZES, "--video-resize", " or ".join(RESIZES)),
            (self.colour in ("rgb", "bgr"), "--video-colour", "rgb or bgr"),
            (self.layout in (None, "nchw", "nhwc"), "--video-layout", "nchw or nhwc"),
            (self.scale > 0, "--video-scale", "a positive number"),
            (len(self.mean) == 3, "--video-mean", "3 numbers (one per colour channel)"),
            (len(self.std) == 3 and all(s > 0 for s in self.std), "--video-std", "3 positive numbers"),
        ]
        for ok, option, expected in checks:
            if not ok:
                raise ImportSourceError(f"{option}: expected {expected}")

    def to_dict(self, height: int, width: int) -> dict[str, Any]:
        """The ``preprocess`` entry (every field written out, defaults included)."""
        return {
            "frames": self.frames or DEFAULT_FRAMES, "height": height, "width": width, "resize": self.resize,
            "colour": self.colour, "scale": self.scale, "mean": list(self.mean), "std": list(self.std),
            "layout": self.layout or "nchw",
        }  # fmt: skip


def parse_channels(text: str, option: str) -> tuple[float, ...]:
    """``imagenet``/``clip``, one number for all channels, or three comma-separated numbers."""
    if text.lower() in PRESETS:
        return PRESETS[text.lower()][0 if option.endswith("mean") else 1]
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ImportSourceError(f"{option} {text!r}: expected 3 numbers (one per colour channel), "
                                f"one number, or {' or '.join(PRESETS)}") from None
    if len(values) not in (1, 3):
        raise ImportSourceError(f"{option} {text!r}: expected 3 numbers (one per colour channel), got {len(values)}")
    return values * 3 if len(values) == 1 else values


def parse_scale(text: str) -> float:
    """``1/255``, ``0.00392``, ``1``."""
    try:
        top, _, bottom = text.partition("/")
        return float(top) / float(bottom or 1)
    except (ValueError, ZeroDivisionError):
        raise ImportSourceError(f"--video-scale {text!r}: expected a number or a fraction such as 1/255") from None


# -- a torch factory --------------------------------------------------------------------------


def resolve_factory(spec: str, option: str = "--video") -> Callable[[], Any]:
    """The function ``module:function`` (or ``path/file.py:function``) names; the current directory is importable."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise ImportSourceError(f"{option} {spec!r}: expected module:function or FILE.onnx")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ImportSourceError(f"{option} {spec}: no file {file}")
            loader = importlib.util.spec_from_file_location(f"fusionstream_factory_{file.stem}", file)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            added = "" not in sys.path
            if added:
                sys.path.insert(0, "")
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove("")
    except ImportSourceError:
        raise
    except Exception as exc:
        raise ImportSourceError(f"{option} {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise ImportSourceError(f"{option} {spec}: {module_name} has no {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ImportSourceError(f"{option} {spec}: {name} is not a function")
    return target


def factory_plan(spec: str, preprocess: VideoPreprocess, features: bool = False, option: str = "--video") -> Job:
    """Check ``spec`` resolves and return the job exporting what it builds."""
    factory = resolve_factory(spec, option)
    if preprocess.layout == "nhwc":
        raise ImportSourceError("--video-layout nhwc: a torch factory's module takes [N, 3, H, W] frames (nchw)")
    return Job(f"video from {spec}", ("video",), functools.partial(_run_factory, spec, factory, preprocess, features))


def strip_classifier(model: nn.Module, spec: str) -> str:
    """Replace the model's last classification layer with the identity; say which."""
    from torch import nn

    if callable(getattr(model, "reset_classifier", None)):  # timm
        model.reset_classifier(0)
        return "reset_classifier(0)"
    for name in _CLASSIFIERS:
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, nn.Identity())
            return name
    raise ImportSourceError(f"--video-features: {spec} returns a {type(model).__name__} without "
                            f"{', '.join(_CLASSIFIERS)}: make the factory return the feature extractor")


def _frames(batch: int, height: int, width: int, prep: VideoPreprocess, seed: int) -> np.ndarray:
    """Random pixels, preprocessed as the runtime will (``[batch, 3, H, W]`` float32)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (batch, 3, height, width)).astype(np.float32)
    mean, std = (np.asarray(v, dtype=np.float32).reshape(1, 3, 1, 1) for v in (prep.mean, prep.std))
    return ((pixels * prep.scale - mean) / std).astype(np.float32)


def _run_factory(spec: str, factory: Callable[[], Any], prep: VideoPreprocess, features: bool, staging: Path,
                 window: Window, step: Step) -> list[Imported]:
    import torch
    from torch import nn

    del window
    step("building the model")
    try:
        model = factory()
    except Exception as exc:
        raise ImportSourceError(f"{spec}: the factory failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ImportSourceError(f"{spec} returned a {type(model).__name__}, not a torch nn.Module")
    note = f"{strip_classifier(model, spec)} replaced by Identity" if features else ""
    model = model.float().eval()
    size = prep.size or DEFAULT_SIZE
    prep = replace(prep, size=size, layout="nchw")
    example = torch.from_numpy(_frames(TRACE_BATCH, size, size, prep, 0))
    with torch.no_grad():
        try:
            out = model(example)
        except Exception as exc:
            raise ImportSourceError(f"{spec}: the model fails on [2, 3, {size}, {size}] frames: "
                                    f"{type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != TRACE_BATCH:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ImportSourceError(f"{spec}: the model maps [2, 3, {size}, {size}] frames to {got}, not [2, D]")
    step("exporting to ONNX")
    graph = staging / GRAPH_FILES["video"]
    export_onnx(model, (example,), graph, input_names=[INPUT], output_name=OUTPUT, axes=[{0: "batch"}],
                metadata=metadata("video", spec))
    step("checking parity")
    runner = session(graph)
    error = 0.0
    with torch.no_grad():
        for seed, batch in enumerate((1, 3), start=1):
            x = _frames(batch, size, size, prep, seed)
            error = max(error, relative_error(runner.run([OUTPUT], {INPUT: x})[0], model(torch.from_numpy(x)).numpy()))
    check_error(error, graph.name)
    entry = _entry(graph.name, INPUT, "float32", OUTPUT, int(out.shape[1]), True, prep.to_dict(size, size))
    return [Imported("video", spec, entry, (graph.name,), error, describe_inputs(graph), note)]


def _entry(file: str, input_name: str, dtype: str, output: str, size: int, per_frame: bool,
           preprocess: dict[str, Any]) -> dict[str, Any]:
    return {
        "encoder": {"file": file, "inputs": {"pixels": {"name": input_name, "dtype": dtype}},
                    "output": {"name": output, "size": size}, "per_frame": per_frame},
        "preprocess": preprocess,
    }


# -- an existing ONNX file -------------------------------------------------------------------------


@dataclass(frozen=True)
class _OnnxVideo:
    path: Path
    input: Value
    output: str
    per_frame: bool
    prep: VideoPreprocess
    height: int
    width: int


def _pick(values: list[Value], given: str | None, what: str, option: str, path: Path) -> Value:
    names = [v.name for v in values]
    if given is not None:
        if given not in names:
            raise ImportSourceError(f"{option} {given}: {path} has no {what} of that name (it has {', '.join(names)})")
        return values[names.index(given)]
    if len(values) != 1:
        raise ImportSourceError(f"{path}: {len(values)} {what}s ({', '.join(names)}): choose one with {option}")
    return values[0]


def onnx_plan(path: Path, prep: VideoPreprocess, input_name: str | None = None, output_name: str | None = None) -> Job:
    """Read the graph's input, layout, size and shape; return the job copying it with ``prep``."""
    path = Path(path)
    if not path.is_file():
        raise ImportSourceError(f"--video {path}: no such file")
    inputs, outputs = graph_io(path)
    value = _pick(inputs, input_name, "input", "--video-input", path)
    output = _pick(outputs, output_name, "output", "--video-output", path)
    where = f"{path}: input {value.describe()}"
    if value.dtype not in ("float32", "float16"):
        raise ImportSourceError(f"{where}: {value.dtype}: frames are float32 or float16")
    if len(value.dims) not in (4, 5):
        raise ImportSourceError(f"{where}: expected [N, C, H, W] frames or [B, frames, C, H, W] windows")
    if isinstance(value.dims[0], int) and value.dims[0] > 0:
        raise ImportSourceError(f"{where}: fixed batch size {value.dims[0]}: re-export it with a dynamic batch axis")
    per_frame = len(value.dims) == 4
    frame = value.dims[-3:]
    layout = prep.layout or ("nhwc" if frame[2] == 3 and frame[0] != 3 else "nchw")
    channels, height, width = frame if layout == "nchw" else (frame[2], frame[0], frame[1])
    if isinstance(channels, int) and channels != 3:
        raise ImportSourceError(f"{where}: not {layout} with 3 colour channels (see --video-layout)")
    fixed = [d for d in (height, width) if isinstance(d, int) and d > 0]
    if len(fixed) == 2 and prep.size is not None and (height, width) != (prep.size, prep.size):
        raise ImportSourceError(f"--video-size {prep.size}: {path} takes {height}×{width} frames")
    size = prep.size or DEFAULT_SIZE
    height, width = (d if isinstance(d, int) and d > 0 else size for d in (height, width))
    frames = prep.frames
    if not per_frame and isinstance(value.dims[1], int) and value.dims[1] > 0:
        if frames is not None and frames != value.dims[1]:
            raise ImportSourceError(f"--video-frames {frames}: {where}: takes {value.dims[1]} frames per window")
        frames = value.dims[1]
    source = _OnnxVideo(path, value, output.name, per_frame, replace(prep, frames=frames, layout=layout), height, width)
    return Job(f"video from {path}", ("video",), functools.partial(_run_onnx, source))


def _copy_graph(source: Path, target: Path) -> None:
    """Copy the file; a graph with external weights is saved as one self-contained file."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False)
    if not any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer):
        shutil.copyfile(source, target)
        return
    try:
        onnx.save(onnx.load(str(source)), str(target))
    except (OSError, ValueError) as exc:
        raise ImportSourceError(f"{source}: its external weights cannot be saved into one file: {exc}") from None


def _run_onnx(source: _OnnxVideo, staging: Path, window: Window, step: Step) -> list[Imported]:
    import numpy as np

    del window
    graph = staging / GRAPH_FILES["video"]
    step("copying the graph")
    _copy_graph(source.path, graph)
    step("running it")
    runner = session(graph)
    prep = source.prep
    frame = (3, source.height, source.width) if prep.layout == "nchw" else (source.height, source.width, 3)
    window_shape = () if source.per_frame else (prep.frames or DEFAULT_FRAMES,)
    dtype = np.float16 if source.input.dtype == "float16" else np.float32
    sizes = set()
    for batch in (1, 2):
        x = np.zeros((batch, *window_shape, *frame), dtype=dtype)
        try:
            out = runner.run([source.output], {source.input.name: x})[0]
        except Exception as exc:
            message = " ".join(str(exc).split())
            raise ImportSourceError(f"{source.path}: fails on input {list(x.shape)}: {message}") from None
        if out.ndim != 2 or out.shape[0] != batch:
            raise ImportSourceError(f"{source.path}: output {source.output} is {list(out.shape)} for a batch of "
                                    f"{batch}, not [{batch}, D] (choose another with --video-output)")
        sizes.add(int(out.shape[1]))
    if len(sizes) != 1:
        raise ImportSourceError(f"{source.path}: output {source.output}: its size changes with the batch "
                                f"({sorted(sizes)})")
    entry = _entry(graph.name, source.input.name, source.input.dtype, source.output, sizes.pop(), source.per_frame,
                   prep.to_dict(source.height, source.width))
    return [Imported("video", str(source.path), entry, (graph.name,), None, describe_inputs(graph),
                     "no torch reference: ran with batch 1 and 2")]
