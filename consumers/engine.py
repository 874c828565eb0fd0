"""Opening the configured model and backend as one context (weights loaded, resources freed after)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fusionstream.consumers.pipeline.runner import WindowRunner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import load_backend
from fusionstream.engines.errors import EngineError
from fusionstream.engines.spec import ModelSpec


def backend_options(settings: Settings) -> dict[str, object]:
    """The options of ``settings.backend`` that the settings choose: threads, device, precision."""
    options: dict[str, object] = {}
    if settings.threads:
        options["threads"] = settings.threads
    if settings.backend == "torch":
        options["device"] = settings.device
        if settings.device.startswith("cuda"):
            options["cuda_graphs"] = settings.cuda_graphs
    if settings.backend == "tensorrt" and settings.engine_cache is not None:
        options["cache_dir"] = settings.engine_cache
    precision = settings.precision
    if precision == "int8":
        if settings.backend != "onnxruntime":
            raise EngineError(f"precision int8 runs on the onnxruntime backend, not {settings.backend}")
        options["precision"] = "int8"
    elif precision in ("fp16", "fp32") and settings.backend != "onnxruntime":
        options["fp16"] = precision == "fp16"
    elif precision == "fp16":
        raise EngineError("precision fp16 is for GPU backends (tensorrt, or torch with device cuda)")
    return options


@contextmanager
def open_engine(settings: Settings) -> Iterator[tuple[WindowRunner, ModelSpec]]:
    """Load ``settings.model_dir`` on ``settings.backend``; yields a runner and the model's spec."""
    spec = ModelSpec.load(settings.model_dir)
    with load_backend(settings.backend, settings.model_dir, **backend_options(settings)) as backend:
        yield WindowRunner(backend, spec), spec
