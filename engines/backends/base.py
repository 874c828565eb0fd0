"""The runtime template every backend follows (after Polygraphy's ``BaseRunner``), keyed by modality.

A runtime is built cheaply from a model directory of either format (:func:`load_manifest` reads
format 1 as the format-2 manifest it is equivalent to): it validates its options and checks that
the files it will read exist. The heavy work (import the runtime, check the graphs, load them,
allocate device memory) happens in :meth:`Runtime.activate`; :meth:`Runtime.release` frees it. Use
it as a context manager::

    with open_runtime("onnxruntime", "models/digits") as runtime:
        video = runtime.encode_frames(runtime.preprocess.video_frames(frames))   # [N, size], per frame
        audio = runtime.encode("audio", runtime.preprocess.audio_feed(samples))  # [B, size]
        scores = runtime.fuse({"video": ..., "audio": audio, ...}, mask)          # [B, outputs]

Public methods validate their inputs, call the ``_*_impl`` hooks a backend implements, time each
graph (:attr:`Runtime.graph_seconds`) and check each output's shape, naming the file. Absent rows
cost nothing: the caller encodes only the rows where a modality is present and gives zeros (mask 0)
for the others. Instances are not thread-safe: give each engine thread its own.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import numpy as np

from fusionstream.engines.errors import EngineError, InputError, ModelDirError
from fusionstream.engines.manifest import (
    EncoderSpec,
    Manifest,
    ModalitySpec,
    TextPreprocess,
    load_manifest,
)
from fusionstream.engines.preprocess import Preprocessor

#: The graph name of the fusion head (the encoders' are their modalities').
FUSION = "fusion"


@dataclass(frozen=True, slots=True)
class RuntimeChoices:
    """What a deployment chooses for whichever backend it runs (the service's settings, as plain
    values): each backend turns them into its own options with :meth:`Runtime.options_for`."""

    threads: int = 0
    device: str = "cpu"
    precision: str = "auto"
    cuda_graphs: bool = True
    cache_dir: Path | None = None


def half_precision_options(name: str, choices: RuntimeChoices) -> dict[str, Any]:
    """Options of a backend whose precision is an ``fp16`` switch (the GPU backends)."""
    if choices.precision == "int8":
        raise EngineError(f"precision int8 runs on the onnxruntime backend, not {name}")
    options: dict[str, Any] = {"threads": choices.threads} if choices.threads else {}
    if choices.precision in ("fp16", "fp32"):
        options["fp16"] = choices.precision == "fp16"
    return options


def refuse_unservable(manifest: Manifest) -> None:
    """Raise :class:`ModelDirError` for an encoders-only directory (no task, no fusion head)."""
    if not manifest.servable:
        raise ModelDirError(
            f"{manifest.path}: an encoders-only directory (no task, no fusion head) cannot be served: "
            f"train a head on it first (fusionstream train OUT --encoders {manifest.directory})"
        )


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # = 1 / (1 + exp(-x)), without overflow warnings


def row_shape(modality: ModalitySpec) -> tuple[int | None, ...]:
    """``modality.row_shape``: per-row shape of an encoder's inputs; ``None`` = any length (tokens)."""
    return modality.row_shape


