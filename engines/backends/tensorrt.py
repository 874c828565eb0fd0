"""TensorRT backend: registered now so configurations can name it; the engine builder comes later.

Planned (DESIGN.md §3): engines built from the same ONNX files, fp16, dynamic-batch
optimisation profiles, and an on-disk engine cache keyed by ONNX hash + GPU + TensorRT
version. Until then, constructing it fails with :class:`BackendUnavailable` and a message
that says what to use instead.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np

from engines.backends.base import Backend
from engines.errors import BackendUnavailable


class TensorRTBackend(Backend):
    """Placeholder for the TensorRT backend (options ``fp16``, ``max_batch``, ``cache_dir`` are reserved;
    ``threads`` is accepted like every backend's and has no effect on a GPU engine)."""

    name = "tensorrt"
    defaults: ClassVar[dict[str, Any]] = {"fp16": True, "max_batch": 64, "cache_dir": None, "threads": None}

    def __init__(self, model_dir: Any, **options: Any) -> None:
        # find_spec does not import: a CPU machine pays nothing to learn TensorRT is absent.
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendUnavailable(
                "tensorrt backend: the `tensorrt` package is not installed (pip install 'fusionstream[gpu]' "
                "on a machine with an NVIDIA GPU); use backend 'onnxruntime' (CPU) or 'torch' with device='cuda'"
            )
        super().__init__(model_dir, **options)

    def _activate_impl(self) -> None:
        raise BackendUnavailable(
            "tensorrt backend: not implemented in this version; use 'torch' with device='cuda' or 'onnxruntime'"
        )

    def _release_impl(self) -> None:
        pass

    def _encode_impl(self, modality: str, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fuse_impl(
        self, emb_video: np.ndarray, emb_audio: np.ndarray, emb_text: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError
