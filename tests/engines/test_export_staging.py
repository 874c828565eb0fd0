"""A model directory is replaced whole or not at all: `train --data` stopped with Ctrl-C during its export left
new encoder graphs beside the old head and model.json, which `model check` passed as a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinymodels import randomize, tiny_spec

import fusionstream.engines.export as export
from fusionstream.engines import EngineError, export_model
from fusionstream.engines.model import MultimodalModel


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture()
def old_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    spec = tiny_spec("concat", version="old")
    out = tmp_path / "model"
    export_model(randomize(MultimodalModel(spec), seed=1).eval(), spec, out)
    return out


def test_an_export_interrupted_midway_leaves_the_old_model_as_it_was(
    old_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(old_model)
    real, graphs = export.export_graph, []

    def interrupted_after_the_first_graph(*args: object, **kwargs: object) -> Path:
        if graphs:
            raise KeyboardInterrupt
        graphs.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return graphs[-1]

    monkeypatch.setattr(export, "export_graph", interrupted_after_the_first_graph)
    spec = tiny_spec("decision", version="new")
    with pytest.raises(KeyboardInterrupt):
        export_model(randomize(MultimodalModel(spec), seed=2).eval(), spec, old_model)
    assert graphs, "the first graph was written (into the staging folder)"
    assert _snapshot(old_model) == before
    assert sorted(p.name for p in old_model.parent.iterdir()) == ["model"]  # no staging folder left


def test_an_export_that_fails_its_check_replaces_nothing(old_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(old_model)

    def disagrees(*args: object, **kwargs: object) -> dict[str, float]:
        raise EngineError("ONNX Runtime disagrees with torch in fusion.onnx")

    monkeypatch.setattr(export, "check_parity", disagrees)
    spec = tiny_spec("decision", version="new")
    with pytest.raises(EngineError, match="disagrees"):
        export_model(randomize(MultimodalModel(spec), seed=2).eval(), spec, old_model)
    assert _snapshot(old_model) == before


def test_a_complete_export_replaces_the_model(old_model: Path) -> None:
    spec = tiny_spec("decision", version="new")
    export_model(randomize(MultimodalModel(spec), seed=2).eval(), spec, old_model)
    assert '"version": "new"' in (old_model / "model.json").read_text()
    assert sorted(p.name for p in old_model.parent.iterdir()) == ["model"]
