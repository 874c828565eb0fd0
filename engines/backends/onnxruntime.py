"""ONNX Runtime backend: the CPU default (and CUDA/TensorRT execution providers where installed)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from engines.backends.base import Backend
from engines.errors import BackendUnavailable, EngineError
from engines.spec import MODALITIES


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` per graph (three encoders + fusion).

    Options: ``providers`` (default ``["CPUExecutionProvider"]``), ``threads`` (the option every
    backend takes; here an alias of ``intra_op_num_threads``), ``intra_op_num_threads`` and
    ``inter_op_num_threads`` (``None`` = ONNX Runtime's default, one thread per physical core),
    ``allow_spinning`` (default False, see below). Graph optimisation is always ``ORT_ENABLE_ALL``.

    Spinning is off by default because a window runs four sessions back to back, each with
    its own thread pool: a pool that keeps spinning after its graph finished takes the cores
    from the next one. Measured on 2 cores: 15 ms per window with spinning, 2.5 ms without.
    """

    name = "onnxruntime"
    defaults: ClassVar[dict[str, Any]] = {
        "providers": ("CPUExecutionProvider",),
        "threads": None,
        "intra_op_num_threads": None,
        "inter_op_num_threads": None,
        "allow_spinning": False,
    }

    def __init__(self, model_dir: Any, **options: Any) -> None:
        super().__init__(model_dir, **options)
        if self.options["threads"] is not None and self.options["intra_op_num_threads"] is not None:
            raise EngineError("onnxruntime backend: give threads or intra_op_num_threads, not both")

    def _activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime backend: cannot import onnxruntime ({exc})") from exc
        providers = list(self.options["providers"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime backend: execution provider(s) {', '.join(missing)} not available here "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
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
        self._sessions = {
            name: ort.InferenceSession(str(self.model_dir / self.spec.files[name]), options, providers=providers)
            for name in (*MODALITIES, "fusion")
        }

    def _release_impl(self) -> None:
        self._sessions = {}

    def _encode_impl(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        return self._sessions[modality].run(None, {modality: inputs})[0]

    def _fuse_impl(
        self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        feeds = {"video": emb_video, "audio": emb_audio, "text": emb_text, "mask": mask}
        return self._sessions["fusion"].run(None, feeds)[0]
