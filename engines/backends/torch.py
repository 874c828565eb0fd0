"""PyTorch backend: runs the weights ``export`` saved as ``model.pt``, on CPU or CUDA (optionally fp16)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from engines.backends.base import Backend
from engines.errors import BackendUnavailable, EngineError
from engines.spec import FRAME_GRAPH, TORCH_WEIGHTS


class TorchBackend(Backend):
    """Options: ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), ``fp16`` (CUDA only) and ``threads``
    (CPU threads; torch's setting is process-wide, so it applies to all torch work in the process).

    Useful as the reference the compiled backends are compared with, and on GPUs without
    TensorRT. Inputs and outputs stay numpy float32 whatever the compute precision.
    """

    name = "torch"
    defaults: ClassVar[dict[str, Any]] = {"device": "cpu", "fp16": False, "threads": None}

    def __init__(self, model_dir: Any, **options: Any) -> None:
        super().__init__(model_dir, **options)
        if self.options["fp16"] and not str(self.options["device"]).startswith("cuda"):
            raise EngineError("torch backend: fp16 needs a CUDA device (CPU half precision is slow and inexact)")

    def required_files(self) -> list[str]:
        """Only the saved weights; the ONNX graphs are not read."""
        return [TORCH_WEIGHTS]

    def _activate_impl(self) -> None:
        import torch

        from engines.model import MultimodalModel

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

    def _release_impl(self) -> None:
        device = self._device
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
        with self._torch.inference_mode():
            if modality == FRAME_GRAPH:
                emb = self._model.video_encoder.embed_frames(self._tensor(inputs))
            else:
                emb = self._model.encoders[modality](self._tensor(inputs))
        return emb.float().cpu().numpy()

    def _fuse_impl(
        self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        with self._torch.inference_mode():
            logits = self._model.head(*(self._tensor(a) for a in (emb_video, emb_audio, emb_text, mask)))
            return self._torch.softmax(logits.float(), dim=-1).cpu().numpy()
