"""`model check` (and `serve` at load) on a tokenizer-driven text encoder: each mistake is named by its own field.

From an outside user's models: a wrong output name was blamed on the tokenizer (the first run of the graph
was the tokenizer's check), ``max_tokens`` of 1 or 2 passed although the tokenizer adds two special tokens
(truncation then keeps no word, or is ignored), a ``max_tokens`` beyond the position embeddings was an
ONNX Runtime message, and an ``int8_file`` that is another graph was blamed on the encoder's input names.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fusionstream.engines.errors import ModelDirError
from fusionstream.engines.importers import import_encoders, text
from fusionstream.engines.manifest_check import check_model_dir
from tests.importkit import tiny_bert

POSITIONS = 40  # the tiny BERT's position embeddings


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertModel

    source = tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")
    config = json.loads((source / "config.json").read_text())
    config["max_position_embeddings"] = POSITIONS
    (source / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    BertModel.from_pretrained(source, ignore_mismatched_sizes=True).save_pretrained(source)
    out = tmp_path_factory.mktemp("encoders")
    import_encoders(out, [text.plan(source, max_tokens=16)])
    return out


def _variant(imported: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    directory = tmp_path / "variant"
    shutil.copytree(imported, directory)
    doc = json.loads((directory / "model.json").read_text())
    edit(doc)
    (directory / "model.json").write_text(json.dumps(doc))
    return directory


def _refusal(directory: Path) -> str:
    with pytest.raises(ModelDirError) as caught:
        check_model_dir(directory)
    message = str(caught.value)
    assert "\n" not in message and "ONNXRuntimeError" not in message, message
    return message.split("model.json: ", 1)[1]


def test_the_imported_encoder_passes(imported: Path) -> None:
    _, reports = check_model_dir(imported)
    assert [r.graph for r in reports] == ["text"]


@pytest.mark.slow
def test_a_wrong_output_name_is_the_output_names_fault(imported: Path, tmp_path: Path) -> None:
    def rename(doc: dict[str, Any]) -> None:
        doc["modalities"]["text"]["encoder"]["output"]["name"] = "pooled"

    said = _refusal(_variant(imported, tmp_path, rename))
    assert said == "modalities.text.encoder.output.name: text.onnx has no output 'pooled' (it has sentence_embedding)"


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", [1, 2])
def test_max_tokens_that_leave_no_room_for_a_word_are_refused(imported: Path, tmp_path: Path, max_tokens: int) -> None:
    def shorten(doc: dict[str, Any]) -> None:
        doc["modalities"]["text"]["preprocess"]["max_tokens"] = max_tokens

    said = _refusal(_variant(imported, tmp_path, shorten))
    assert said == (f"modalities.text.preprocess.max_tokens: {max_tokens} leaves no room for words: tokenizer.json "
                    "adds 2 special tokens to every text; set at least 3")


@pytest.mark.slow
def test_max_tokens_beyond_the_position_embeddings_name_the_most_it_takes(imported: Path, tmp_path: Path) -> None:
    def lengthen(doc: dict[str, Any]) -> None:
        doc["modalities"]["text"]["preprocess"]["max_tokens"] = 100

    said = _refusal(_variant(imported, tmp_path, lengthen))
    assert said.startswith(f"modalities.text.preprocess.max_tokens: 100, but text.onnx takes at most {POSITIONS} "
                           "tokens"), said
    assert said.endswith(f"set max_tokens to {POSITIONS} or less")

    def at_limit(doc: dict[str, Any]) -> None:
        doc["modalities"]["text"]["preprocess"]["max_tokens"] = POSITIONS

    check_model_dir(_variant(imported, tmp_path / "at-limit", at_limit))  # the number it names works


@pytest.mark.slow
def test_an_int8_file_that_is_another_graph_is_the_int8_files_fault(imported: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def point_at_other(doc: dict[str, Any]) -> None:
        doc["modalities"]["text"]["encoder"]["int8_file"] = "other.onnx"

    directory = _variant(imported, tmp_path, point_at_other)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(directory / "other.onnx"))
    said = _refusal(directory)
    assert said.startswith("modalities.text.encoder.int8_file: other.onnx does not fit the encoder it quantizes "
                           "(modalities.text.encoder.inputs."), said
