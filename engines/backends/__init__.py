"""Inference backends behind one interface: ``load_backend(name, model_dir, **options) -> Backend``.

Backend modules are imported on demand, and each imports its runtime only when activated,
so a CPU deployment never imports TensorRT (or torch, if it uses ``onnxruntime``).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fusionstream.engines.backends.base import Backend, Embeddings, RuntimeChoices
from fusionstream.engines.errors import EngineError

#: Backend name → "module:class", resolved lazily. A new backend is one module and one line here:
#: the settings accept any name in this table, and the class maps the settings to its options.
BACKENDS: dict[str, str] = {
    "onnxruntime": "fusionstream.engines.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "fusionstream.engines.backends.torch:TorchBackend",
    "tensorrt": "fusionstream.engines.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name`` (its module is imported now, its runtime only when activated)."""
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise EngineError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls


def load_backend(name: str, model_dir: str | os.PathLike[str], **options: Any) -> Backend:
    """A backend for ``model_dir``, not yet active: use it as a context manager (or call ``activate()``).

    Raises :class:`~fusionstream.engines.errors.ModelDirError` for a bad model directory,
    :class:`~fusionstream.engines.errors.BackendUnavailable` when the runtime is missing here, and
    :class:`~fusionstream.engines.errors.EngineError` for an unknown name or option.
    """
    return backend_class(name)(model_dir, **options)


def open_runtime(name: str, model_dir: str | os.PathLike[str], **options: Any) -> Any:
    """A runtime for ``model_dir`` of either format, keyed by modality (not yet active).

    Transitional: today only onnxruntime (``ManifestRuntime``); it becomes the one entry point of
    every backend (docs/architecture.md).
    """
    from fusionstream.engines.backends.manifest_onnx import open_manifest_runtime
    from fusionstream.engines.manifest import load_manifest

    return open_manifest_runtime(name, load_manifest(model_dir), **options)


__all__ = ["BACKENDS", "Backend", "Embeddings", "RuntimeChoices", "backend_class", "load_backend", "open_runtime"]
