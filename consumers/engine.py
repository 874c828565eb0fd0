"""Opening the configured model and backend as one context (weights loaded, resources freed after)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from consumers.pipeline.runner import WindowRunner
from consumers.settings import Settings
from engines.backends import load_backend
from engines.spec import ModelSpec


@contextmanager
def open_engine(settings: Settings) -> Iterator[tuple[WindowRunner, ModelSpec]]:
    """Load ``settings.model_dir`` on ``settings.backend``; yields a runner and the model's spec."""
    spec = ModelSpec.load(settings.model_dir)
    options: dict[str, object] = {}
    if settings.threads:
        options["threads"] = settings.threads
    if settings.backend == "torch":
        options["device"] = settings.device
    with load_backend(settings.backend, settings.model_dir, **options) as backend:
        yield WindowRunner(backend, spec), spec
