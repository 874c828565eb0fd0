"""Convolution weights computed from constants, folded into initializers, for ``onnx2torch``.

onnx2torch builds a convolution from its weight and bias *initializers*; a weight the graph computes
raises ``KeyError`` deep inside it. Exporters compute one whenever a model keeps a parametrised
weight: wav2vec2's, HuBERT's and WavLM's positional convolution is weight-normalised
(``weight = g * v / ||v||``, a ``ReduceL2``, ``Div`` and ``Mul`` of two initializers), so every such
audio encoder imported from transformers failed on the torch backend (a tiny test model's exporter
happened to fold it). The computation depends on initializers only, so it is evaluated once here
with ONNX's reference evaluator and the convolution reads the result as an initializer; the nodes
that computed it, unused after that, are dropped. The numbers are the graph's own.
"""

from __future__ import annotations

from typing import Any

#: Ops that onnx2torch reads a weight (input 1) and bias (input 2) of from initializers.
_WEIGHTED = frozenset({"Conv", "ConvTranspose"})


def fold_computed_weights(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; returns how many weights were folded.

    A weight computed from anything but initializers and ``Constant`` nodes (a graph input), by an op
    outside the default domain, or that the evaluator cannot compute, is left as it is: the converter
    then refuses the graph, naming what it cannot convert. An ``Identity`` of an initializer is left to
    ``onnx_torch.prepare``, which aliases it without evaluating anything."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    initializers = {w.name for w in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    wanted: list[tuple[Any, int]] = []  # (node, input index) of each computed weight or bias
    for node in graph.node:
        if node.op_type in _WEIGHTED:
            for index in (1, 2):
                name = node.input[index] if len(node.input) > index else ""
                if not name or name in initializers or not _constant(name, producers, initializers):
                    continue
                source = producers[name]
                if source.op_type == "Identity" and source.input[0] in initializers:
                    continue
                if all(n.domain in ("", "ai.onnx") for n in _ancestor_nodes([name], producers)):
                    wanted.append((node, index))
    if not wanted:
        return 0
    names = sorted({node.input[index] for node, index in wanted})
    needed = {id(n) for n in _ancestor_nodes(names, producers)}
    nodes = [node for node in graph.node if id(node) in needed]  # in the graph's (topological) order
    read = {name for node in nodes for name in node.input}
    sub = helper.make_graph(nodes, "fold", [], [helper.make_empty_tensor_value_info(n) for n in names],
                            [w for w in graph.initializer if w.name in read])  # not every weight of the model
    try:
        values = ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})
    except Exception:  # an op or form the reference evaluator lacks: the converter names it, in one line
        return 0
    folded = {}
    for name, value in zip(names, values, strict=True):
        folded[name] = f"{name}__folded"
        graph.initializer.append(numpy_helper.from_array(value, folded[name]))
    for node, index in wanted:
        node.input[index] = folded[node.input[index]]
    _drop_unused(graph, needed)
    return len(names)


def _constant(name: str, producers: dict[str, Any], initializers: set[str]) -> bool:
    """Whether tensor ``name`` depends on initializers and constants only (not on a graph input)."""
    stack, seen = [name], set()
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in initializers or tensor in seen:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None:  # a graph input
            return False
        stack.extend(node.input)
    return True


def _ancestor_nodes(names: list[str], producers: dict[str, Any]) -> list[Any]:
    """The nodes that compute ``names``."""
    found: dict[int, Any] = {}
    stack = list(names)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in found:
            found[id(node)] = node
            stack.extend(node.input)
    return list(found.values())


def _drop_unused(graph: Any, candidates: set[int]) -> None:
    """Remove the nodes among ``candidates`` (ids) whose outputs nothing reads any more (a node, a node's
    subgraph, the graph's outputs), until none is left."""
    while True:
        read = {o.name for o in graph.output} | _read_by(graph.node)
        unused = [n for n in graph.node if id(n) in candidates and not any(out in read for out in n.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def _read_by(nodes: Any) -> set[str]:
    """Tensor names the nodes read, those read inside their subgraphs (If, Loop, Scan) included."""
    read: set[str] = set()
    for node in nodes:
        read.update(node.input)
        for attribute in node.attribute:
            for sub in (attribute.g, *attribute.graphs) if attribute.HasField("g") else attribute.graphs:
                read |= _read_by(sub.node)
    return read
