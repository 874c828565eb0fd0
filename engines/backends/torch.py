"""PyTorch backend: runs the weights ``export`` saved as ``model.pt``, on CPU or CUDA (optionally fp16)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fusionstream.engines.backends.base import Backend, RuntimeChoices, half_precision_options
from fusionstream.engines.errors import BackendUnavailable, EngineError
from fusionstream.engines.spec import FRAME_GRAPH, TORCH_WEIGHTS


class TorchBackend(Backend):
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
        super().__init__(model_dir, **options)
        if self.options["fp16"] and not str(self.options["device"]).startswith("cuda"):
            raise EngineError("torch backend: fp16 needs a CUDA device (CPU half precision is slow and inexact)")
        if self.options["cuda_graphs"] and not str(self.options["device"]).startswith("cuda"):
            raise EngineError("torch backend: cuda_graphs needs a CUDA device")

    def required_files(self) -> list[str]:
        """Only the saved weights; the ONNX graphs are not read."""
        return [TORCH_WEIGHTS]

    def _activate_impl(self) -> None:
        import torch

        from fusionstream.engines.model import MultimodalModel

        device = torch.device(self.options["device"])
        if self.options["threads"] is not None and device.type == "cpu":
            torch.set_num_threads(int(self.options["threads"]))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch backend: device {device} requested but CUDA is not available here")
        state = torch.load(self.model_dir / TORCH_WEIGHTS, map_location=device, weights_only=True)
        model = MultimodalModel(self.spec)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # weights saved from a different architecture
            raise EngineError(f"torch backend: {TORCH_WEIGHTS} does not match model.json: {exc}") from None
        model = model.to(device).eval()
        self._dtype = torch.float16 if self.options["fp16"] else torch.float32
        self._model = model.to(self._dtype)
        # The log-mel constants stay float32 (LogMel computes in float32 anyway; see its docstring).
        self._model.audio_encoder.frontend.float()
        self._device = device
        self._torch = torch
        self._graphs: dict[tuple[str, int], tuple[Any, list[Any], Any]] = {}

    def _release_impl(self) -> None:
        device = self._device
        self._graphs.clear()
        del self._model
        if device.type == "cuda":
            self._torch.cuda.empty_cache()  # give the memory back to other processes, not just our cache

    def _tensor(self, array: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(array).to(self._device, non_blocking=True)
        return tensor.to(self._dtype) if tensor.is_floating_point() else tensor

    @property
    def embeds_frames(self) -> bool:
        """Always: the per-frame encoder is part of the torch module."""
        return True

    def _encode_impl(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        encoders = {**self._model.encoders, FRAME_GRAPH: self._model.video_encoder.embed_frames}
        return self._call(modality, encoders[modality], [inputs])

    def _fuse_impl(
        self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        def probs(*tensors: Any) -> Any:
            return self._torch.softmax(self._model.head(*tensors).float(), dim=-1)

        return self._call("fusion", probs, [emb_video, emb_audio, emb_text, mask])

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
        """Run ``fn`` through a CUDA graph captured for batches of ``bucket`` rows (inputs zero-padded)."""
        torch = self._torch
        entry = self._graphs.get((name, bucket))
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
                self._graphs[(name, bucket)] = entry
            graph, static, output = entry
            size = len(inputs[0])
            for buffer, array in zip(static, inputs, strict=True):
                buffer[:size].copy_(self._tensor(array))
                buffer[size:].zero_()
            graph.replay()
            return output[:size].float().cpu().numpy()
