"""TensorRT backend: engines built from the model directory's ONNX graphs, cached on disk.

Each graph (three encoders, the per-frame image encoder when present, the fusion head)
becomes one TensorRT engine with an optimisation profile over the batch axis
(1 … ``max_batch``, tuned for ``opt_batch``), in fp16 by default. Building takes seconds
to minutes, so engines are kept in a cache directory under a key made of everything the
plan depends on — the ONNX file's SHA-256, the GPU model and compute capability, the
TensorRT version, the precision and the batch profile — and rebuilt automatically when
any of them changes (``fusionstream build-engine MODEL_DIR`` builds them ahead of time).
Device memory is torch's: inputs and outputs are CUDA tensors, so no extra CUDA binding
is needed. Needs the ``[gpu]`` extra (``tensorrt``) and an NVIDIA GPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fusionstream.engines.backends.base import Backend, RuntimeChoices, half_precision_options
from fusionstream.engines.errors import BackendUnavailable, EngineError, ModelDirError
from fusionstream.engines.spec import FRAME_GRAPH, REQUIRED_GRAPHS

log = logging.getLogger(__name__)

#: Bumped when this module changes how it builds engines (invalidates every cached plan).
BUILDER_VERSION = 1


def default_cache_dir() -> Path:
    """``$FUSIONSTREAM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/fusionstream/tensorrt`` (``~/.cache/...``)."""
    explicit = os.environ.get("FUSIONSTREAM_ENGINE_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fusionstream" / "tensorrt"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT plan depends on; a plan is only valid for an identical key."""

    onnx_sha256: str
    gpu: str
    compute_capability: str
    tensorrt: str
    fp16: bool
    min_batch: int
    opt_batch: int
    max_batch: int
    builder: int = BUILDER_VERSION

    @classmethod
    def for_file(cls, onnx_path: Path, *, gpu: str, compute_capability: str, tensorrt: str, fp16: bool,
                 opt_batch: int, max_batch: int) -> EngineKey:
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        return cls(digest, gpu, compute_capability, tensorrt, fp16, 1, opt_batch, max_batch)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:20]

    def plan_path(self, cache_dir: Path, graph: str) -> Path:
        return cache_dir / f"{graph}-{self.digest}.plan"


def _require_tensorrt() -> None:
    # find_spec does not import: a CPU machine pays nothing to learn TensorRT is absent.
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailable(
            "tensorrt backend: the `tensorrt` package is not installed (pip install 'fusionstream[gpu]' "
            "on a machine with an NVIDIA GPU); use backend 'onnxruntime' (CPU) or 'torch' with device='cuda'"
        )


