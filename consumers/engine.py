"""Opening the configured model and backend as one context (weights loaded, resources freed after).

A format-1 directory (fusionstream's own architecture, like the shipped model) runs on any backend
through :class:`WindowRunner`; a format-2 directory (docs/model-format.md) runs on ONNX Runtime
through :class:`ManifestRunner`. Both are what :class:`~fusionstream.consumers.pipeline.core.Pipeline`
takes; the spec yielded beside them is a :class:`ModelSpec` or a :class:`Manifest` accordingly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusionstream.consumers.pipeline.manifest_runner import ManifestRunner
from fusionstream.consumers.pipeline.runner import WindowRunner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import RuntimeChoices, backend_class, load_backend
from fusionstream.engines.manifest import Manifest, load_manifest
from fusionstream.engines.spec import SPEC_FILE, ModelSpec

Runner = WindowRunner | ManifestRunner
Model = ModelSpec | Manifest


def runtime_choices(settings: Settings) -> RuntimeChoices:
    return RuntimeChoices(threads=settings.threads, device=settings.device, precision=settings.precision,
                          cuda_graphs=settings.cuda_graphs, cache_dir=settings.engine_cache)


def backend_options(settings: Settings) -> dict[str, object]:
    """The options of ``settings.backend`` that the settings choose (threads, device, precision, ...),
    as that backend maps them."""
    return backend_class(settings.backend).options_for(runtime_choices(settings))


def model_format(model_dir: str | Path) -> int:
    """The ``format`` a model directory's ``model.json`` declares (1 when it declares none, as format 1
    does, or when it cannot be read: :meth:`ModelSpec.load` then says what is wrong)."""
    try:
        doc = json.loads((Path(model_dir) / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return 1
    fmt = doc.get("format", 1) if isinstance(doc, dict) else 1
    return fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else 1


def load_model(model_dir: str | Path) -> Model:
    """A format-1 directory's :class:`ModelSpec` (read exactly as before format 2), else its
    :class:`Manifest`; raises :class:`~fusionstream.engines.errors.ModelDirError` naming the field."""
    if model_format(model_dir) == 1:
        return ModelSpec.load(model_dir)
    return load_manifest(model_dir)


def model_title(model: Model) -> str:
    """``<fusion method> v<version>``, for logs and banners."""
    if isinstance(model, Manifest):
        method = model.fusion.method if model.fusion is not None else "no head"
        return f"{method} v{model.version}"
    return f"{model.fusion} v{model.version}"


def model_classes(model: Model) -> list[str]:
    """The model's classes (none for an embedding model)."""
    if isinstance(model, Manifest):
        return list(model.task.classes) if model.task is not None else []
    return list(model.classes)


@contextmanager
def open_engine(settings: Settings) -> Iterator[tuple[Runner, Model]]:
    """Load ``settings.model_dir`` on ``settings.backend``; yields a runner and the model's spec
    (``(WindowRunner, ModelSpec)`` for format 1, ``(ManifestRunner, Manifest)`` for format 2)."""
    if model_format(settings.model_dir) != 1:
        with open_manifest_engine(settings) as (runner, manifest):
            yield runner, manifest
        return
    spec = ModelSpec.load(settings.model_dir)
    with load_backend(settings.backend, settings.model_dir, **backend_options(settings)) as backend:
        yield WindowRunner(backend, spec), spec


@contextmanager
def open_manifest_engine(settings: Settings) -> Iterator[tuple[ManifestRunner, Manifest]]:
    """A format-2 directory on ONNX Runtime, checked at load (refused with the file and field named)."""
    from fusionstream.engines.backends.manifest_onnx import (
        manifest_runtime_options,
        open_manifest_runtime,
        refuse_unservable,
    )

    manifest = load_manifest(settings.model_dir)
    refuse_unservable(manifest)
    options = manifest_runtime_options(settings.backend, runtime_choices(settings))
    with open_manifest_runtime(settings.backend, manifest, **options) as runtime:
        yield ManifestRunner(runtime), manifest
