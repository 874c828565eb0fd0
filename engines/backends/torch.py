"""PyTorch backend, on CPU or CUDA (optionally fp16), for either model format.

- Format 1 (fusionstream's own architecture) runs the weights ``export`` saved as ``model.pt``
  through :class:`~fusionstream.engines.model.MultimodalModel`; no ONNX graph is read.
- Format 2 runs each graph the manifest declares, converted to torch with ``onnx2torch``
  (:mod:`~fusionstream.engines.backends.onnx_torch`); a graph it cannot convert is refused at
  activation, naming the file and the op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from fusionstream.engines.backends.base import FUSION, Runtime, RuntimeChoices, half_precision_options
from fusionstream.engines.errors import BackendUnavailable, EngineError
from fusionstream.engines.spec import MODALITIES, TORCH_WEIGHTS, ModelSpec


class TorchBackend(Runtime):
    """Options: ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), ``fp16`` (CUDA only), ``cuda_graphs``
    (CUDA only: capture each graph once per power-of-two batch size up to ``max_batch`` and replay
    it, which removes the per-kernel launch cost that dominates small encoders) and ``threads``
    (CPU threads; torch's setting is process-wide, so it applies to all torch work in the process).

    Useful as the reference the compiled backends are compared with, and on GPUs without
    TensorRT. Inputs and outputs stay numpy float32 whatever the compute precision.
    """

    name = "torch"
    defaults: ClassVar[dict[str, Any]] = {
        "device": "cpu", "fp16": False, "cuda_graphs": False, "max_batch": 64, "threads": None,
    }

    @classmethod
    def options_for(cls, choices: RuntimeChoices) -> dict[str, Any]:
        options = half_precision_options(cls.name, choices) | {"device": choices.device}
        if choices.device.startswith("cuda"):
            options["cuda_graphs"] = choices.cuda_graphs
        return options

    def __init__(self, model_dir: Any, **options: Any) -> None:
        device = str(options.get("device", self.defaults["device"]))
        if options.get("fp16") and not device.startswith("cuda"):
            raise EngineError("torch backend: fp16 needs a CUDA device (CPU half precision is slow and inexact)")
        if options.get("cuda_graphs") and not device.startswith("cuda"):
            raise EngineError("torch backend: cuda_graphs needs a CUDA device")
        super().__init__(model_dir, **options)

    @property
    def v1(self) -> bool:
        """Whether this is a format-1 directory (run from ``model.pt``, not from its graphs)."""
        return self.manifest.source_format == 1

    def required_files(self) -> list[str]:
        """Format 1: only the saved weights (the ONNX graphs are not read); format 2: every graph."""
        return [TORCH_WEIGHTS] if self.v1 else super().required_files()

    def _activate_impl(self) -> None:
        import torch

        device = torch.device(self.options["device"])
        if self.options["threads"] is not None and device.type == "cpu":
            torch.set_num_threads(int(self.options["threads"]))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch backend: device {device} requested but CUDA is not available here")
        self._torch = torch
        self._device = device
        self._dtype = torch.float16 if self.options["fp16"] else torch.float32
        self._graphs: dict[tuple[Any, ...], tuple[Any, list[Any], Any]] = {}
        self._fns = self._load_v1() if self.v1 else self._load_v2()

    def _load_v1(self) -> dict[str, Callable[..., Any]]:
        """The graphs of ``model.pt``: each encoder (the per-frame one for a per-frame video encoder)
        and the head with its softmax (what format 1's ``fusion.onnx`` computes)."""
        torch = self._torch
        from fusionstream.engines.model import MultimodalModel

        spec = ModelSpec.load(self.model_dir)
        state = torch.load(self.model_dir / TORCH_WEIGHTS, map_location=self._device, weights_only=True)
        model = MultimodalModel(spec)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # weights saved from a different architecture
            raise EngineError(f"torch backend: {TORCH_WEIGHTS} does not match model.json: {exc}") from None
        model = model.to(self._device).eval().to(self._dtype)
        # The log-mel constants stay float32 (LogMel computes in float32 anyway; see its docstring).
        model.audio_encoder.frontend.float()
        self._model = model
        fns: dict[str, Callable[..., Any]] = dict(model.encoders)
        if self.embeds_frames:
            fns["video"] = model.video_encoder.embed_frames

        def probs(*tensors: Any) -> Any:
            return torch.softmax(model.head(*tensors).float(), dim=-1)

        fns[FUSION] = probs
        return fns

    def _load_v2(self) -> dict[str, Callable[..., Any]]:
        """Each declared graph converted with onnx2torch, called with its inputs in graph order."""
        from fusionstream.engines.backends.onnx_torch import convert_graph, graph_inputs, graph_outputs
        from fusionstream.engines.manifest_check import check_model_dir

        check_model_dir(self.model_dir, int8=False)
        fns: dict[str, Callable[..., Any]] = {}
        self._order: dict[str, list[str]] = {}
        for graph, file in self.graph_files().items():
            path = self.model_dir / file
            module = convert_graph(path).to(self._device).to(self._dtype)
            wanted = self.fusion.output if graph == FUSION else self.encoder(graph).output
            fns[graph] = _Picked(module, graph_outputs(path).index(wanted))
            self._order[graph] = graph_inputs(path)
        return fns

    def _release_impl(self) -> None:
        device = self._device
        self._graphs.clear()
        self._fns = {}
        self._model = None
        if device.type == "cuda":
            self._torch.cuda.empty_cache()  # give the memory back to other processes, not just our cache

    def _tensor(self, array: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(array).to(self._device, non_blocking=True)
        return tensor.to(self._dtype) if tensor.is_floating_point() else tensor

    def _encode_impl(self, modality: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        inputs = list(feed.values()) if self.v1 else [feed[name] for name in self._order[modality]]
        return self._call(modality, self._fns[modality], inputs)

    def _fuse_impl(self, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        if self.v1:  # the head takes video, audio, text and the mask positionally
            return self._call(FUSION, self._fns[FUSION], [*(embeddings[m] for m in MODALITIES), mask])
        by_name = {self.fusion.inputs[m]: e for m, e in embeddings.items()} | {self.fusion.mask: mask}
        return self._call(FUSION, self._fns[FUSION], [by_name[name] for name in self._order[FUSION]])

    def _call(self, name: str, fn: Any, inputs: list[np.ndarray]) -> np.ndarray:
        if not self.options["cuda_graphs"]:
            with self._torch.inference_mode():
                return fn(*(self._tensor(a) for a in inputs)).float().cpu().numpy()
        limit = int(self.options["max_batch"])
        size = len(inputs[0])
        if size > limit:
            return np.concatenate(
                [self._call(name, fn, [a[i : i + limit] for a in inputs]) for i in range(0, size, limit)]
            )
        return self._replay(name, fn, inputs, min(1 << (size - 1).bit_length(), limit))

    def _replay(self, name: str, fn: Any, inputs: list[np.ndarray], bucket: int) -> np.ndarray:
        """Run ``fn`` through a CUDA graph captured for batches of ``bucket`` rows (inputs zero-padded).

        A graph is captured per shape: text from a tokenizer has one per padded length."""
        torch = self._torch
        key = (name, bucket, *(a.shape[1:] for a in inputs))
        entry = self._graphs.get(key)
        with torch.inference_mode():
            if entry is None:
                static = [self._tensor(np.zeros((bucket, *a.shape[1:]), a.dtype)) for a in inputs]
                side = torch.cuda.Stream(self._device)
                side.wait_stream(torch.cuda.current_stream(self._device))
                with torch.cuda.stream(side):  # warm up (cuDNN picks its kernels) outside the capture
                    for _ in range(2):
                        fn(*static)
                torch.cuda.current_stream(self._device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    output = fn(*static)
                entry = (graph, static, output)
                self._graphs[key] = entry
            graph, static, output = entry
            size = len(inputs[0])
            for buffer, array in zip(static, inputs, strict=True):
                buffer[:size].copy_(self._tensor(array))
                buffer[size:].zero_()
            graph.replay()
            return output[:size].float().cpu().numpy()


class _Picked:
    """A converted graph returning only the declared output (a graph may have several)."""

    def __init__(self, module: Any, index: int) -> None:
        self.module, self.index = module, index

    def __call__(self, *tensors: Any) -> Any:
        with warnings.catch_warnings():
            # onnx2torch's Slice indexes with a list; torch warns but reads it as the tuple it means.
            warnings.filterwarnings("ignore", "Using a non-tuple sequence for multidimensional indexing",
                                    UserWarning)
            out = self.module(*tensors)
        return out[self.index] if isinstance(out, tuple | list) else out
