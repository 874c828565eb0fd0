"""Tiny format-2 model directories built with ``onnx.helper`` (no torch export: milliseconds), whose
outputs a test can recompute with numpy: linear encoders, a mean-of-token-embeddings text encoder
with a ``tokenizer.json`` made by the ``tokenizers`` library, and a masked linear fusion head."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
          "int32": TensorProto.INT32}
VOCAB = ["[PAD]", "[UNK]", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]


def _save(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], weights: dict[str, np.ndarray]) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs,
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def linear_encoder(path: Path, input_name: str, row_shape: Sequence[int], size: int, *, dtype: str = "float32",
                   output: str = "embedding", seed: int = 0) -> np.ndarray:
    """``[batch, *row_shape] -> flatten -> @ W -> [batch, size]``; returns W."""
    w = weights((int(np.prod(row_shape)), size), seed)
    nodes = [helper.make_node("Flatten", [input_name], ["flat"], axis=1)]
    source = "flat"
    if dtype != "float32":
        nodes.append(helper.make_node("Cast", ["flat"], ["flat32"], to=TensorProto.FLOAT))
        source = "flat32"
    nodes.append(helper.make_node("MatMul", [source, "W"], [output]))
    _save(path, nodes, [helper.make_tensor_value_info(input_name, _TYPES[dtype], ["batch", *row_shape])],
          [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", size])], {"W": w})
    return w


def text_encoder(path: Path, size: int, *, dtype: str = "int64", seed: int = 1) -> np.ndarray:
    """``input_ids, attention_mask [batch, tokens]`` → the mean of the unmasked token embeddings; returns the table."""
    table = weights((len(VOCAB), size), seed)
    axes1 = numpy_helper.from_array(np.array([1], np.int64), "axes1")
    axes2 = numpy_helper.from_array(np.array([2], np.int64), "axes2")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes2"], ["m3"]),
        helper.make_node("Mul", ["tokens", "m3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axes1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["m", "axes1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["total", "count1"], ["sentence_embedding"]),
    ]
    inputs = [helper.make_tensor_value_info(n, _TYPES[dtype], ["batch", "tokens"])
              for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "text", inputs,
                              [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", size])],
                              [numpy_helper.from_array(table, "table"), axes1, axes2,
                               numpy_helper.from_array(np.ones(1, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return table


def text_embedding(table: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What :func:`text_encoder`'s graph computes, in numpy."""
    m = mask.astype(np.float32)
    return (table[ids] * m[:, :, None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1)


def write_tokenizer(path: Path) -> None:
    """A word-level ``tokenizer.json`` over :data:`VOCAB` that pads with ``[PAD]`` (id 0)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.normalizer = Lowercase()
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(path))


def fusion_head(path: Path, sizes: dict[str, int], outputs: int, seed: int = 7) -> np.ndarray:
    """``concat(emb_m * mask[:, i]) @ W -> scores``; returns W."""
    w = weights((sum(sizes.values()), outputs), seed)
    nodes: list[Any] = []
    weights_: dict[str, np.ndarray] = {"W": w}
    parts = []
    for i, name in enumerate(sizes):
        weights_[f"s{i}"] = np.array([i], np.int64)
        weights_[f"e{i}"] = np.array([i + 1], np.int64)
        weights_["ax1"] = np.array([1], np.int64)
        nodes.append(helper.make_node("Slice", ["mask", f"s{i}", f"e{i}", "ax1"], [f"m{i}"]))
        nodes.append(helper.make_node("Mul", [f"emb_{name}", f"m{i}"], [f"p{i}"]))
        parts.append(f"p{i}")
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1))
    nodes.append(helper.make_node("MatMul", ["cat", "W"], ["scores"]))
    inputs = [helper.make_tensor_value_info(f"emb_{n}", TensorProto.FLOAT, ["batch", s]) for n, s in sizes.items()]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", len(sizes)]))
    _save(path, nodes, inputs, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", outputs])],
          weights_)
    return w


def fused(w: np.ndarray, embeddings: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """What :func:`fusion_head`'s graph computes, in numpy (before the activation)."""
    parts = [emb * mask[:, i : i + 1] for i, emb in enumerate(embeddings.values())]
    return np.concatenate(parts, axis=1) @ w


def write_model(out: Path, *, video: dict[str, Any] | None = None, audio: dict[str, Any] | None = None,
                text: bool = False, task: dict[str, Any] | None = None, activation: str = "softmax",
                per_frame: bool = True, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """A format-2 directory at ``out`` with the modalities asked for (``video``/``audio``: their
    preprocess fields); returns the weights by graph, for numpy references."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"video": 6, "audio": 5, "text": 4} | (sizes or {})
    task = task or {"kind": "single_label", "classes": ["a", "b", "c"]}
    modalities: dict[str, Any] = {}
    made: dict[str, Any] = {}
    if video is not None:
        pre = {"frames": 2, "height": 8, "width": 10} | video
        frame = [3, pre["height"], pre["width"]] if pre.get("layout", "nchw") == "nchw" else [pre["height"],
                                                                                             pre["width"], 3]
        row = frame if per_frame else [pre["frames"], *frame]
        made["video"] = linear_encoder(out / "video.onnx", "pixel_values", row, sizes["video"])
        modalities["video"] = {"encoder": {"file": "video.onnx", "per_frame": per_frame,
                                           "inputs": {"pixels": {"name": "pixel_values", "dtype": "float32"}},
                                           "output": {"name": "embedding", "size": sizes["video"]}},
                               "preprocess": pre}
    if audio is not None:
        pre = {"sample_rate": 100} | audio
        made["audio"] = linear_encoder(out / "audio.onnx", "input_values", [pre["sample_rate"]], sizes["audio"],
                                       seed=3)
        modalities["audio"] = {"encoder": {"file": "audio.onnx",
                                           "inputs": {"samples": {"name": "input_values", "dtype": "float32"}},
                                           "output": {"name": "embedding", "size": sizes["audio"]}},
                               "preprocess": pre}
    if text:
        made["text"] = text_encoder(out / "text.onnx", sizes["text"])
        write_tokenizer(out / "tokenizer.json")
        modalities["text"] = {"encoder": {"file": "text.onnx",
                                          "inputs": {"input_ids": {"name": "input_ids", "dtype": "int64"},
                                                     "attention_mask": {"name": "attention_mask", "dtype": "int64"}},
                                          "output": {"name": "sentence_embedding", "size": sizes["text"]}},
                              "preprocess": {"tokenizer": "tokenizer.json", "max_tokens": 6}}
    outputs = task["size"] if task["kind"] == "embedding" else len(task["classes"])
    made["fusion"] = fusion_head(out / "fusion.onnx", {m: sizes[m] for m in modalities}, outputs)
    doc = {"format": 2, "version": "tiny-1", "window": {"length_ms": 1000, "hop_ms": 500}, "task": task,
           "modalities": modalities,
           "fusion": {"file": "fusion.onnx", "method": "concat",
                      "inputs": {**{m: f"emb_{m}" for m in modalities}, "mask": "mask"},
                      "output": {"name": "scores", "activation": activation}}}
    (out / "model.json").write_text(json.dumps(doc, indent=1))
    return made


def edit_manifest(model_dir: Path, change: Any) -> None:
    """Apply ``change(doc)`` to ``model_dir/model.json`` in place."""
    path = model_dir / "model.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
