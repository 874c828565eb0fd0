"""The model manifest, format 2 (docs/model-format.md): which modalities a model uses, each
encoder's graph, inputs, output and preprocessing, the fusion head graph, the task, the window.

:func:`load_manifest` reads either format. A format-1 directory (fusionstream's own architecture,
like the shipped model) is read through :class:`~fusionstream.engines.spec.ModelSpec` and given as
the format-2 manifest it is equivalent to, so code that needs only what a manifest says (``model
check``, the model's window) handles both. Every error names the file and the field.

Parsing only: nothing here opens a graph (see :mod:`fusionstream.engines.manifest_check`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.spec import (
    FRAME_GRAPH,
    FUSION_HEADS,
    INT8,
    MODALITIES,
    SPEC_FILE,
    ModelSpec,
    read_model_json,
)
from fusionstream.units import MS, NS

FORMAT = 2
DTYPES = ("float32", "float16", "int64", "int32")
TASKS = ("single_label", "multi_label", "embedding")
RESIZE_MODES = ("stretch", "center_crop", "letterbox")
ACTIVATIONS = ("none", "softmax", "sigmoid")
#: Input roles each modality's encoder may have, and which of them it must have.
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "video": (("pixels",), ("pixels",)),
    "audio": (("samples",), ("samples",)),
    "text": (("input_ids", "attention_mask", "token_type_ids", "ids"), ()),
}
#: The graph names format 1 exports under (``engines/export.py``).
_V1_EMBEDDING = "embedding"
_V1_PROBS = "probs"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    file: str
    inputs: dict[str, TensorSpec]
    output: str
    size: int
    per_frame: bool = False
    #: The int8 graph ``fusionstream quantize`` wrote (same inputs and output as ``file``), if any.
    int8_file: str | None = None


@dataclass(frozen=True, slots=True)
class VideoPreprocess:
    frames: int
    height: int
    width: int
    resize: str = "stretch"
    colour: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "nchw"


@dataclass(frozen=True, slots=True)
class AudioPreprocess:
    sample_rate: int
    samples: int
    normalize: bool = False


@dataclass(frozen=True, slots=True)
class HashedNgrams:
    buckets: int
    ngrams: tuple[int, ...]
    max_len: int


@dataclass(frozen=True, slots=True)
class TextPreprocess:
    tokenizer: str | None = None
    max_tokens: int = 128
    hashed_ngrams: HashedNgrams | None = None


Preprocess = VideoPreprocess | AudioPreprocess | TextPreprocess


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    name: str
    encoder: EncoderSpec
    preprocess: Preprocess

    @property
    def row_shape(self) -> tuple[int | None, ...]:
        """Per-row shape (no batch axis) of the encoder's inputs the preprocessing produces; ``None`` =
        any length (tokens)."""
        pre = self.preprocess
        if isinstance(pre, VideoPreprocess):
            frame = (3, pre.height, pre.width) if pre.layout == "nchw" else (pre.height, pre.width, 3)
            return frame if self.encoder.per_frame else (pre.frames, *frame)
        if isinstance(pre, AudioPreprocess):
            return (pre.samples,)
        return (pre.hashed_ngrams.max_len,) if pre.hashed_ngrams is not None else (None,)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    kind: str
    classes: tuple[str, ...] = ()
    #: One threshold per class (multi_label only).
    thresholds: tuple[float, ...] = ()
    #: The fused vector's size (embedding only).
    size: int = 0

    @property
    def outputs(self) -> int:
        """Width of the fusion head's output."""
        return self.size if self.kind == "embedding" else len(self.classes)


@dataclass(frozen=True, slots=True)
class FusionSpec:
    file: str
    method: str
    #: Modality → the graph input taking its embedding.
    inputs: dict[str, str]
    mask: str
    output: str
    activation: str = "none"


