"""TensorRT backend: engines built from the model directory's ONNX graphs, cached on disk.

Each graph the manifest declares (an encoder per modality, the fusion head; either format)
becomes one TensorRT engine with an optimisation profile over the batch axis (1 … ``max_batch``,
tuned for ``opt_batch``), in fp16 by default. The rest of each input's shape comes from the graph,
and where the graph leaves an axis dynamic, from the manifest (:func:`input_profiles`): text
``[B, tokens]`` with 1 … ``max_tokens`` tokens, audio ``[B, samples]``, frames ``[B, C, H, W]`` or
``[B, H, W, C]``, embeddings ``[B, size]``, the mask ``[B, modalities]``. Inputs are bound by the
manifest's names. Building takes seconds to minutes, so engines are kept in a cache directory under
a key made of everything the plan depends on — the ONNX file's SHA-256, the GPU model and compute
capability, the TensorRT version, the precision and the profile — and rebuilt automatically when
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

from fusionstream.engines.backends.base import FUSION, Runtime, RuntimeChoices, half_precision_options, row_shape
from fusionstream.engines.errors import BackendUnavailable, EngineError, ModelDirError
from fusionstream.engines.manifest import Manifest, TextPreprocess, load_manifest

log = logging.getLogger(__name__)

#: Bumped when this module changes how it builds engines (invalidates every cached plan).
BUILDER_VERSION = 2
#: Tokens per transcript the text profile is tuned for: a segment of a second or two is a handful
#: of words, and the tokenizer pads a batch to its longest only.
OPT_TOKENS = 32

#: Input name → (min, opt, max) shape of an optimisation profile.
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


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
    #: The profile's shapes beyond the batch axis (e.g. a tokenizer's longest input), as JSON.
    shapes: str = ""
    builder: int = BUILDER_VERSION

    @classmethod
    def for_file(cls, onnx_path: Path, *, gpu: str, compute_capability: str, tensorrt: str, fp16: bool,
                 opt_batch: int, max_batch: int, profile: Profile | None = None) -> EngineKey:
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        shapes = json.dumps(profile or {}, sort_keys=True)
        return cls(digest, gpu, compute_capability, tensorrt, fp16, 1, opt_batch, max_batch, shapes)

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


def _dims(value: Any) -> list[int | None]:
    """An ONNX value's shape; ``None`` for a dynamic (named or unknown) axis."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def input_profiles(manifest: Manifest, graph: str, path: Path, batch: tuple[int, int, int]) -> Profile:
    """The optimisation profile of ``graph`` (a modality or ``fusion``) read from ``path``: the batch
    axis over ``batch`` (min, opt, max), every other axis the graph's, or the manifest's where the
    graph leaves it dynamic; raises :class:`ModelDirError` when the graph's rank disagrees."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {w.name for w in model.graph.initializer}
    if graph == FUSION:
        assert manifest.fusion is not None
        by_name = {name: [manifest.modalities[m].encoder.size] for m, name in manifest.fusion.inputs.items()}
        wanted: dict[str, list[int | None]] = by_name | {manifest.fusion.mask: [len(manifest.modalities)]}
        tokens = (1, 1, 1)
    else:
        modality = manifest.modalities[graph]
        rest = list(row_shape(modality))
        wanted = {tensor.name: rest for tensor in modality.encoder.inputs.values()}
        pre = modality.preprocess
        longest = pre.max_tokens if isinstance(pre, TextPreprocess) else 1
        tokens = (1, min(OPT_TOKENS, longest), longest)
    profile: Profile = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        dims, expected = _dims(value), wanted.get(value.name)
        if expected is None or len(dims) != len(expected) + 1:
            raise ModelDirError(f"{path}: input {value.name!r} {dims} does not take what the manifest declares "
                                f"for {graph} ([batch, {', '.join(map(str, expected or []))}])")
        shapes: list[list[int]] = [[b] for b in batch]
        for got, want in zip(dims[1:], expected, strict=True):
            for i, shape in enumerate(shapes):
                shape.append(got if got is not None else want if want is not None else tokens[i])
        low, opt, high = (tuple(shape) for shape in shapes)
        profile[value.name] = (low, opt, high)
    return profile


class TensorRTBackend(Runtime):
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
        """The graphs an engine is built for: each declared encoder's and the fusion head's."""
        return list(self.graph_files())

    def profile(self, graph: str) -> Profile:
        batch = (1, int(self.options["opt_batch"]), int(self.options["max_batch"]))
        return input_profiles(self.manifest, graph, self.model_dir / self.graph_files()[graph], batch)

    # -- lifecycle -------------------------------------------------------------------------------

    def _activate_impl(self) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt backend: no CUDA device is available here")
        from fusionstream.engines.manifest_check import check_model_dir

        check_model_dir(self.model_dir, int8=False)  # names, dtypes and sizes, before minutes of building
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
            self.model_dir / self.graph_files()[graph],
            gpu=torch.cuda.get_device_name(index),
            compute_capability=f"{major}.{minor}",
            tensorrt=trt.__version__,
            fp16=bool(self.options["fp16"]),
            opt_batch=int(self.options["opt_batch"]),
            max_batch=int(self.options["max_batch"]),
            profile=self.profile(graph),
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
        source = self.model_dir / self.graph_files()[graph]
        if not parser.parse(source.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelDirError(f"TensorRT cannot parse {source}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20)
        if self.options["fp16"]:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in self.profile(graph).items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"TensorRT failed to build an engine for {source} (see the log above)")
        return bytes(plan)

    # -- inference -------------------------------------------------------------------------------

    def _run(self, graph: str, feeds: dict[str, np.ndarray], wanted: str) -> np.ndarray:
        """Output ``wanted`` of ``graph`` for ``feeds`` (graph input name → array)."""
        torch, trt = self._torch, self._trt
        engine, context = self._engines[graph], self._contexts[graph]
        size = next(iter(feeds.values())).shape[0]
        limit = int(self.options["max_batch"])
        if size > limit:  # beyond the profile: run in slices
            parts = [
                self._run(graph, {k: v[i : i + limit] for k, v in feeds.items()}, wanted)
                for i in range(0, size, limit)
            ]
            return np.concatenate(parts)
        keep = []
        outputs: dict[str, Any] = {}
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
            # every output needs an address, even those the manifest does not read
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                    shape = tuple(context.get_tensor_shape(name))
                    dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
                    outputs[name] = torch.empty(shape, dtype=dtype, device=self._device)
                    context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"TensorRT failed to run {self.graph_files()[graph]}")
            result = outputs[wanted].float().cpu().numpy()  # waits for the stream
        return result

    def _encode_impl(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._run(modality, feed, self.encoder(modality).output)

    def _fuse_impl(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        feed = {self.fusion.inputs[name]: emb for name, emb in embeddings.items()} | {self.fusion.mask: mask}
        return self._run(FUSION, feed, self.fusion.output)


def build_engines(model_dir: Any, **options: Any) -> dict[str, tuple[Path, bool]]:
    """Build (or find) the cached engine of every graph of ``model_dir`` (either format):
    ``{graph: (plan path, built now)}``, a graph being a modality or ``fusion``."""
    # Read first: a directory that is no model says so, not that tensorrt is missing (a CPU box checking it).
    backend = TensorRTBackend(load_manifest(model_dir), **options)
    with backend:
        return {graph: (backend.key(graph).plan_path(backend.cache_dir, graph), graph in backend.built)
                for graph in backend.graphs()}
