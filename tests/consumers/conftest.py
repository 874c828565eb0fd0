"""Models for the consumers tests: the shipped default model, and an untrained one for plumbing tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servicekit import ServiceProcess

from fusionstream.consumers.settings import Settings, default_model_dir


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The model directory inside the package (made by `make model`)."""
    path = default_model_dir()
    assert (path / "model.json").is_file(), f"no shipped model at {path}: run `make model`"
    return path


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised model at the default geometry: fast plumbing tests that need no accuracy."""
    from fusionstream.engines.export import export_model
    from fusionstream.engines.model import MultimodalModel
    from fusionstream.engines.spec import ModelSpec

    spec = ModelSpec(version="untrained", fusion="concat")
    out = tmp_path_factory.mktemp("untrained-model")
    export_model(MultimodalModel(spec).eval(), spec, out)
    return out


@pytest.fixture(scope="session")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny audio + text model whose text encoder fails on any caption with the word "eight"
    (test_poison_windows.py, test_poison_service.py)."""
    from test_poison_windows import RATE, poison_text_encoder

    from tests.onnxgraphs import write_model

    out = tmp_path_factory.mktemp("poisoned")
    write_model(out, audio={"sample_rate": RATE}, text=True)
    poison_text_encoder(out / "text.onnx", 4, "eight")
    return out


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[Settings, str], ServiceProcess]]:
    """Starts service subprocesses; kills any still running at the end, and prints their logs on failure."""
    started: list[ServiceProcess] = []

    def start(settings: Settings, instance_id: str) -> ServiceProcess:
        started.append(ServiceProcess(settings, instance_id, tmp_path).start())
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()
            print(f"--- serve {process.instance_id} ({process.log.name}) ---\n{process.tail(25000)}")