@dataclass(frozen=True)
class Manifest:
    """A model directory's manifest, whatever its format (``source_format`` says which)."""

    version: str
    window_ns: int
    hop_ns: int
    #: The modalities the model uses, in ``MODALITIES`` order.
    modalities: dict[str, ModalitySpec]
    #: ``None`` in an encoders directory (``fusionstream model import``): no head trained yet.
    task: TaskSpec | None
    fusion: FusionSpec | None
    directory: Path
    source_format: int = FORMAT
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / SPEC_FILE

    @property
    def frame_side(self) -> int:
        """The side JPEG frames are decoded at, at least (the larger of the video input's two; 0 without video)."""
        video = self.modalities.get("video")
        if video is None:
            return 0
        assert isinstance(video.preprocess, VideoPreprocess)
        return max(video.preprocess.height, video.preprocess.width)

    @property
    def servable(self) -> bool:
        """Whether the directory has a head to serve (not only encoders)."""
        return self.task is not None and self.fusion is not None

    def graph_files(self, *, int8: bool = False) -> dict[str, str]:
        """Graph name (a modality or ``fusion``) → file name; with ``int8``, each encoder's int8 graph
        where it has one (the fusion head is never quantized: it is a few percent of a window)."""
        files = {name: (m.encoder.int8_file if int8 and m.encoder.int8_file else m.encoder.file)
                 for name, m in self.modalities.items()}
        if self.fusion is not None:
            files["fusion"] = self.fusion.file
        return files

    def field_naming(self, file: str) -> str | None:
        """The model.json field that names ``file`` (``modalities.audio.encoder.file``, ``fusion.file``), if any."""
        for name, modality in self.modalities.items():
            for key in ("file", "int8_file"):
                if getattr(modality.encoder, key) == file:
                    return f"modalities.{name}.encoder.{key}"
        return "fusion.file" if self.fusion is not None and self.fusion.file == file else None


