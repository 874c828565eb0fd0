"""Data one encoder cannot take: the window is predicted without that modality (or, with none left, not at all),
and the service goes on.

A graph that fails on one input only (here a text encoder that breaks on the word "eight") passes
`model check` and would stop `serve` at that caption, and again after every restart on the same
records. The pipeline retries the failed batch window by window, and a window that fails alone
without each of its modalities in turn; a window that fails however it is cut is the data's fault when the
engine runs a harmless window, the engine's when it fails that too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionstream.consumers.embedded import run_embedded
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.pipeline.runner import ClosedWindow, Runner
from fusionstream.consumers.settings import model_geometry
from fusionstream.engines.backends import open_runtime
from fusionstream.engines.manifest_check import check_model_dir
from fusionstream.stream.media import audio_record, text_record
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS
from tests.onnxgraphs import VOCAB

T0 = 1_767_225_600 * NS
RATE = 100


def poison_text_encoder(path: Path, size: int, trigger: str) -> None:
    """The tiny text encoder, whose output is reshaped to ``size + 1`` columns when ``trigger`` is among the ids:
    one row of ``size`` values cannot be, so ONNX Runtime fails on exactly those captions."""
    model = onnx.load(str(path))
    graph = model.graph
    final = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["clean" if name == final else name for name in node.output]
    constants = {"trigger": [VOCAB.index(trigger)], "minus1": [-1], "width": [size], "axes0": [0]}
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items())
    graph.node.extend([
        helper.make_node("Equal", ["input_ids", "trigger"], ["hit"]),
        helper.make_node("Cast", ["hit"], ["hit64"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["hit64"], ["any"], keepdims=0),
        helper.make_node("Unsqueeze", ["any", "axes0"], ["any1"]),
        helper.make_node("Add", ["width", "any1"], ["columns"]),
        helper.make_node("Concat", ["minus1", "columns"], ["shape"], axis=0),
        helper.make_node("Reshape", ["clean", "shape"], [final]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _records() -> list[bytes | object]:
    """6 s of audio and three captions; the middle one says "eight"."""
    records: list = [audio_record("s", i, T0 + i * 100 * MS, np.full(10, 0.1 * (i % 7), np.float32), RATE)
                     for i in range(60)]
    for seq, (start_ms, words) in enumerate(((200, "one two"), (2200, "eight"), (4200, "three"))):
        records.append(text_record("s", seq, T0 + start_ms * MS, T0 + (start_ms + 400) * MS, words))
    return sorted(records, key=lambda r: r.t_start_ns)


def predict_all(model: Path, records: Sequence[object]) -> tuple[list[Prediction], Pipeline]:
    """Every prediction of ``records`` through a pipeline on ``model``, and the pipeline (for its stats)."""
    async def go() -> tuple[list[Prediction], Pipeline]:
        with open_runtime("onnxruntime", model) as runtime:
            frames, rate = model_geometry(runtime.manifest)
            pipeline = Pipeline(Runner(runtime), WindowConfig(frames_per_window=frames, sample_rate=rate))
            async with pipeline:
                result = await run_embedded(pipeline, records, realtime=False)
            return result.predictions, pipeline

    return asyncio.run(asyncio.wait_for(go(), 60))


def test_the_model_check_cannot_see_a_failure_that_depends_on_the_data(poisoned: Path) -> None:
    check_model_dir(poisoned)  # the dummy inputs, the largest id and the longest input all pass


def test_a_window_an_encoder_fails_on_is_predicted_without_that_modality(
    poisoned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> tuple[list[Prediction], Pipeline]:
        with open_runtime("onnxruntime", poisoned) as runtime:
            frames, rate = model_geometry(runtime.manifest)
            pipeline = Pipeline(Runner(runtime), WindowConfig(frames_per_window=frames, sample_rate=rate))
            async with pipeline:
                result = await run_embedded(pipeline, _records(), realtime=False)
            return result.predictions, pipeline

    with caplog.at_level(logging.ERROR):
        predictions, pipeline = asyncio.run(go())
    starts = sorted((p.t_start_ns - T0) // MS for p in predictions)
    assert starts == list(range(-500, 6000, 500)), "every window once: none lost, the pipeline did not stop"
    text = {(p.t_start_ns - T0) // MS: p.mask[2] for p in predictions}
    # "one two" (0.2-0.6 s) and "three" (4.2-4.6 s), each in three windows, kept their text.
    assert [s for s, present in text.items() if present] == [-500, 0, 500, 3500, 4000, 4500], text
    # The three windows holding "eight" (2.2-2.6 s) lost their text (their audio is still used); nothing else did.
    eight = (1500, 2000, 2500)
    assert all(not text[s] and p.mask[1] for p in predictions if (s := (p.t_start_ns - T0) // MS) in eight)
    assert pipeline.stats.windows_degraded == 3
    failures = [r.getMessage() for r in caplog.records if "encoder failed" in r.getMessage()]
    assert [m.split(" of stream")[0] for m in failures] == [
        f"the text encoder failed on window {T0 + s * MS}" for s in eight
    ]
    assert all(m.endswith("predicted without text") and len(m) < 400 for m in failures), failures


def test_a_captions_only_window_its_encoder_fails_on_gets_no_prediction_and_the_rest_go_on(
    poisoned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A captions-only stream: a window holding "eight" has no modality to fall back on.
    records = [r for r in _records() if r.modality.name == "TEXT"]
    assert len(records) == 3
    with caplog.at_level(logging.ERROR):
        predictions, pipeline = predict_all(poisoned, records)
    starts = sorted((p.t_start_ns - T0) // MS for p in predictions)
    # "one two" and "three" windows predicted from their text; the three holding "eight" none, and the
    # pipeline went on to "three" after them.
    assert starts == [-500, 0, 500, 3500, 4000, 4500], starts
    assert all(p.mask == (False, False, True) for p in predictions)
    assert pipeline.stats.windows_failed == 3 and pipeline.stats.windows_degraded == 0
    failures = [r.getMessage() for r in caplog.records if "gets no prediction" in r.getMessage()]
    assert [m.split(" fails the engine")[0] for m in failures] == [
        f"window {T0 + s * MS} of stream s" for s in (1500, 2000, 2500)
    ]
    assert all("with its text however it is cut" in m and len(m) < 500 for m in failures), failures


def test_a_window_the_engine_fails_on_as_it_fails_on_a_harmless_one_is_the_engines_fault(poisoned: Path) -> None:
    async def go() -> None:
        with open_runtime("onnxruntime", poisoned) as runtime:
            def gone(*_: object, **__: object) -> None:
                raise RuntimeError("the device is gone")

            runtime.encode = gone  # type: ignore[method-assign]
            frames, rate = model_geometry(runtime.manifest)
            async with Pipeline(Runner(runtime), WindowConfig(frames_per_window=frames, sample_rate=rate)) as p:
                await run_embedded(p, _records(), realtime=False)

    with pytest.raises(RuntimeError, match="the device is gone"):
        asyncio.run(asyncio.wait_for(go(), 60))


def test_a_broken_fusion_head_is_the_engines_fault_even_when_the_encoders_run(poisoned: Path) -> None:
    async def go() -> None:
        with open_runtime("onnxruntime", poisoned) as runtime:
            def broken(*_: object, **__: object) -> None:
                raise RuntimeError("the head is broken")

            runtime.fuse = broken  # type: ignore[method-assign]
            frames, rate = model_geometry(runtime.manifest)
            clean = [r for r in _records() if r.t_start_ns != T0 + 2200 * MS]  # no "eight": only the head fails
            async with Pipeline(Runner(runtime), WindowConfig(frames_per_window=frames, sample_rate=rate)) as p:
                await run_embedded(p, clean, realtime=False)

    with pytest.raises(RuntimeError, match="the head is broken"):
        asyncio.run(asyncio.wait_for(go(), 60))


def test_windows_that_fail_in_a_row_while_a_harmless_one_runs_are_the_engines_fault_after_all(
    poisoned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine that fails on every real window but runs the harmless one (a device that takes a small
    batch but not a real one, a preprocessing that fails on real inputs only) must not drop windows for ever."""
    from fusionstream.consumers.pipeline import runner as runner_module

    class FailsOnRealWindows(Runner):
        def _predict(self, closed: Sequence[ClosedWindow]) -> list[Prediction]:
            if not all(c.window.stream_id.startswith(runner_module.PROBE_STREAM) for c in closed):
                raise RuntimeError("out of memory on the device")
            return super()._predict(closed)

    records = [audio_record("s", i, T0 + i * 100 * MS, np.full(10, 0.1, np.float32), RATE) for i in range(150)]

    async def go() -> None:
        with open_runtime("onnxruntime", poisoned) as runtime:
            frames, rate = model_geometry(runtime.manifest)
            config = WindowConfig(frames_per_window=frames, sample_rate=rate)
            async with Pipeline(FailsOnRealWindows(runtime), config) as p:
                await run_embedded(p, records, realtime=False)

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="out of memory"):
        asyncio.run(asyncio.wait_for(go(), 60))
    dropped = [r for r in caplog.records if "gets no prediction" in r.getMessage()]
    assert len(dropped) == runner_module.MAX_UNPREDICTED_IN_ROW - 1
    assert any("windows in a row failed on their data" in r.getMessage() for r in caplog.records)
