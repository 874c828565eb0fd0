"""Opening the configured model and backend as one context (weights loaded, resources freed after)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fusionstream.consumers.pipeline.runner import WindowRunner
from fusionstream.consumers.settings import Settings
from fusionstream.engines.backends import RuntimeChoices, backend_class, load_backend
from fusionstream.engines.spec import ModelSpec


def backend_options(settings: Settings) -> dict[str, object]:
    """The options of ``settings.backend`` that the settings choose (threads, device, precision, ...),
    as that backend maps them."""
    choices = RuntimeChoices(threads=settings.threads, device=settings.device, precision=settings.precision,
                             cuda_graphs=settings.cuda_graphs, cache_dir=settings.engine_cache)
    return backend_class(settings.backend).options_for(choices)


@contextmanager
def open_engine(settings: Settings) -> Iterator[tuple[WindowRunner, ModelSpec]]:
    """Load ``settings.model_dir`` on ``settings.backend``; yields a runner and the model's spec."""
    spec = ModelSpec.load(settings.model_dir)
    with load_backend(settings.backend, settings.model_dir, **backend_options(settings)) as backend:
        yield WindowRunner(backend, spec), spec