class TensorRTBackend(Backend):
    """Options: ``fp16`` (default True), ``max_batch`` (64), ``opt_batch`` (32, the size the kernels
    are tuned for), ``cache_dir`` (default :func:`default_cache_dir`), ``device`` (CUDA index, 0),
    ``workspace_mb`` (1024), ``threads`` (accepted like every backend's; no effect on a GPU)."""

    name = "tensorrt"
    defaults: ClassVar[dict[str, Any]] = {
        "fp16": True,
        "max_batch": 64,
        "opt_batch": 32,
        "cache_dir": None,
        "device": 0,
        "workspace_mb": 1024,
        "threads": None,
    }

    @classmethod
    def options_for(cls, choices: RuntimeChoices) -> dict[str, Any]:
        options = half_precision_options(cls.name, choices)
        return options | ({"cache_dir": choices.cache_dir} if choices.cache_dir is not None else {})

    def __init__(self, model_dir: Any, **options: Any) -> None:
        _require_tensorrt()
        super().__init__(model_dir, **options)
        if not 1 <= int(self.options["opt_batch"]) <= int(self.options["max_batch"]):
            raise EngineError("tensorrt backend: need 1 <= opt_batch <= max_batch")

    def graphs(self) -> list[str]:
        return [*REQUIRED_GRAPHS] + ([FRAME_GRAPH] if self.spec.has_graph(FRAME_GRAPH) else [])

    # -- lifecycle -------------------------------------------------------------------------------

    def _activate_impl(self) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt backend: no CUDA device is available here")
        self._torch = torch
        self._trt = trt
        self._device = torch.device("cuda", int(self.options["device"]))
        self._stream = torch.cuda.Stream(self._device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines: dict[str, Any] = {}
        self._contexts: dict[str, Any] = {}
        self.built: list[str] = []  # graphs built (not loaded from the cache) by this activation
        for graph in self.graphs():
            engine = self._runtime.deserialize_cuda_engine(self.ensure_plan(graph).read_bytes())
            if engine is None:
                raise EngineError(f"tensorrt backend: could not load the engine of {graph}")
            self._engines[graph] = engine
            self._contexts[graph] = engine.create_execution_context()

    def _release_impl(self) -> None:
        self._contexts.clear()
        self._engines.clear()
        self._torch.cuda.empty_cache()

    # -- engines ---------------------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        return Path(self.options["cache_dir"]) if self.options["cache_dir"] else default_cache_dir()

    def key(self, graph: str) -> EngineKey:
        import tensorrt as trt
        import torch

        index = int(self.options["device"])
        major, minor = torch.cuda.get_device_capability(index)
        return EngineKey.for_file(
            self.model_dir / self.spec.files[graph],
            gpu=torch.cuda.get_device_name(index),
            compute_capability=f"{major}.{minor}",
            tensorrt=trt.__version__,
            fp16=bool(self.options["fp16"]),
            opt_batch=int(self.options["opt_batch"]),
            max_batch=int(self.options["max_batch"]),
        )

    def ensure_plan(self, graph: str) -> Path:
        """The cached plan of ``graph``, built first if no plan matches the current key."""
        path = self.key(graph).plan_path(self.cache_dir, graph)
        if path.is_file():
            return path
        started = time.perf_counter()
        plan = self._build(graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(plan)
        tmp.replace(path)  # atomic: two processes building at once each write a whole plan
        self.built.append(graph)
        log.info("built the TensorRT engine of %s in %.1f s: %s", graph, time.perf_counter() - started, path)
        return path

    def _build(self, graph: str) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self._logger)
        source = self.model_dir / self.spec.files[graph]
        if not parser.parse(source.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelDirError(f"TensorRT cannot parse {source}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20)
        if self.options["fp16"]:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        low, opt, high = 1, int(self.options["opt_batch"]), int(self.options["max_batch"])
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (low, *rest), (opt, *rest), (high, *rest))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT failed to build an engine for {source} (see the log above)")
        return bytes(plan)

    # -- inference -------------------------------------------------------------------------------

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch, trt = self._torch, self._trt
        engine, context = self._engines[graph], self._contexts[graph]
        size = next(iter(feeds.values())).shape[0]
        limit = int(self.options["max_batch"])
        if size > limit:  # beyond the profile: run in slices
            parts = [
                self._run(graph, {k: v[i : i + limit] for k, v in feeds.items()}) for i in range(0, size, limit)
            ]
            return np.concatenate(parts)
        keep = []
        output = None
        with torch.cuda.stream(self._stream):
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                    tensor = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype)).to(
                        self._device, non_blocking=True
                    )
                    context.set_input_shape(name, tuple(tensor.shape))
                    context.set_tensor_address(name, tensor.data_ptr())
                    keep.append(tensor)
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                    shape = tuple(context.get_tensor_shape(name))
                    dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
                    output = torch.empty(shape, dtype=dtype, device=self._device)
                    context.set_tensor_address(name, output.data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"TensorRT failed to run {graph}")
            assert output is not None
            result = output.float().cpu().numpy()  # waits for the stream
        return result

    def _encode_impl(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        return self._run(modality, {modality: inputs})

    def _fuse_impl(
        self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        return self._run("fusion", {"video": emb_video, "audio": emb_audio, "text": emb_text, "mask": mask})


def build_engines(model_dir: Any, **options: Any) -> dict[str, tuple[Path, bool]]:
    """Build (or find) the cached engine of every graph: ``{graph: (plan path, built now)}``."""
    backend = TensorRTBackend(model_dir, **options)
    with backend:
        return {graph: (backend.key(graph).plan_path(backend.cache_dir, graph), graph in backend.built)
                for graph in backend.graphs()}
