"""The torch backend on what users bring as format 2: `model import`ed encoders (a BERT-family text
encoder with its tokenizer, a wav2vec2-family audio encoder, a torchvision ResNet per frame) and the
fusion heads `train --encoders` exports, converted with onnx2torch and held to ONNX Runtime's outputs
within 1e-4 relative. Slow: importing exports three models, and each head is exported once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fusionstream.engines import open_runtime
from fusionstream.engines.backends.onnx_torch import convert_graph, graph_inputs
from fusionstream.engines.bench import embed, random_inputs
from fusionstream.engines.export import export_graph
from fusionstream.engines.importers import audio, image, import_encoders, text
from fusionstream.engines.spec import FUSION_HEADS
from tests.importkit import tiny_bert, tiny_wav2vec2

pytestmark = pytest.mark.slow
RTOL = 1e-4


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def _head(method: str, sizes: dict[str, int], outputs: int, path: Path) -> None:
    """A `train --encoders` head (random weights), exported as frozen_export does."""
    from fusionstream.engines.fusion.projected import ProjectedHead, exportable

    torch.manual_seed(0)
    head = ProjectedHead(method, sizes, outputs).eval()
    example = (*(torch.randn(2, size) for size in sizes.values()), torch.ones(2, len(sizes)))
    with torch.no_grad():
        export_graph(exportable(head).eval(), example, path, input_names=[*(f"emb_{m}" for m in sizes), "mask"],
                     output_name="scores")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete format-2 model: three imported encoders and a concat head over them."""
    root = tmp_path_factory.mktemp("imported")
    jobs = [text.plan(tiny_bert(root / "bert"), max_tokens=16), audio.plan(tiny_wav2vec2(root / "w2v")),
            image.factory_plan("tests.importkit:resnet18", image.VideoPreprocess(size=64), features=True)]
    out = root / "model"
    import_encoders(out, jobs)
    doc = json.loads((out / "model.json").read_text())
    sizes = {m: e["encoder"]["output"]["size"] for m, e in doc["modalities"].items()}
    _head("concat", sizes, 4, out / "fusion.onnx")
    doc["task"] = {"kind": "single_label", "classes": ["a", "b", "c", "d"]}
    doc["fusion"] = {"file": "fusion.onnx", "method": "concat", "inputs": {**{m: f"emb_{m}" for m in sizes},
                                                                            "mask": "mask"},
                     "output": {"name": "scores", "activation": "softmax"}}
    (out / "model.json").write_text(json.dumps(doc))
    return out


def test_imported_encoders_and_head_run_on_torch_as_on_onnxruntime(imported: Path) -> None:
    with open_runtime("onnxruntime", imported, threads=1) as reference, open_runtime("torch", imported) as pt:
        assert pt.modalities == ("video", "audio", "text") and pt.embeds_frames
        feeds = random_inputs(reference, 3, 1)
        assert set(feeds["text"]) == {"input_ids", "attention_mask", "token_type_ids"}
        for modality, feed in feeds.items():
            ref, got = reference.encode(modality, feed), pt.encode(modality, feed)
            assert np.abs(ref).max() > 1e-3
            assert _relative(got, ref) <= RTOL, modality
        windows = embed(reference, feeds, 3)
        mask = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 0]], np.float32)
        for column, modality in enumerate(reference.modalities):
            windows[modality][mask[:, column] == 0] = 0
        assert _relative(pt.fuse(windows, mask), reference.fuse(windows, mask)) <= RTOL
        # padded text of another length: the converted graph has no length baked in
        short = reference.preprocess.text_feed(["seven", "one two"])  # type: ignore[union-attr]
        assert _relative(pt.encode("text", short), reference.encode("text", short)) <= RTOL


@pytest.mark.parametrize("method", FUSION_HEADS)
def test_every_train_encoders_head_converts_exactly(method: str, tmp_path: Path) -> None:
    sizes = {"video": 12, "audio": 8, "text": 5}
    path = tmp_path / "fusion.onnx"
    _head(method, sizes, 6, path)
    module = convert_graph(path)
    rng = np.random.default_rng(2)
    feed = {f"emb_{m}": rng.standard_normal((5, n)).astype(np.float32) for m, n in sizes.items()}
    feed["mask"] = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0]], np.float32)
    for column, m in enumerate(sizes):
        feed[f"emb_{m}"][feed["mask"][:, column] == 0] = 0
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["scores"], feed)[0]
    with torch.no_grad():
        got = module(*(torch.from_numpy(feed[name]) for name in graph_inputs(path)))
    got = (got[0] if isinstance(got, tuple | list) else got).numpy()
    assert _relative(got, ref) <= RTOL, method


def test_a_wav2vec2_whose_graph_computes_its_convolution_weight_converts(tmp_path: Path) -> None:
    """Real wav2vec2s export their positional convolution's weight as g * v / ||v|| (weight normalisation),
    which onnx2torch cannot read (it failed with ``KeyError: 'mul'``): it is folded to a constant first."""
    import onnx

    out = tmp_path / "model"
    import_encoders(out, [audio.plan(tiny_wav2vec2(tmp_path / "w2v", hidden=64))])
    graph = onnx.load(str(out / "audio.onnx")).graph
    weights = {w.name for w in graph.initializer}
    assert [n for n in graph.node if n.op_type == "Conv" and n.input[1] not in weights], "no computed weight to fold"
    module = convert_graph(out / "audio.onnx")
    samples = np.random.default_rng(3).standard_normal((2, 16_000)).astype(np.float32)
    name = graph_inputs(out / "audio.onnx")[0]
    session = ort.InferenceSession(str(out / "audio.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run(None, {name: samples})[0]
    with torch.no_grad():
        got = module(torch.from_numpy(samples))
    got = (got[0] if isinstance(got, tuple | list) else got).numpy()
    assert np.abs(ref).max() > 1e-3
    assert _relative(got, ref) <= RTOL


def test_a_weight_computed_by_an_op_outside_onnx_is_refused_in_one_line(tmp_path: Path) -> None:
    """Folding leaves what it cannot evaluate to the converter's own check, which names the op (the reference
    evaluator's NotImplementedError escaped as a traceback, and bench's naive stage crashed on it)."""
    from onnx import TensorProto, helper, numpy_helper, save

    from fusionstream.engines.errors import EngineError

    weight = numpy_helper.from_array(np.random.default_rng(0).random((8, 3, 3, 3)).astype(np.float32), "v")
    nodes = [helper.make_node("FusedWeight", ["v"], ["w"], domain="com.example"),
             helper.make_node("Conv", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "enc.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
         str(path))
    with pytest.raises(EngineError, match=r"^torch backend: enc\.onnx: onnx2torch cannot convert op FusedWeight "
                                          r"\(opset 1, domain com\.example\); use backend onnxruntime$"):
        convert_graph(path)
