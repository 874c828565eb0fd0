"""Inference backends behind one modality-keyed interface: ``open_runtime(name, model_dir, **options)``.

Every backend runs both model formats (docs/model-format.md): ``open_runtime`` reads the directory's
manifest and returns a :class:`~fusionstream.engines.backends.base.Runtime` (not yet active; a context
manager). Backend modules are imported on demand, and each imports its runtime only when activated,
so a CPU deployment never imports TensorRT (or torch, if it uses ``onnxruntime``).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fusionstream.engines.backends.base import Runtime, RuntimeChoices, refuse_unservable
from fusionstream.engines.errors import EngineError

#: Backend name → "module:class", resolved lazily. A new backend is one module and one line here:
#: the settings accept any name in this table, and the class maps the settings to its options.
BACKENDS: dict[str, str] = {
    "onnxruntime": "fusionstream.engines.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "fusionstream.engines.backends.torch:TorchBackend",
    "tensorrt": "fusionstream.engines.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[Runtime]:
    """The class registered as ``name`` (its module is imported now, its runtime only when activated)."""
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise EngineError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
    cls: type[Runtime] = getattr(importlib.import_module(module_name), class_name)
    return cls


def open_runtime(name: str, model_dir: str | os.PathLike[str], **options: Any) -> Runtime:
    """A runtime for ``model_dir`` (either format) on backend ``name``, not yet active: use it as a
    context manager (or call ``activate()``).

    Raises :class:`~fusionstream.engines.errors.ModelDirError` for a bad or encoders-only model
    directory, :class:`~fusionstream.engines.errors.BackendUnavailable` when the runtime is missing
    here, and :class:`~fusionstream.engines.errors.EngineError` for an unknown name or option.
    """
    return backend_class(name)(model_dir, **options)


#: The former name of :func:`open_runtime` (the same function).
load_backend = open_runtime
#: The former name of the base class.
Backend = Runtime

__all__ = ["BACKENDS", "Backend", "Runtime", "RuntimeChoices", "backend_class", "load_backend", "open_runtime",
           "refuse_unservable"]
