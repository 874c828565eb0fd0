"""Opening the configured model and backend as one context (weights loaded, resources freed after).

Every model directory, format 1 (fusionstream's own architecture, like the shipped model) or format 2
(docs/model-format.md), is read as a :class:`Manifest` and runs on the configured backend through
``open_runtime`` and one :class:`~fusionstream.consumers.pipeline.runner.Runner`: what
:class:`~fusionstream.consumers.pipeline.core.Pipeline` takes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusionstream.consumers.pipeline.runner import Runner, Runtime
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import RuntimeChoices, backend_class, open_runtime
from fusionstream.engines.errors import EngineError
from fusionstream.engines.manifest import Manifest, load_manifest


def runtime_choices(settings: Settings) -> RuntimeChoices:
    return RuntimeChoices(threads=settings.threads, device=settings.device, precision=settings.precision,
                          cuda_graphs=settings.cuda_graphs, cache_dir=settings.engine_cache)


def backend_options(settings: Settings) -> dict[str, object]:
    """The options of ``settings.backend`` that the settings choose (threads, device, precision, ...),
    as that backend maps them."""
    return backend_class(settings.backend).options_for(runtime_choices(settings))


def service_threads(settings: Settings, cores: int | None = None) -> int:
    """The engine's intra-op threads where a pipeline runs beside it (serve, demo, the bench's pipeline,
    Kafka and live stages): ``threads`` when set, else one per core but one, at least one. The pipeline's
    own Python thread (fetching, decoding, aligning, publishing) needs a core of its own: an engine pool on
    every core takes turns with it, and each window waits for both (docs/performance.md#engine-threads)."""
    if settings.threads:
        return settings.threads
    return max(1, (cores or len(os.sched_getaffinity(0))) - 1)


def service_options(settings: Settings) -> dict[str, object]:
    """:func:`backend_options` with :func:`service_threads`: what a runtime serving a pipeline is opened with."""
    return backend_options(settings.model_copy(update={"threads": service_threads(settings)}))


def load_model(model_dir: str | Path) -> Manifest:
    """A model directory's manifest, either format; raises
    :class:`~fusionstream.engines.errors.ModelDirError` naming the file and field."""
    return load_manifest(model_dir)


def model_title(model: Manifest) -> str:
    """``<fusion method> v<version>`` for a version that starts with a digit (``concat v2026.12.06``), else
    ``<fusion method> <version>`` (``gmu vt-emb-1``), for logs and banners."""
    method = model.fusion.method if model.fusion is not None else "no head"
    return f"{method} {'v' if model.version[:1].isdigit() else ''}{model.version}"


def engine_title(settings: Settings) -> str:
    """``onnxruntime fp32``, ``onnxruntime int8``, ``torch cuda fp16``: the backend and what was chosen of it,
    for logs and banners (int8 ran unsaid: a user could not see the setting took; fp32 too, as ``auto``)."""
    device = f" {settings.device}" if settings.backend == "torch" and settings.device != "cpu" else ""
    return f"{settings.backend}{device} {effective_precision(settings)}"


def effective_precision(settings: Settings) -> str:
    """What ``precision`` runs as, read from the backend's own options and defaults (``auto`` is fp16 on
    tensorrt and fp32 elsewhere: settings.md); the setting itself where the backend refuses it."""
    try:
        options = backend_class(settings.backend).defaults | backend_options(settings)
    except EngineError:  # said where the engine is opened
        return settings.precision
    if "precision" in options:
        return str(options["precision"])
    return "fp16" if options.get("fp16") else "fp32"


def model_classes(model: Manifest) -> list[str]:
    """The model's classes (none for an embedding model)."""
    return list(model.task.classes) if model.task is not None else []


@contextmanager
def open_engine(settings: Settings) -> Iterator[tuple[Runner, Manifest]]:
    """Load ``settings.model_dir`` on ``settings.backend``; yields the runner and the model's manifest.

    ``open_runtime`` refuses, naming the file and field, a directory it cannot serve (an encoders-only
    one, a graph that disagrees with the manifest) or an option the backend lacks."""
    runtime: Runtime
    with open_runtime(settings.backend, settings.model_dir, **service_options(settings)) as runtime:
        yield Runner(runtime), runtime.manifest