class Runtime(ABC):
    """Runs a model directory's encoders and fusion head, keyed by modality (either format)."""

    #: Name in ``BACKENDS``.
    name: ClassVar[str] = ""
    #: Options this backend accepts, with their defaults. Every backend accepts ``threads``
    #: (CPU threads, ``None`` = the runtime's default) so a service can pass it blindly.
    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def options_for(cls, choices: RuntimeChoices) -> dict[str, Any]:
        """This backend's options for a deployment's choices; raises :class:`EngineError` for a
        choice it cannot honour. The base maps the thread count and accepts only ``auto``/``fp32``
        precision; a backend with more to choose overrides it."""
        if choices.precision not in ("auto", "fp32"):
            raise EngineError(f"precision {choices.precision} is not available on the {cls.name} backend")
        return {"threads": choices.threads} if choices.threads else {}

    def __init__(self, model_dir: str | os.PathLike[str] | Manifest, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise EngineError(f"{self.name} backend: unknown option(s) {', '.join(unknown)} (accepted: {allowed})")
        self.options: dict[str, Any] = self.defaults | options
        # a Manifest is taken as read (a caller that already loaded it, or built one in memory)
        self.manifest: Manifest = model_dir if isinstance(model_dir, Manifest) else load_manifest(model_dir)
        refuse_unservable(self.manifest)
        assert self.manifest.task is not None and self.manifest.fusion is not None
        self.model_dir = self.manifest.directory
        self.task = self.manifest.task
        self.fusion = self.manifest.fusion
        #: The declared modalities, in ``MODALITIES`` order: the fusion mask's columns.
        self.modalities: tuple[str, ...] = tuple(self.manifest.modalities)
        self.sizes: dict[str, int] = {name: m.encoder.size for name, m in self.manifest.modalities.items()}
        video = self.manifest.modalities.get("video")
        #: Whether the video encoder embeds single frames (:meth:`encode_frames`).
        self.embeds_frames: bool = video is not None and video.encoder.per_frame
        #: The declared preprocessing, ready to use (the tokenizer loaded): set by :meth:`activate`.
        self.preprocess: Preprocessor | None = None
        #: Wall seconds spent in each graph (a modality, or ``fusion``) since construction or since the
        #: caller cleared it: ``fusionstream bench``'s share of engine time per graph. Two clock reads
        #: a graph call, against milliseconds of inference.
        self.graph_seconds: dict[str, float] = {}
        self._rows = {name: row_shape(m) for name, m in self.manifest.modalities.items()}
        text = self.manifest.modalities.get("text")
        hashed = text.preprocess.hashed_ngrams if text and isinstance(text.preprocess, TextPreprocess) else None
        #: Hashed n-gram ids lie in [0, buckets): a larger one would read past the embedding table.
        self._id_limit = hashed.buckets if hashed is not None else None
        self._active = False
        missing = [file for file in self.required_files() if not (self.model_dir / file).is_file()]
        if missing:
            # Worded as `model check` words it: the field that names the file, then the file.
            field = self.manifest.field_naming(missing[0])
            more = f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""
            raise ModelDirError(f"{self.manifest.path}: {f'{field}: ' if field else ''}{self.model_dir / missing[0]} "
                                f"does not exist; the {self.name} backend needs it{more}")

    def graph_files(self) -> dict[str, str]:
        """Graph name (a modality, or ``fusion``) → the file this runtime runs for it."""
        return self.manifest.graph_files()

    def required_files(self) -> list[str]:
        """Files of the model directory this runtime reads (checked at construction)."""
        return list(self.graph_files().values())

    def encoder(self, modality: str) -> EncoderSpec:
        return self.manifest.modalities[modality].encoder

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """Whether :meth:`activate` has run (and :meth:`release` has not)."""
        return self._active

    def activate(self) -> Self:
        """Load the preprocessing, the runtime and the graphs; raises :class:`BackendUnavailable` if the
        runtime is missing here and :class:`ModelDirError` for a graph that disagrees with the manifest."""
        if self._active:
            raise EngineError(f"{self.name} backend is already active")
        preprocess = Preprocessor(self.manifest)
        self._activate_impl()
        self.preprocess = preprocess
        self._active = True
        return self

    def release(self) -> None:
        """Free what :meth:`activate` loaded (sessions, device memory). Safe to call twice."""
        if self._active:
            self._active = False
            self._release_impl()

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return (f"<{type(self).__name__} {self.model_dir} format {self.manifest.source_format} {self.task.kind} "
                f"{','.join(self.modalities)} {state}>")

    # -- inference -----------------------------------------------------------------------------

    @property
    def frame_side(self) -> int:
        """The side JPEG frames are decoded at, at least (the larger of the video input's two)."""
        return self.manifest.frame_side

    def encode(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``float32 [B, size]`` embeddings of B rows of one modality (all treated as present); ``feed``
        maps the encoder's input names to prepared arrays (``self.preprocess``). For a per-frame video
        encoder the rows are single frames (:meth:`encode_frames`)."""
        self._check_active()
        if modality not in self.sizes:
            raise InputError(f"the model does not use {modality} (it uses {', '.join(self.modalities)})")
        spec = self.encoder(modality)
        rows = self._check_feed(modality, spec, feed)
        if rows == 0:
            return np.zeros((0, spec.size), np.float32)
        started = time.perf_counter()
        out = np.asarray(self._encode_impl(modality, feed), dtype=np.float32)
        self.graph_seconds[modality] = self.graph_seconds.get(modality, 0.0) + time.perf_counter() - started
        if out.shape != (rows, spec.size):  # a wrong model file (checked at load), not a caller error
            raise EngineError(f"{self.graph_files()[modality]} returned {out.shape}, expected ({rows}, {spec.size})")
        return out

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Single prepared frames ``[N, ...one frame]`` → ``[N, size]`` (a per-frame video encoder)."""
        if not self.embeds_frames:
            raise EngineError(f"{self.manifest.path}: the video encoder takes whole windows, not single frames")
        self._check_active()
        assert self.preprocess is not None
        return self.encode("video", self.preprocess.video_feed(frames))

    def fuse(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """``float32 [B, outputs]`` from each declared modality's ``[B, size]`` embeddings (zeros where
        absent) and the presence ``mask [B, modalities]``, with the declared activation applied."""
        self._check_active()
        size = mask.shape[0] if isinstance(mask, np.ndarray) and mask.ndim == 2 else -1
        if size < 0 or mask.dtype != np.float32 or mask.shape != (size, len(self.modalities)):
            raise InputError(f"mask must be float32 [B, {len(self.modalities)}] ({', '.join(self.modalities)})")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise InputError("mask must hold only 0 (absent) and 1 (present)")
        ordered: dict[str, np.ndarray] = {}
        for name in self.modalities:
            emb = embeddings.get(name)
            if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.shape != (size, self.sizes[name]):
                got = (emb.dtype, emb.shape) if isinstance(emb, np.ndarray) else type(emb).__name__
                raise InputError(f"{name} embeddings must be float32 [{size}, {self.sizes[name]}], got {got}")
            ordered[name] = emb
        if extra := sorted(set(embeddings) - set(self.modalities)):
            raise InputError(f"the model does not use {', '.join(extra)} (it uses {', '.join(self.modalities)})")
        if size == 0:
            return np.zeros((0, self.task.outputs), np.float32)
        started = time.perf_counter()
        out = np.asarray(self._fuse_impl(ordered, mask), dtype=np.float32)
        self.graph_seconds[FUSION] = self.graph_seconds.get(FUSION, 0.0) + time.perf_counter() - started
        if out.shape != (size, self.task.outputs):
            raise EngineError(f"{self.fusion.file} returned {out.shape}, expected ({size}, {self.task.outputs})")
        if self.fusion.activation == "softmax":
            out = softmax(out)
        elif self.fusion.activation == "sigmoid":
            out = sigmoid(out)
        return out.astype(np.float32, copy=False)

    def _check_active(self) -> None:
        if not self._active:
            raise EngineError(f"{self.name} backend is not active: use it as a context manager, or activate()")

    def _check_feed(self, modality: str, spec: EncoderSpec, feed: dict[str, np.ndarray]) -> int:
        """Rows of a feed whose names, dtypes and per-row shapes are what the encoder declares."""
        if not isinstance(feed, dict) or set(feed) != {t.name for t in spec.inputs.values()}:
            given = sorted(feed) if isinstance(feed, dict) else type(feed).__name__
            wanted = ", ".join(t.name for t in spec.inputs.values())
            raise InputError(f"the {modality} encoder takes inputs {wanted}, got {given}")
        rows = -1
        for tensor in spec.inputs.values():
            array = feed[tensor.name]
            expected = self._rows[modality]
            ok = (isinstance(array, np.ndarray) and array.dtype == np.dtype(tensor.dtype)
                  and array.ndim == len(expected) + 1
                  and all(w is None or g == w for g, w in zip(array.shape[1:], expected, strict=True))
                  and rows in (-1, len(array)))
            if not ok:
                got = (array.dtype.name, array.shape) if isinstance(array, np.ndarray) else type(array).__name__
                per_row = ", ".join("any" if d is None else str(d) for d in expected)
                raise InputError(f"{modality} input {tensor.name!r} must be {tensor.dtype} [n, {per_row}] "
                                 f"(the same n for every input), got {got}")
            rows = len(array)
        if modality == "text" and self._id_limit is not None and rows:
            ids = next(iter(feed.values()))
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self._id_limit:
                raise InputError(f"text ids must be in [0, {self._id_limit}), got [{low}, {high}]")
        return rows

    # -- what a backend implements ---------------------------------------------------------------

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _release_impl(self) -> None: ...

    @abstractmethod
    def _encode_impl(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``[B, size]`` for a validated, non-empty feed of the encoder ``modality`` runs."""

    @abstractmethod
    def _fuse_impl(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """The fusion graph's raw output ``[B, outputs]`` (before the declared activation);
        ``embeddings`` are validated, in ``self.modalities`` order."""


__all__ = ["FUSION", "Runtime", "RuntimeChoices", "half_precision_options", "refuse_unservable", "row_shape",
           "sigmoid", "softmax"]
