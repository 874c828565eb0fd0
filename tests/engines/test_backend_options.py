"""Each backend maps a deployment's choices (threads, device, precision, ...) to its own options."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusionstream.engines import EngineError
from fusionstream.engines.backends import BACKENDS, RuntimeChoices, backend_class


def options(name: str, **choices: object) -> dict[str, object]:
    return backend_class(name).options_for(RuntimeChoices(**choices))  # type: ignore[arg-type]


def test_auto_precision_and_default_threads_choose_nothing() -> None:
    for name in BACKENDS:
        assert set(options(name)) <= {"device", "cuda_graphs"}, name


def test_threads_reach_every_backend() -> None:
    for name in BACKENDS:
        assert options(name, threads=3)["threads"] == 3, name


def test_torch_takes_the_device_and_cuda_graphs_only_on_cuda() -> None:
    assert options("torch", device="cpu") == {"device": "cpu"}
    assert options("torch", device="cuda:1", cuda_graphs=False) == {"device": "cuda:1", "cuda_graphs": False}


def test_precision_maps_to_each_backends_switch() -> None:
    assert options("onnxruntime", precision="int8") == {"precision": "int8"}
    assert options("onnxruntime", precision="fp32") == {}
    assert options("torch", precision="fp32", device="cpu") == {"device": "cpu", "fp16": False}
    assert options("tensorrt", precision="fp16") == {"fp16": True}
    assert options("tensorrt", cache_dir=Path("/plans")) == {"cache_dir": Path("/plans")}


@pytest.mark.parametrize(("name", "precision", "message"), [
    ("torch", "int8", "int8 runs on the onnxruntime backend"),
    ("tensorrt", "int8", "int8 runs on the onnxruntime backend"),
    ("onnxruntime", "fp16", "fp16 is for GPU backends"),
])
def test_a_precision_a_backend_cannot_run_is_refused(name: str, precision: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        options(name, precision=precision)


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(EngineError, match="unknown backend 'nope'; choose one of onnxruntime"):
        backend_class("nope")


def test_the_settings_accept_every_registered_backend_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from fusionstream.consumers.settings import Settings

    monkeypatch.setitem(BACKENDS, "mine", "my_package.backend:MyBackend")
    assert Settings(backend="mine").backend == "mine"
    with pytest.raises(ValidationError, match="unknown backend 'nope'; choose one of onnxruntime, torch, tensorrt, mi"):
        Settings(backend="nope")
