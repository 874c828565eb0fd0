"""The backend template every runtime follows (after Polygraphy's ``BaseRunner``).

A backend is built cheaply (it reads ``model.json`` and checks the files exist), does its
heavy work in :meth:`Backend.activate` (import the runtime, load graphs, allocate device
memory) and frees it in :meth:`Backend.release`; use it as a context manager::

    with load_backend("onnxruntime", "models/digits") as backend:
        probs = backend.infer(batch)        # float32 [B, n_classes]

Public methods validate their inputs and then call the ``_*_impl`` hooks a runtime
implements. The template also owns the rule that a missing modality skips its encoder:
each encoder runs only on the rows where its modality is present, absent rows get zero
embeddings, and a modality absent from the whole batch costs nothing. Instances are not
thread-safe: give each engine thread its own.
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
from fusionstream.engines.features import Batch
from fusionstream.engines.spec import FRAME_GRAPH, MODALITIES, REQUIRED_GRAPHS, ModelSpec

Embeddings = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class RuntimeChoices:
    """What a deployment chooses for whichever backend it runs (the service's settings, as plain
    values): each backend turns them into its own options with :meth:`Backend.options_for`."""

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


class Backend(ABC):
    """Runs a model directory: ``infer(batch) -> probabilities``, or the two steps separately."""

    #: Name used by ``load_backend``.
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

    def __init__(self, model_dir: str | os.PathLike[str], **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise EngineError(f"{self.name} backend: unknown option(s) {', '.join(unknown)} (accepted: {allowed})")
        self.model_dir = Path(model_dir)
        self.spec = ModelSpec.load(self.model_dir)
        self.options: dict[str, Any] = self.defaults | options
        missing = [name for name in self.required_files() if not (self.model_dir / name).is_file()]
        if missing:
            raise ModelDirError(f"{self.model_dir} lacks {', '.join(missing)}, needed by the {self.name} backend")
        self._active = False
        #: Wall seconds spent in each graph since construction (or since the caller cleared it): what
        #: ``fusionstream bench`` reports as each graph's share of engine time. Two clock reads a
        #: graph call, against milliseconds of inference.
        self.graph_seconds: dict[str, float] = {}

    def required_files(self) -> list[str]:
        """Files of the model directory this backend reads (checked at construction)."""
        names = [*REQUIRED_GRAPHS] + ([FRAME_GRAPH] if self.spec.has_graph(FRAME_GRAPH) else [])
        return [self.spec.files[name] for name in names]

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """Whether :meth:`activate` has run (and :meth:`release` has not)."""
        return self._active

    def activate(self) -> Self:
        """Load the runtime and the model; raises :class:`BackendUnavailable` if the runtime is missing."""
        if self._active:
            raise EngineError(f"{self.name} backend is already active")
        self._activate_impl()
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
        return f"<{type(self).__name__} {self.model_dir} fusion={self.spec.fusion} {state}>"

    # -- inference -----------------------------------------------------------------------------

    def infer(self, batch: Batch) -> np.ndarray:
        """Class probabilities ``float32 [B, n_classes]`` for a batch (rows sum to 1)."""
        self._check_ready(batch)
        return self._checked_probs(self._infer_impl(batch), len(batch))

    def infer_embeddings(self, batch: Batch) -> Embeddings:
        """Per-modality embeddings ``float32 [B, embed_dim]`` (video, audio, text); absent rows are 0."""
        self._check_ready(batch)
        return self._embed(batch)

    def encode(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        """Embed rows of one modality, all treated as present (e.g. only windows not cached yet)."""
        self._check_active()
        if modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
        shape = self.spec.input_shapes[modality]
        dtype = np.int64 if modality == "text" else np.float32
        if not isinstance(inputs, np.ndarray) or inputs.dtype != dtype or inputs.shape[1:] != shape:
            got = (inputs.dtype, inputs.shape) if isinstance(inputs, np.ndarray) else type(inputs).__name__
            raise InputError(
                f"{modality} inputs must be {np.dtype(dtype).name} [n, {', '.join(map(str, shape))}], got {got}"
            )
        if len(inputs) == 0:
            return np.zeros((0, self.spec.embed_dim), np.float32)
        return self._encode(modality, inputs)

    @property
    def embeds_frames(self) -> bool:
        """Whether :meth:`encode_frames` works: the model has a per-frame image graph (or is torch)."""
        return self.spec.has_graph(FRAME_GRAPH)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Embed single frames ``float32 [N, 3, S, S]`` → ``[N, embed_dim]``; a window's video embedding
        is the mean of its K frames' (so callers can cache frames that overlapping windows share)."""
        self._check_active()
        if not self.embeds_frames:
            raise EngineError(f"{self.model_dir} has no per-frame graph: re-export it to embed frames one by one")
        s = self.spec.image_size
        if not isinstance(frames, np.ndarray) or frames.dtype != np.float32 or frames.shape[1:] != (3, s, s):
            got = (frames.dtype, frames.shape) if isinstance(frames, np.ndarray) else type(frames).__name__
            raise InputError(f"frames must be float32 [n, 3, {s}, {s}], got {got}")
        if len(frames) == 0:
            return np.zeros((0, self.spec.embed_dim), np.float32)
        return self._encode(FRAME_GRAPH, frames)

    def fuse(self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Probabilities ``[B, n_classes]`` from embeddings ``float32 [B, embed_dim]`` and ``mask [B, 3]``."""
        self._check_active()
        embeddings = (emb_video, emb_audio, emb_text)
        size = mask.shape[0] if isinstance(mask, np.ndarray) else -1
        for name, emb in zip(MODALITIES, embeddings, strict=True):
            if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.shape != (size, self.spec.embed_dim):
                got = (emb.dtype, emb.shape) if isinstance(emb, np.ndarray) else type(emb).__name__
                raise InputError(f"{name} embeddings must be float32 [{size}, {self.spec.embed_dim}], got {got}")
        if not isinstance(mask, np.ndarray) or mask.dtype != np.float32 or mask.shape != (size, len(MODALITIES)):
            raise InputError(f"mask must be float32 [B, {len(MODALITIES)}]")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise InputError("mask must hold only 0 (absent) and 1 (present)")
        if size == 0:
            return np.zeros((0, self.spec.n_classes), np.float32)
        started = time.perf_counter()
        probs = self._fuse_impl(emb_video, emb_audio, emb_text, mask)
        self.graph_seconds["fusion"] = self.graph_seconds.get("fusion", 0.0) + time.perf_counter() - started
        return self._checked_probs(probs, size)

    def _check_active(self) -> None:
        if not self._active:
            raise EngineError(f"{self.name} backend is not active: use `with load_backend(...) as b:` or activate()")

    def _check_ready(self, batch: Batch) -> None:
        self._check_active()
        if not isinstance(batch, Batch):
            raise InputError(f"expected an fusionstream.engines.features.Batch, got {type(batch).__name__}")
        batch.check(self.spec)

    def _checked_probs(self, probs: np.ndarray, size: int) -> np.ndarray:
        out = np.asarray(probs, dtype=np.float32)
        if out.shape != (size, self.spec.n_classes):  # e.g. fusion.onnx trained for other classes than model.json's
            raise EngineError(
                f"fusion graph returned {out.shape}, expected ({size}, {self.spec.n_classes}) probabilities"
            )
        return out

    def _encode(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        """``modality`` is one of ``MODALITIES`` or ``FRAME_GRAPH``."""
        started = time.perf_counter()
        out = np.asarray(self._encode_impl(modality, inputs), dtype=np.float32)
        self.graph_seconds[modality] = self.graph_seconds.get(modality, 0.0) + time.perf_counter() - started
        if out.shape != (len(inputs), self.spec.embed_dim):  # a wrong model file, not a caller error
            raise EngineError(
                f"{modality} encoder returned {out.shape}, expected ({len(inputs)}, {self.spec.embed_dim})"
            )
        return out

    def _embed(self, batch: Batch) -> Embeddings:
        """The skip rule: run each encoder on its present rows only; zeros elsewhere."""
        size, out = len(batch), []
        for column, name in enumerate(MODALITIES):
            rows = np.flatnonzero(batch.mask[:, column])
            inputs = getattr(batch, name)
            if rows.size == size:
                out.append(self._encode(name, inputs))
                continue
            emb = np.zeros((size, self.spec.embed_dim), np.float32)
            if rows.size:
                emb[rows] = self._encode(name, inputs[rows])
            out.append(emb)
        return out[0], out[1], out[2]

    # -- what a runtime implements ---------------------------------------------------------------

    def _infer_impl(self, batch: Batch) -> np.ndarray:
        """Probabilities for a validated batch; the default chains the encoders and the fusion graph."""
        return self._fuse_impl(*self._embed(batch), batch.mask)

    @abstractmethod
    def _activate_impl(self) -> None:
        """Import the runtime and load the model."""

    @abstractmethod
    def _release_impl(self) -> None:
        """Drop everything :meth:`_activate_impl` created."""

    @abstractmethod
    def _encode_impl(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        """``[n, D]`` embeddings of ``n >= 1`` valid rows of one modality (or of single frames, for
        ``FRAME_GRAPH``, when :attr:`embeds_frames`)."""

    @abstractmethod
    def _fuse_impl(
        self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """``float32 [B, C]`` probabilities from validated embeddings and mask."""
