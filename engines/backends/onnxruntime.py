"""ONNX Runtime backend: the CPU default (and CUDA/TensorRT execution providers where installed).

Runs either format: one ``InferenceSession`` per graph the manifest declares (an encoder per
modality, the fusion head). The directory is checked against its manifest at activation
(:func:`~fusionstream.engines.manifest_check.check_model_dir`), so a bad model is refused before
the first window, naming the file and the field.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from fusionstream.engines.backends.base import FUSION, Runtime, RuntimeChoices
from fusionstream.engines.errors import BackendUnavailable, EngineError, ModelDirError

PRECISIONS = ("fp32", "int8")


class OnnxRuntimeBackend(Runtime):
    """One ``InferenceSession`` per graph (each declared encoder + the fusion head).

    Options: ``providers`` (default ``["CPUExecutionProvider"]``), ``threads`` (the option every
    backend takes; here an alias of ``intra_op_num_threads``), ``intra_op_num_threads`` and
    ``inter_op_num_threads`` (``None`` = ONNX Runtime's default, one thread per physical core),
    ``allow_spinning`` (default False, see below), ``precision`` (``"fp32"``, or ``"int8"`` for the
    encoder graphs ``fusionstream quantize`` wrote, fp32 for the graphs it left alone). Graph
    optimisation is always ``ORT_ENABLE_ALL``.

    Spinning is off by default because a window runs several sessions back to back, each with
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
        precision = options.get("precision", self.defaults["precision"])
        if precision not in PRECISIONS:
            raise EngineError(f"onnxruntime backend: precision must be one of {', '.join(PRECISIONS)}")
        if options.get("threads") is not None and options.get("intra_op_num_threads") is not None:
            raise EngineError("onnxruntime backend: give threads or intra_op_num_threads, not both")
        super().__init__(model_dir, **options)
        if precision == "int8" and not any(m.encoder.int8_file for m in self.manifest.modalities.values()):
            raise ModelDirError(f"{self.model_dir} has no int8 graphs: run `fusionstream quantize` on it first")
        self._sessions: dict[str, Any] = {}

    def graph_files(self) -> dict[str, str]:
        """The int8 encoders instead of the fp32 ones where asked and written."""
        return self.manifest.graph_files(int8=self.options["precision"] == "int8")

    def _activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            # The dynamic loader's words for an address-space limit (ulimit -v) too low to map the library.
            hint = ("; the process may map no more memory: a limit such as `ulimit -v` is too low (a worker "
                    "reserves about 1 GB of address space; docs/operations.md, 'Small boxes')"
                    if "failed to map segment" in str(exc) or "cannot allocate memory" in str(exc).lower() else "")
            raise BackendUnavailable(f"onnxruntime backend: cannot import onnxruntime ({exc}){hint}") from exc
        from fusionstream.engines.manifest_check import check_model_dir

        providers = list(self.options["providers"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime backend: execution provider(s) {', '.join(missing)} not available here "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        # Refused here, at load, not at the first window: names, dtypes, ranks, shapes, output sizes.
        check_model_dir(self.model_dir, int8=self.options["precision"] == "int8")
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
            graph: ort.InferenceSession(str(self.model_dir / file), options, providers=providers)
            for graph, file in self.graph_files().items()
        }

    def _release_impl(self) -> None:
        self._sessions = {}

    def _encode_impl(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self._sessions[modality].run([self.encoder(modality).output], feed)
        return out

    def _fuse_impl(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        feed = {self.fusion.inputs[name]: emb for name, emb in embeddings.items()} | {self.fusion.mask: mask}
        (out,) = self._sessions[FUSION].run([self.fusion.output], feed)
        return out
