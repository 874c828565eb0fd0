"""``ModelSpec``: what a model directory's ``model.json`` says, validated.

A model directory is the unit of deployment (docs/architecture.md): the four ONNX graphs (plus the
optional per-frame and int8 ones), the torch weights they were exported from, and
``model.json``. Everything a runtime needs to build inputs (K frames of S×S pixels, samples
per window, text ids) is derived from the spec, so the pipeline never hard-codes a shape
the model may not share.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionstream.engines.errors import ModelDirError
from fusionstream.units import NS

#: Modality order used everywhere: batch fields, mask columns, ONNX file keys.
MODALITIES: tuple[str, str, str] = ("video", "audio", "text")

#: Fusion heads ``fusionstream.engines.fusion.make_head`` builds (kept here so validating a spec needs no torch).
FUSION_HEADS: tuple[str, ...] = ("concat", "weighted", "gmu", "attention", "decision", "graph", "vae")

#: Audio front end: a 25 ms Hann window and a 10 ms hop at 16 kHz (the usual speech front end).
AUDIO_N_FFT = 400
AUDIO_HOP = 160

SPEC_FILE = "model.json"
#: The torch ``state_dict`` saved beside the ONNX graphs; the ``torch`` backend loads it.
TORCH_WEIGHTS = "model.pt"
#: Bumped when ``model.json`` changes incompatibly.
FORMAT_VERSION = 1


def _default_classes() -> list[str]:
    return [str(d) for d in range(10)]


#: Graphs every model directory has: one encoder per modality and the fusion head.
REQUIRED_GRAPHS: tuple[str, ...] = (*MODALITIES, "fusion")
#: The per-frame image encoder (``[N, 3, S, S] -> [N, D]``, before the mean over a window's K
#: frames): lets a backend embed each frame once although overlapping windows share it.
FRAME_GRAPH = "frame"
#: Suffix of the int8-quantized encoder graphs ``fusionstream quantize`` adds (``video_int8``, ...).
INT8 = "_int8"
#: Graphs a model directory may have besides the required ones (older exports lack them).
OPTIONAL_GRAPHS: tuple[str, ...] = (
    FRAME_GRAPH, *(f"{name}{INT8}" for name in (*MODALITIES, FRAME_GRAPH))
)


def _default_files() -> dict[str, str]:
    return {name: f"{name}.onnx" for name in (*REQUIRED_GRAPHS, FRAME_GRAPH)}


#: The audio encoder's pooling over time (``ModelSpec.audio_pooling``).
AUDIO_POOLINGS = ("mean", "mean+max")
#: How the image encoder's first block reads a frame (``ModelSpec.video_stem``).
VIDEO_STEMS = ("pool", "strided")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything about a model that is not a weight: classes, fusion method, input geometry, files.

    Construct it in code for a new model (``ModelSpec(version="1.0", fusion="gmu")``), or read
    one with :meth:`load`. Fields are keyword-only; invalid values raise :class:`ModelDirError`.
    """

    version: str
    classes: list[str] = field(default_factory=_default_classes)
    fusion: str
    #: Extra keyword arguments for the fusion head (e.g. ``{"combine": "vote"}`` for ``decision``).
    fusion_options: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 64
    frames_per_window: int = 4
    image_size: int = 64
    sample_rate: int = 16_000
    window_ns: int = NS
    hop_ns: int = NS // 2
    text_buckets: int = 4096
    text_ngrams: tuple[int, ...] = (2, 3, 4)
    text_max_len: int = 256
    n_mels: int = 40
    #: How the audio encoder pools over time: ``mean`` (models before 2026-12) or ``mean+max``.
    audio_pooling: str = "mean"
    #: The image encoder's first block: ``pool`` (the frame averaged to 32×32 first; models before
    #: 2026-12-06) or ``strided`` (a strided convolution over the full frame).
    video_stem: str = "pool"
    #: Modality name (and ``"fusion"``) → ONNX file name inside the model directory.
    files: dict[str, str] = field(default_factory=_default_files)
    #: Free-form results written by ``evaluate`` (accuracy per mask pattern, latency, ...).
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON gives lists; keep the n-gram sizes a tuple so the spec stays comparable.
        object.__setattr__(self, "text_ngrams", tuple(self.text_ngrams))
        for problem in self._problems():
            raise ModelDirError(f"invalid model spec: {problem}")

    def _problems(self) -> list[str]:
        """Every reason this spec is invalid (the first one is raised)."""
        out: list[str] = []
        if not isinstance(self.version, str) or not self.version:
            out.append(f"version must be a non-empty string, got {self.version!r}")
        if (
            not isinstance(self.classes, list)
            or len(self.classes) < 2
            or not all(isinstance(c, str) and c for c in self.classes)
        ):
            out.append(f"classes must be a list of at least two non-empty strings, got {self.classes!r}")
        elif len(set(self.classes)) != len(self.classes):
            out.append(f"classes must be unique, got {self.classes!r}")
        if self.fusion not in FUSION_HEADS:
            out.append(f"fusion {self.fusion!r} is not one of {', '.join(FUSION_HEADS)}")
        if not isinstance(self.fusion_options, dict) or not all(isinstance(k, str) for k in self.fusion_options):
            out.append("fusion_options must be a dict with string keys")
        ints = {
            "embed_dim": 1,
            "frames_per_window": 1,
            "image_size": 16,  # four stride-2 convolutions need at least 16 pixels
            "sample_rate": 1,
            "window_ns": 1,
            "hop_ns": 1,
            "text_buckets": 2,  # id 0 is padding, so at least one real bucket
            "text_max_len": 1,
            "n_mels": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                out.append(f"{name} must be an integer >= {low}, got {value!r}")
        if self.audio_pooling not in AUDIO_POOLINGS:
            out.append(f"audio_pooling {self.audio_pooling!r} is not one of {', '.join(AUDIO_POOLINGS)}")
        if self.video_stem not in VIDEO_STEMS:
            out.append(f"video_stem {self.video_stem!r} is not one of {', '.join(VIDEO_STEMS)}")
        if out:
            return out  # the checks below do arithmetic on the fields above
        if self.hop_ns > self.window_ns:
            out.append(f"hop_ns {self.hop_ns} is longer than window_ns {self.window_ns}")
        if (self.window_ns * self.sample_rate) % NS:
            out.append(f"a {self.window_ns} ns window is not a whole number of samples at {self.sample_rate} Hz")
        elif self.samples_per_window < AUDIO_N_FFT:
            out.append(f"a window of {self.samples_per_window} samples is shorter than the {AUDIO_N_FFT}-sample FFT")
        if self.n_mels > AUDIO_N_FFT // 2 + 1:
            out.append(f"n_mels {self.n_mels} exceeds the {AUDIO_N_FFT // 2 + 1} FFT bins")
        if not self.text_ngrams or not all(isinstance(n, int) and n >= 1 for n in self.text_ngrams):
            out.append(f"text_ngrams must be positive integers, got {self.text_ngrams!r}")
        required, allowed = set(REQUIRED_GRAPHS), {*REQUIRED_GRAPHS, *OPTIONAL_GRAPHS}
        if not isinstance(self.files, dict) or not required <= set(self.files) <= allowed:
            out.append(
                f"files must map {sorted(required)} (and optionally {sorted(OPTIONAL_GRAPHS)}) to file names, "
                f"got {self.files!r}"
            )
        else:
            for key, name in self.files.items():
                if not isinstance(name, str) or not name or os.sep in name or "/" in name or name in {".", ".."}:
                    out.append(f"files[{key!r}] must be a plain file name inside the model directory, got {name!r}")
        if not isinstance(self.metrics, dict):
            out.append("metrics must be a dict")
        return out

    # -- derived geometry -------------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return len(self.classes)

    @property
    def samples_per_window(self) -> int:
        """Audio samples per window (``window_ns × sample_rate``)."""
        return self.window_ns * self.sample_rate // NS

    @property
    def audio_frames(self) -> int:
        """STFT frames the audio front end produces per window (no padding)."""
        return (self.samples_per_window - AUDIO_N_FFT) // AUDIO_HOP + 1

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row input shapes (without the batch axis), in ``MODALITIES`` order plus the mask."""
        s = self.image_size
        return {
            "video": (self.frames_per_window, 3, s, s),
            "audio": (self.samples_per_window,),
            "text": (self.text_max_len,),
            "mask": (len(MODALITIES),),
        }

    def has_graph(self, name: str) -> bool:
        """Whether ``files`` names this graph (the optional ones may be absent)."""
        return name in self.files

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied and validated (e.g. ``spec.replace(metrics=results)``)."""
        return dataclasses.replace(self, **changes)

    # -- model.json ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written to ``model.json`` (derived input shapes included for readers)."""
        doc: dict[str, Any] = {"format": FORMAT_VERSION}
        doc.update(dataclasses.asdict(self))
        doc["text_ngrams"] = list(self.text_ngrams)
        doc["inputs"] = {name: list(shape) for name, shape in self.input_shapes.items()}
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelSpec:
        """Build a spec from a ``model.json`` document; unknown or missing fields are errors."""
        if not isinstance(doc, dict):
            raise ModelDirError(f"model.json must hold a JSON object, got {type(doc).__name__}")
        doc = dict(doc)
        fmt = doc.pop("format", FORMAT_VERSION)
        if fmt != FORMAT_VERSION:
            raise ModelDirError(f"model.json format {fmt!r} is not supported (this version reads {FORMAT_VERSION})")
        inputs = doc.pop("inputs", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise ModelDirError(f"unknown field(s) in model.json: {', '.join(unknown)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in doc]
        if missing:  # (Python's own message named ModelSpec.__init__ and its keyword-only arguments)
            raise ModelDirError(f"required field(s) missing: {', '.join(missing)}")
        spec = cls(**doc)
        if inputs is not None:
            derived = {name: list(shape) for name, shape in spec.input_shapes.items()}
            if inputs != derived:
                raise ModelDirError(f"model.json 'inputs' {inputs} disagree with the fields, which give {derived}")
        return spec

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write ``model.json`` into ``model_dir`` (created if needed); returns its path.

        Written to a temporary file and renamed, so a reader never sees half a file.
        """
        path = Path(model_dir) / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ModelDirError(f"model spec is not JSON-serialisable (check metrics/fusion_options): {exc}") from None
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> ModelSpec:
        """Read and validate ``model_dir/model.json`` (``model_dir`` may also be the file itself)."""
        path = Path(model_dir)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise ModelDirError(f"no {SPEC_FILE} at {path}: not a model directory")
        doc = read_model_json(path)
        try:
            return cls.from_dict(doc)
        except ModelDirError as exc:
            raise ModelDirError(f"{path}: {exc}") from None


#: A model.json is a few kilobytes (vocabularies and weights live in files of their own); past this, a wrong file.
MAX_MODEL_JSON_BYTES = 16 * 1024 * 1024


def read_model_json(path: Path) -> Any:
    """The parsed ``model.json`` at ``path``; :class:`ModelDirError` in one line for anything unreadable (a file
    of hundreds of MB was read whole before it was refused; JSON nested 100,000 deep raised a RecursionError)."""
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_JSON_BYTES:
            raise ModelDirError(f"{path} is {size / 2**20:.0f} MB: not a model.json (at most "
                                f"{MAX_MODEL_JSON_BYTES // 2**20} MB)")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise ModelDirError(f"cannot read {path}: JSON nested too deep") from None
