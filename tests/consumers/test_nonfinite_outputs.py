"""A model that gives NaN for some window's data (an fp16 overflow, a division in an imported graph): the service
published `"score": NaN`, which is not JSON (browsers' and Java's parsers refuse the record) and names no class.
Such a window is now isolated like one an encoder raises on: predicted without the modality at fault, or not
at all (a model that gives NaN for the load check's dummy inputs is refused at load)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_poison_windows import RATE, T0, _records, predict_all

from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.units import MS
from tests.onnxgraphs import VOCAB, write_model


def nan_text_encoder(path: Path, trigger: str | None) -> None:
    """The tiny text encoder, its output NaN when ``trigger`` is among the ids (every time with None)."""
    model = onnx.load(str(path))
    graph = model.graph
    final = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["clean" if name == final else name for name in node.output]
    ids = [VOCAB.index(trigger)] if trigger is not None else list(range(len(VOCAB)))
    graph.initializer.extend([numpy_helper.from_array(np.array(ids, np.int64), "triggers"),
                              numpy_helper.from_array(np.array([math.nan], np.float32), "nan")])
    graph.node.extend([  # per row: [batch, tokens, 1] == [triggers] -> [batch, 1], NaN where any hit
        helper.make_node("Unsqueeze", ["input_ids", "last"], ["ids3"]),
        helper.make_node("Equal", ["ids3", "triggers"], ["hits"]),
        helper.make_node("Cast", ["hits"], ["hits8"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["hits8", "last"], ["per_token"], keepdims=0),
        helper.make_node("ReduceMax", ["per_token", "token_axis"], ["per_row"], keepdims=1),
        helper.make_node("Cast", ["per_row"], ["rowb"], to=TensorProto.BOOL),
        helper.make_node("Where", ["rowb", "nan", "clean"], [final]),
    ])
    graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "last"),
                              numpy_helper.from_array(np.array([1], np.int64), "token_axis")])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _model(tmp_path: Path, trigger: str | None) -> Path:
    out = tmp_path / f"nan-{trigger}"
    write_model(out, audio={"sample_rate": RATE}, text=True)
    nan_text_encoder(out / "text.onnx", trigger)
    return out


def _run(model: Path, *, text_only: bool = False) -> tuple[list[Prediction], Pipeline]:
    return predict_all(model, [r for r in _records() if r.modality.name == "TEXT" or not text_only])


def test_a_window_the_model_gives_nan_for_is_predicted_without_that_modality(tmp_path: Path) -> None:
    predictions, pipeline = _run(_model(tmp_path, "eight"))
    starts = sorted((p.t_start_ns - T0) // MS for p in predictions)
    assert starts == list(range(-500, 6000, 500)), "every window once"
    for prediction in predictions:
        value = json.loads(prediction.to_json(), parse_constant=lambda c: pytest.fail(f"{c} published"))
        assert all(math.isfinite(v) for v in value["scores"].values())
    # The three windows holding "eight" (2.2-2.6 s) lost their text, nothing else did.
    no_text = sorted((p.t_start_ns - T0) // MS for p in predictions if not p.mask[2])
    with_text = sorted((p.t_start_ns - T0) // MS for p in predictions if p.mask[2])
    assert with_text == [-500, 0, 500, 3500, 4000, 4500] and {1500, 2000, 2500} <= set(no_text)
    assert pipeline.stats.windows_degraded == 3


def test_a_captions_only_window_the_model_gives_nan_for_gets_no_prediction(tmp_path: Path) -> None:
    predictions, pipeline = _run(_model(tmp_path, "eight"), text_only=True)
    assert sorted((p.t_start_ns - T0) // MS for p in predictions) == [-500, 0, 500, 3500, 4000, 4500]
    assert pipeline.stats.windows_failed == 3
