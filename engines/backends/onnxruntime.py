"""ONNX Runtime backend: the CPU default (and CUDA/TensorRT execution providers where installed)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from fusionstream.engines.backends.base import Backend, RuntimeChoices
from fusionstream.engines.errors import BackendUnavailable, EngineError, ModelDirError
from fusionstream.engines.spec import FRAME_GRAPH, INT8, MODALITIES, REQUIRED_GRAPHS

PRECISIONS = ("fp32", "int8")


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` per graph (three encoders + fusion).

    Options: ``providers`` (default ``["CPUExecutionProvider"]``), ``threads`` (the option every
    backend takes; here an alias of ``intra_op_num_threads``), ``intra_op_num_threads`` and
    ``inter_op_num_threads`` (``None`` = ONNX Runtime's default, one thread per physical core),
    ``allow_spinning`` (default False, see below), ``precision`` (``"fp32"``, or ``"int8"`` for the
    encoder graphs ``fusionstream quantize`` added, fp32 for graphs it left alone). Graph
    optimisation is always ``ORT_ENABLE_ALL``.

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
        "precision": "fp32",
    }

    @classmethod
    def options_for(cls, choices: RuntimeChoices) -> dict[str, Any]:
        if choices.precision == "fp16":
            raise EngineError("precision fp16 is for GPU backends (tensorrt, or torch with device cuda)")
        options = super().options_for(replace(choices, precision="auto"))
        return options | ({"precision": "int8"} if choices.precision == "int8" else {})

    def __init__(self, model_dir: Any, **options: Any) -> None:
        super().__init__(model_dir, **options)
        if self.options["threads"] is not None and self.options["intra_op_num_threads"] is not None:
            raise EngineError("onnxruntime backend: give threads or intra_op_num_threads, not both")
        if self.options["precision"] not in PRECISIONS:
            raise EngineError(f"onnxruntime backend: precision must be one of {', '.join(PRECISIONS)}")
        if self.options["precision"] == "int8":
            if not any(self.spec.has_graph(f"{name}{INT8}") for name in (*MODALITIES, FRAME_GRAPH)):
                raise ModelDirError(f"{self.model_dir} has no int8 graphs: run `fusionstream quantize` on it first")
            for name in self._graph_files().values():
                if not (self.model_dir / name).is_file():
                    raise ModelDirError(f"{self.model_dir} lacks {name}, needed by the onnxruntime backend")

    def _graph_files(self) -> dict[str, str]:
        """Graph name → file this backend runs: the int8 encoders instead of the fp32 ones if asked."""
        names = [*REQUIRED_GRAPHS] + ([FRAME_GRAPH] if self.spec.has_graph(FRAME_GRAPH) else [])
        files = {}
        for name in names:
            quantized = f"{name}{INT8}"
            use_int8 = self.options["precision"] == "int8" and self.spec.has_graph(quantized)
            files[name] = self.spec.files[quantized if use_int8 else name]
        return files

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
            name: ort.InferenceSession(str(self.model_dir / file), options, providers=providers)
            for name, file in self._graph_files().items()
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
