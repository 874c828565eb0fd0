"""A format-2 model directory on ONNX Runtime (docs/model-format.md).

One session per declared encoder and one for the fusion head. The directory is checked at load
(:func:`~fusionstream.engines.manifest_check.check_model_dir`: every graph's declared inputs,
outputs, dtypes and ranks against the preprocessing, one dummy window through each, the output
sizes against the declared ones), so a bad model is refused before the first window, with an error
naming the file and the field.

::

    with open_manifest_runtime("onnxruntime", manifest) as runtime:
        video = runtime.encode("video", runtime.preprocess.video_feed(pixels))   # [B, size]
        scores = runtime.fuse({"video": video}, mask)                            # [B, outputs]

Only the onnxruntime backend runs format 2; torch and tensorrt for it are future work.
Instances are not thread-safe: one per engine thread.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Self

import numpy as np

from fusionstream.engines.backends.base import RuntimeChoices
from fusionstream.engines.backends.onnxruntime import OnnxRuntimeBackend
from fusionstream.engines.errors import BackendUnavailable, EngineError, InputError, ModelDirError
from fusionstream.engines.manifest import Manifest, VideoPreprocess
from fusionstream.engines.preprocess import Preprocessor

#: The one backend that runs format-2 directories.
BACKEND = "onnxruntime"
#: Options this runtime takes (a subset of the onnxruntime backend's).
DEFAULTS: dict[str, Any] = {
    "providers": ("CPUExecutionProvider",),
    "threads": None,
    "intra_op_num_threads": None,
    "inter_op_num_threads": None,
    "allow_spinning": False,
    "precision": "fp32",
}


def refuse_unservable(manifest: Manifest) -> None:
    """Raise :class:`ModelDirError` for an encoders-only directory (no task, no fusion head)."""
    if not manifest.servable:
        raise ModelDirError(
            f"{manifest.path}: an encoders-only directory (no task, no fusion head) cannot be served: "
            f"train a head on it first (fusionstream train OUT --encoders {manifest.directory})"
        )


def manifest_runtime_options(backend: str, choices: RuntimeChoices) -> dict[str, Any]:
    """The runtime's options for a deployment's choices; refuses a backend or precision format 2 lacks."""
    if backend != BACKEND:
        raise EngineError(
            f"format-2 model directories run on the {BACKEND} backend only, not {backend} (torch and tensorrt "
            f"for format 2 are future work): set backend={BACKEND}"
        )
    if choices.precision == "int8":
        raise EngineError("precision int8 needs the int8 graphs of `fusionstream quantize`, which runs on format-1 "
                          "model directories only; use precision fp32 (or auto) for this model")
    return OnnxRuntimeBackend.options_for(choices)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # = 1 / (1 + exp(-x)), without overflow warnings


class ManifestRuntime:
    """Encoders and fusion head of a format-2 directory on ONNX Runtime; a context manager."""

    name = BACKEND

    def __init__(self, manifest: Manifest, **options: Any) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise EngineError(f"{BACKEND} runtime: unknown option(s) {', '.join(unknown)} "
                              f"(accepted: {', '.join(DEFAULTS)})")
        refuse_unservable(manifest)
        self.manifest = manifest
        self.options = DEFAULTS | options
        if self.options["threads"] is not None and self.options["intra_op_num_threads"] is not None:
            raise EngineError(f"{BACKEND} runtime: give threads or intra_op_num_threads, not both")
        if self.options["precision"] != "fp32":
            raise EngineError(f"{BACKEND} runtime: format-2 models run in fp32, not {self.options['precision']}")
        assert manifest.task is not None and manifest.fusion is not None
        self.task = manifest.task
        self.fusion = manifest.fusion
        #: The declared modalities, in ``MODALITIES`` order: the fusion mask's columns.
        self.modalities: tuple[str, ...] = tuple(manifest.modalities)
        self.sizes = {name: m.encoder.size for name, m in manifest.modalities.items()}
        video = manifest.modalities.get("video")
        self.embeds_frames = video is not None and video.encoder.per_frame
        self.preprocess: Preprocessor | None = None
        #: Wall seconds spent in each graph (a modality, or ``fusion``) since construction or since the
        #: caller cleared it: ``fusionstream bench``'s share of engine time per graph.
        self.graph_seconds: dict[str, float] = {}
        self._sessions: dict[str, Any] = {}
        self._active = False

    # -- lifecycle -----------------------------------------------------------------------------

    def activate(self) -> Self:
        """Check the directory against its manifest, then open one session per graph."""
        if self._active:
            raise EngineError(f"{BACKEND} runtime is already active")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"{BACKEND} runtime: cannot import onnxruntime ({exc})") from exc
        from fusionstream.engines.manifest_check import check_model_dir

        providers = list(self.options["providers"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"{BACKEND} runtime: execution provider(s) {', '.join(missing)} not available here "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        # Refused here, at load, not at the first window: names, dtypes, ranks, shapes, output sizes.
        check_model_dir(self.manifest.directory)
        self.preprocess = Preprocessor(self.manifest)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if self.options["allow_spinning"] else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        threads = self.options["intra_op_num_threads"] or self.options["threads"]
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if self.options["inter_op_num_threads"] is not None:
            options.inter_op_num_threads = int(self.options["inter_op_num_threads"])
        directory = self.manifest.directory
        self._sessions = {
            name: ort.InferenceSession(str(directory / file), options, providers=providers)
            for name, file in self.manifest.graph_files().items()
        }
        self._active = True
        return self

    def release(self) -> None:
        self._active = False
        self._sessions = {}

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"<ManifestRuntime {self.manifest.directory} {self.task.kind} {','.join(self.modalities)} {state}>"

    # -- inference -----------------------------------------------------------------------------

    @property
    def frame_side(self) -> int:
        """The side JPEG frames are decoded at, at least (the larger of the video input's two)."""
        video = self.manifest.modalities.get("video")
        if video is None:
            return 0
        assert isinstance(video.preprocess, VideoPreprocess)
        return max(video.preprocess.height, video.preprocess.width)

    def encode(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``float32 [B, size]`` embeddings of B rows of one modality (all treated as present); ``feed``
        maps the encoder's input names to prepared arrays (``self.preprocess``). For a per-frame video
        encoder the rows are single frames (:meth:`encode_frames`)."""
        self._check_active()
        if modality not in self.sizes:
            raise InputError(f"the model does not use {modality} (it uses {', '.join(self.modalities)})")
        spec = self.manifest.modalities[modality].encoder
        rows = len(next(iter(feed.values())))
        if rows == 0:
            return np.zeros((0, spec.size), np.float32)
        started = time.perf_counter()
        (out,) = self._sessions[modality].run([spec.output], feed)
        self.graph_seconds[modality] = self.graph_seconds.get(modality, 0.0) + time.perf_counter() - started
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (rows, spec.size):  # checked at load; a graph with data-dependent shapes could still
            raise EngineError(f"{spec.file} returned {out.shape}, expected ({rows}, {spec.size})")
        return out

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Single prepared frames ``[N, ...one frame]`` → ``[N, size]`` (a per-frame video encoder)."""
        if not self.embeds_frames:
            raise EngineError(f"{self.manifest.path}: the video encoder takes whole windows, not single frames")
        assert self.preprocess is not None
        return self.encode("video", self.preprocess.video_feed(frames))

    def fuse(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """``float32 [B, outputs]`` from each declared modality's ``[B, size]`` embeddings (zeros where
        absent) and the presence ``mask [B, modalities]``, with the declared activation applied."""
        self._check_active()
        size = mask.shape[0] if isinstance(mask, np.ndarray) else -1
        if not isinstance(mask, np.ndarray) or mask.dtype != np.float32 or mask.shape != (size, len(self.modalities)):
            raise InputError(f"mask must be float32 [B, {len(self.modalities)}] ({', '.join(self.modalities)})")
        feed = {self.fusion.mask: mask}
        for name in self.modalities:
            emb = embeddings.get(name)
            if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or emb.shape != (size, self.sizes[name]):
                got = (emb.dtype, emb.shape) if isinstance(emb, np.ndarray) else type(emb).__name__
                raise InputError(f"{name} embeddings must be float32 [{size}, {self.sizes[name]}], got {got}")
            feed[self.fusion.inputs[name]] = emb
        if size == 0:
            return np.zeros((0, self.task.outputs), np.float32)
        started = time.perf_counter()
        (out,) = self._sessions["fusion"].run([self.fusion.output], feed)
        self.graph_seconds["fusion"] = self.graph_seconds.get("fusion", 0.0) + time.perf_counter() - started
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (size, self.task.outputs):
            raise EngineError(f"{self.fusion.file} returned {out.shape}, expected ({size}, {self.task.outputs})")
        if self.fusion.activation == "softmax":
            out = softmax(out)
        elif self.fusion.activation == "sigmoid":
            out = sigmoid(out)
        return out.astype(np.float32, copy=False)

    def _check_active(self) -> None:
        if not self._active:
            raise EngineError(f"{BACKEND} runtime is not active: use it as a context manager, or activate()")


def open_manifest_runtime(backend: str, manifest: Manifest, **options: Any) -> ManifestRuntime:
    """A runtime for a format-2 ``manifest`` (not yet active); refuses backends other than onnxruntime."""
    if backend != BACKEND:
        manifest_runtime_options(backend, RuntimeChoices())  # raises, naming the backend
    return ManifestRuntime(manifest, **options)


__all__ = ["BACKEND", "ManifestRuntime", "manifest_runtime_options", "open_manifest_runtime", "refuse_unservable"]