class _Fields:
    """Reads one JSON object, naming ``file: a.b.c`` in every error."""

    def __init__(self, doc: Any, where: str, path: Path) -> None:
        self.path, self.where = path, where
        if not isinstance(doc, dict):
            self.fail(f"expected an object, got {_kind(doc)}")
        self.doc: dict[str, Any] = doc

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        at = ".".join(p for p in (self.where, key) if p)
        raise ModelDirError(f"{self.path}: {at + ': ' if at else ''}{message}")

    def sub(self, key: str, *, required: bool = True) -> _Fields | None:
        if key not in self.doc:
            if required:
                self.fail("is required", key)
            return None
        return _Fields(self.doc[key], ".".join(p for p in (self.where, key) if p), self.path)

    def only(self, *allowed: str) -> None:
        unknown = sorted(set(self.doc) - set(allowed))
        if unknown:
            self.fail(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(allowed)})")

    def get(self, key: str, kind: type, default: Any = ..., *, low: float | None = None,
            choices: tuple[Any, ...] | None = None) -> Any:
        if key not in self.doc:
            if default is ...:
                self.fail("is required", key)
            return default
        value = self.doc[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.fail(f"expected {kind.__name__}, got {_kind(value)} {value!r}", key)
        if low is not None and value < low:
            self.fail(f"must be at least {low:g}, got {value!r}", key)
        if choices is not None and value not in choices:
            self.fail(f"{value!r} is not one of {', '.join(map(str, choices))}", key)
        return value

    def file_name(self, key: str) -> str:
        name = self.get(key, str)
        if not name or os.sep in name or "/" in name or name in {".", ".."}:
            self.fail(f"must be a plain file name inside the model directory, got {name!r}", key)
        return name

    def numbers(self, key: str, count: int, default: tuple[float, ...], *, positive: bool = False) -> tuple[float, ...]:
        value = self.doc.get(key, list(default))
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value] * count
        if not (isinstance(value, list) and len(value) == count
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            self.fail(f"expected {count} numbers, got {value!r}", key)
        # JSON as Python reads it allows NaN and Infinity: either would make every input, and prediction, NaN.
        if not all(math.isfinite(v) for v in value):
            self.fail(f"expected finite numbers, got {value!r}", key)
        if positive and not all(v > 0 for v in value):
            self.fail(f"expected numbers above 0 (each channel is divided by its own), got {value!r}", key)
        return tuple(float(v) for v in value)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _encoder(f: _Fields, modality: str) -> EncoderSpec:
    f.only("file", "inputs", "output", "per_frame", "int8_file")
    inputs_f = f.sub("inputs")
    assert inputs_f is not None
    allowed, required = ROLES[modality]
    inputs: dict[str, TensorSpec] = {}
    for role in inputs_f.doc:
        if role not in allowed:
            inputs_f.fail(f"unknown input role {role!r} for {modality} (roles: {', '.join(allowed)})")
        t = inputs_f.sub(role)
        assert t is not None
        t.only("name", "dtype")
        inputs[role] = TensorSpec(t.get("name", str), t.get("dtype", str, "int64" if modality == "text" else "float32",
                                                            choices=DTYPES))
    for role in required:
        if role not in inputs:
            inputs_f.fail(f"the {modality} encoder needs an input with role {role!r}")
    if modality == "text" and not ({"input_ids", "ids"} & set(inputs)):
        inputs_f.fail("the text encoder needs an input with role 'input_ids' (a tokenizer) or 'ids' (hashed n-grams)")
    output_f = f.sub("output")
    assert output_f is not None
    output_f.only("name", "size")
    per_frame = f.get("per_frame", bool, False)
    if per_frame and modality != "video":
        f.fail("only a video encoder can embed single frames", "per_frame")
    int8_file = f.file_name("int8_file") if "int8_file" in f.doc else None
    return EncoderSpec(f.file_name("file"), inputs, output_f.get("name", str), output_f.get("size", int, low=1),
                       per_frame, int8_file)


def _video(f: _Fields) -> VideoPreprocess:
    f.only("frames", "height", "width", "resize", "colour", "scale", "mean", "std", "layout")
    return VideoPreprocess(
        frames=f.get("frames", int, low=1), height=f.get("height", int, low=1), width=f.get("width", int, low=1),
        resize=f.get("resize", str, "stretch", choices=RESIZE_MODES),
        colour=f.get("colour", str, "rgb", choices=("rgb", "bgr")), scale=f.get("scale", float, 1 / 255),
        mean=f.numbers("mean", 3, (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
        std=f.numbers("std", 3, (1.0, 1.0, 1.0), positive=True),  # type: ignore[arg-type]
        layout=f.get("layout", str, "nchw", choices=("nchw", "nhwc")),
    )


def _audio(f: _Fields, window_ns: int) -> AudioPreprocess:
    f.only("sample_rate", "samples", "normalize")
    rate = f.get("sample_rate", int, low=1)
    if (window_ns * rate) % NS:
        f.fail(f"a {window_ns // MS} ms window is not a whole number of samples at {rate} Hz", "sample_rate")
    expected = window_ns * rate // NS
    samples = f.get("samples", int, expected, low=1)
    if samples != expected:
        f.fail(f"{samples} samples disagree with the window: {window_ns // MS} ms at {rate} Hz is {expected}",
               "samples")
    return AudioPreprocess(rate, samples, f.get("normalize", bool, False))


def _text(f: _Fields, directory: Path) -> TextPreprocess:
    f.only("tokenizer", "max_tokens", "hashed_ngrams")
    hashed_f = f.sub("hashed_ngrams", required=False)
    if hashed_f is not None:
        if "tokenizer" in f.doc:
            f.fail("give either tokenizer or hashed_ngrams, not both")
        hashed_f.only("buckets", "ngrams", "max_len")
        ngrams = hashed_f.doc.get("ngrams")
        if not (isinstance(ngrams, list) and ngrams and all(isinstance(n, int) and n >= 1 for n in ngrams)):
            hashed_f.fail(f"expected a list of positive integers, got {ngrams!r}", "ngrams")
        hashed = HashedNgrams(hashed_f.get("buckets", int, low=2), tuple(ngrams), hashed_f.get("max_len", int, low=1))
        return TextPreprocess(hashed_ngrams=hashed)
    tokenizer = f.file_name("tokenizer")
    if not (directory / tokenizer).is_file():
        f.fail(f"{directory / tokenizer} does not exist", "tokenizer")
    return TextPreprocess(tokenizer=tokenizer, max_tokens=f.get("max_tokens", int, 128, low=1))


def _task(f: _Fields) -> TaskSpec:
    kind = f.get("kind", str, choices=TASKS)
    if kind == "embedding":
        f.only("kind", "size")
        return TaskSpec(kind, size=f.get("size", int, low=1))
    f.only("kind", "classes", *(("thresholds",) if kind == "multi_label" else ()))
    classes = f.doc.get("classes")
    least = 2 if kind == "single_label" else 1
    if not (isinstance(classes, list) and len(classes) >= least and all(isinstance(c, str) and c for c in classes)):
        f.fail(f"expected a list of at least {least} non-empty strings, got {classes!r}", "classes")
    if len(set(classes)) != len(classes):
        f.fail("class names must be unique", "classes")
    thresholds: tuple[float, ...] = ()
    if kind == "multi_label":
        thresholds = f.numbers("thresholds", len(classes), (0.5,) * len(classes))
        if not all(0 < t < 1 for t in thresholds):
            f.fail(f"every threshold must be in (0, 1), got {list(thresholds)}", "thresholds")
    return TaskSpec(kind, tuple(classes), thresholds)


def _fusion(f: _Fields, modalities: dict[str, ModalitySpec]) -> FusionSpec:
    f.only("file", "method", "inputs", "output")
    inputs_f = f.sub("inputs")
    output_f = f.sub("output")
    assert inputs_f is not None and output_f is not None
    inputs_f.only(*modalities, "mask")
    inputs = {name: inputs_f.get(name, str) for name in modalities}
    output_f.only("name", "activation")
    return FusionSpec(f.file_name("file"), f.get("method", str, "custom", choices=(*FUSION_HEADS, "custom")), inputs,
                      inputs_f.get("mask", str), output_f.get("name", str),
                      output_f.get("activation", str, "none", choices=ACTIVATIONS))


def parse_manifest(doc: Any, directory: Path) -> Manifest:
    """A format-2 manifest from its JSON document (``directory`` locates the files it names)."""
    path = directory / SPEC_FILE
    top = _Fields(doc, "", path)
    top.only("format", "version", "window", "task", "modalities", "fusion", "metrics")
    window_f = top.sub("window")
    assert window_f is not None
    window_f.only("length_ms", "hop_ms")
    window_ns = window_f.get("length_ms", int, low=1) * MS
    hop_ns = window_f.get("hop_ms", int, low=1) * MS
    if hop_ns > window_ns:
        window_f.fail(f"hop {hop_ns // MS} ms is longer than the window {window_ns // MS} ms", "hop_ms")
    modalities_f = top.sub("modalities")
    assert modalities_f is not None
    modalities_f.only(*MODALITIES)
    if not modalities_f.doc:
        modalities_f.fail(f"declare at least one of {', '.join(MODALITIES)}")
    modalities: dict[str, ModalitySpec] = {}
    for name in (m for m in MODALITIES if m in modalities_f.doc):
        m_f = modalities_f.sub(name)
        assert m_f is not None
        m_f.only("encoder", "preprocess")
        encoder_f, pre_f = m_f.sub("encoder"), m_f.sub("preprocess")
        assert encoder_f is not None and pre_f is not None
        encoder = _encoder(encoder_f, name)
        pre: Preprocess = (_video(pre_f) if name == "video" else _audio(pre_f, window_ns) if name == "audio"
                           else _text(pre_f, directory))
        if isinstance(pre, TextPreprocess) and ("ids" in encoder.inputs) != (pre.hashed_ngrams is not None):
            encoder_f.fail("input role 'ids' goes with hashed_ngrams preprocessing, 'input_ids' with a tokenizer",
                           "inputs")
        modalities[name] = ModalitySpec(name, encoder, pre)
    task_f, fusion_f = top.sub("task", required=False), top.sub("fusion", required=False)
    if (task_f is None) != (fusion_f is None):
        top.fail("task and fusion go together: an encoders directory has neither, a model both")
    metrics = top.get("metrics", dict, {})
    task = _task(task_f) if task_f else None
    fusion = _fusion(fusion_f, modalities) if fusion_f else None
    if task is not None and fusion is not None and task.kind == "multi_label" and fusion.activation == "softmax":
        # Softmax makes the classes compete (their scores sum to 1): at most one could pass a 0.5 threshold.
        output_f = fusion_f.sub("output") if fusion_f else None
        assert output_f is not None
        output_f.fail("softmax makes a multi_label model's classes compete (their scores sum to 1): use sigmoid, "
                      "or none when the graph outputs per-class probabilities", "activation")
    version = top.get("version", str)
    if not version.strip() or version != version.strip():  # it names the model in every prediction and log line
        top.fail(f"must be a non-empty name without surrounding spaces, got {version!r}", "version")
    return Manifest(
        version=version, window_ns=window_ns, hop_ns=hop_ns, modalities=modalities,
        task=task, fusion=fusion, directory=directory, metrics=metrics,
    )


def manifest_of_v1(spec: ModelSpec, directory: Path) -> Manifest:
    """The format-2 manifest a format-1 directory is equivalent to.

    The video encoder is the per-frame graph (``frame.onnx``) when the directory has one: a window's
    video embedding is the mean of its frames' (``ImageEncoder.forward`` is exactly that mean), so
    runtimes embed each frame once however many overlapping windows share it. Older exports without
    it keep the whole-window ``video.onnx``. ``files``' ``<graph>_int8`` entries become ``int8_file``.
    """
    s = spec.image_size
    video = VideoPreprocess(frames=spec.frames_per_window, height=s, width=s)
    audio = AudioPreprocess(spec.sample_rate, spec.samples_per_window)
    text = TextPreprocess(hashed_ngrams=HashedNgrams(spec.text_buckets, spec.text_ngrams, spec.text_max_len))
    per_frame = spec.has_graph(FRAME_GRAPH)
    # graph of spec.files that serves each modality; its (only) input is named after the graph
    graphs = {"video": FRAME_GRAPH if per_frame else "video", "audio": "audio", "text": "text"}
    roles = {"video": "pixels", "audio": "samples", "text": "ids"}
    dtypes = {"video": "float32", "audio": "float32", "text": "int64"}
    modalities = {}
    for name, pre in zip(MODALITIES, (video, audio, text), strict=True):
        graph = graphs[name]
        encoder = EncoderSpec(spec.files[graph], {roles[name]: TensorSpec(graph, dtypes[name])}, _V1_EMBEDDING,
                              spec.embed_dim, per_frame=name == "video" and per_frame,
                              int8_file=spec.files.get(f"{graph}{INT8}"))
        modalities[name] = ModalitySpec(name, encoder, pre)
    fusion = FusionSpec(spec.files["fusion"], spec.fusion, {m: m for m in MODALITIES}, "mask", _V1_PROBS)
    return Manifest(spec.version, spec.window_ns, spec.hop_ns, modalities, TaskSpec("single_label",
                    tuple(spec.classes)), fusion, directory, source_format=1, metrics=spec.metrics)


def load_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Read ``model_dir/model.json`` in either format; raises :class:`ModelDirError` naming the field."""
    directory = Path(model_dir)
    path = directory / SPEC_FILE
    if not path.is_file():
        raise ModelDirError(f"no {SPEC_FILE} at {path}: not a model directory")
    doc = read_model_json(path)
    fmt = doc.get("format", 1) if isinstance(doc, dict) else None
    if fmt == 1:
        return manifest_of_v1(ModelSpec.load(directory), directory)
    if isinstance(fmt, str) and fmt.strip().isdigit():
        raise ModelDirError(f"{path}: format: {fmt!r} is a string; write the number, \"format\": {fmt.strip()}")
    if fmt != FORMAT:
        raise ModelDirError(f"{path}: format: {fmt!r} is not supported (this version reads 1 and {FORMAT})")
    return parse_manifest(doc, directory)
