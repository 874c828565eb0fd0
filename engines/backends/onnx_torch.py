"""ONNX graphs as torch modules (``onnx2torch``), for the torch backend on format-2 directories.

``onnx2torch`` covers ONNX up to opset 17 and a few exporter habits less than ONNX Runtime does, so
each graph is first rewritten into an equivalent one it reads (the graph's numbers do not change:
the torch backend's outputs are checked against ONNX Runtime's in tests/engines):

- opset 18 and later → 17: opset 18 moved the Reduce* ops' ``axes`` from an attribute to an input,
  which onnx2torch does not read, so a constant ``axes`` input goes back into the attribute (a
  computed one is refused); ``Split(num_outputs)`` over an axis of known length becomes ``Split``
  with the chunk sizes; ``Pad`` with ``axes`` is refused. Opsets 18-21 otherwise add types and
  optional attributes, which onnx2torch's converters refuse when they do not know them. (ONNX's
  version converter has no adapter for ``Pad`` 18 → 17, which every attention head torch exports has.)
- ``Reshape(allowzero=1)`` → ``allowzero=0`` (torch.export writes the flag on every reshape): it only
  changes what a 0 in the target shape means, "an empty axis" instead of "copy the input's", and a
  tensor with elements cannot become an empty one, so the two readings agree on every reshape that
  succeeds on a non-empty tensor (the runtimes never run empty batches);
- ``Identity`` of a weight (the TorchScript exporter's way to share a bias) → the weight itself,
  because onnx2torch reads a convolution's weights from initializers only;
- ``GreaterOrEqual`` / ``LessOrEqual`` (transformers' attention masks) get converters here: onnx2torch
  has none, and each is one torch comparison;
- a convolution weight computed from constants (wav2vec2's weight-normalised positional convolution)
  → an initializer holding its value (``onnx_folding``): onnx2torch reads convolution weights from
  initializers only.

A graph with an op it still cannot convert is refused with one line naming the file and the op.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from fusionstream.engines.backends.onnx_folding import fold_computed_weights
from fusionstream.engines.errors import BackendUnavailable, EngineError, first_line

#: The newest opset onnx2torch converts.
OPSET = 17


def _register_comparisons() -> None:
    """Converters for the comparisons onnx2torch lacks (registered once per process)."""
    import torch
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, onnx_mapping_from_node

    class Compare(torch.nn.Module):
        def __init__(self, op: Any) -> None:
            super().__init__()
            self.op = op

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.op(a, b)

    for op_type, op in (("GreaterOrEqual", torch.ge), ("LessOrEqual", torch.le)):
        for version in (12, 16):
            if OperationDescription(domain="", operation_type=op_type, version=version) in _CONVERTER_REGISTRY:
                continue

            def convert(node: Any, graph: Any, op: Any = op) -> OperationConverterResult:
                mapping: OnnxMapping = onnx_mapping_from_node(node)
                return OperationConverterResult(torch_module=Compare(op), onnx_mapping=mapping)

            add_converter(operation_type=op_type, version=version)(convert)


#: Ops whose opset-18 form takes ``axes`` as an input instead of an attribute.
_REDUCE_AXES = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                "ReduceLogSumExp", "ReduceSumSquare"}


def _to_opset_17(model: Any, file: str) -> None:
    """Rewrite, in place, the opset-18+ forms of a graph's nodes that opset 17 spells differently."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {w.name: numpy_helper.to_array(w) for w in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _REDUCE_AXES and len(node.input) > 1 and node.input[1]:
            axes = constants.get(node.input[1])
            if axes is None:
                raise EngineError(f"torch backend: {file}: the axes of {node.op_type} {node.name!r} are computed at "
                                  f"run time, which onnx2torch cannot convert; use backend onnxruntime")
            del node.input[1:]
            node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes.ravel()]))
        elif node.op_type == "Split" and any(a.name == "num_outputs" for a in node.attribute):
            _split_sizes(model, node, file)
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            raise EngineError(f"torch backend: {file}: Pad {node.name!r} pads chosen axes (opset 18), which "
                              f"onnx2torch cannot convert; use backend onnxruntime")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET


def _split_sizes(model: Any, node: Any, file: str) -> None:
    """Opset 18's ``Split(num_outputs=n)`` as opset 13's ``Split(x, sizes)``: n chunks of ceil(d / n),
    the last one smaller, ``d`` being the (static) length of the split axis."""
    from onnx import TensorProto, helper, shape_inference

    attributes = {a.name: a for a in node.attribute}
    parts = helper.get_attribute_value(attributes["num_outputs"])
    axis = helper.get_attribute_value(attributes["axis"]) if "axis" in attributes else 0
    inferred = shape_inference.infer_shapes(model).graph
    values = {v.name: v for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    value = values.get(node.input[0])
    dims = value.type.tensor_type.shape.dim if value is not None else []
    length = dims[axis].dim_value if dims and dims[axis].HasField("dim_value") else 0
    if not length:
        raise EngineError(f"torch backend: {file}: Split {node.name!r} splits an axis of unknown length into "
                          f"{parts}, which onnx2torch cannot convert; use backend onnxruntime")
    chunk = -(-length // parts)
    sizes = [min(chunk, length - i * chunk) for i in range(parts)]
    name = f"{node.output[0]}_split_sizes"
    model.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [parts], sizes))
    node.attribute.remove(attributes["num_outputs"])
    node.input.append(name)


def prepare(model: Any, file: str = "graph") -> Any:
    """``model`` (an ``onnx.ModelProto``) rewritten, in place, into the equivalent graph onnx2torch reads;
    ``file`` names it in errors."""
    import onnx

    fold_computed_weights(model)  # first: ONNX's evaluator reads the graph at the opset it was written for
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if opset > OPSET:
        _to_opset_17(model, file)
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in weights and node.output[0] not in outputs:
            alias = onnx.TensorProto()
            alias.CopyFrom(weights[node.input[0]])
            alias.name = node.output[0]
            graph.initializer.append(alias)
            weights[alias.name] = alias
            graph.node.remove(node)
        elif node.op_type == "Reshape":
            for attribute in list(node.attribute):
                if attribute.name == "allowzero":
                    node.attribute.remove(attribute)
    return model


def unsupported_op(model: Any) -> str | None:
    """The first op of ``model`` onnx2torch has no converter for (``domain:op vN``), or None."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": o.version for o in model.opset_import}
    for node in model.graph.node:
        domain = node.domain or ""
        try:
            get_converter(node.op_type, opsets.get(domain, OPSET), domain or "")
        except NotImplementedError:
            return f"{node.op_type} (opset {opsets.get(domain, OPSET)}{', domain ' + domain if domain else ''})"
    return None


def convert_graph(path: Path) -> Any:
    """The graph at ``path`` as a torch ``nn.Module`` taking its inputs positionally, in graph order,
    and returning its outputs (a tuple when it has several); refused with one line naming the file
    and the op when onnx2torch cannot convert it."""
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as exc:
        raise BackendUnavailable(f"torch backend: format-2 models need onnx2torch ({exc})") from exc
    _register_comparisons()
    # onnx2torch's Slice indexes with a list, which torch has warned about since 2.x and still runs the same
    # way: one warning in every service log that says nothing to the user.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning, module="onnx2torch")
    model = prepare(onnx.load(str(path)), path.name)
    op = unsupported_op(model)
    if op is not None:
        raise EngineError(f"torch backend: {path.name}: onnx2torch cannot convert op {op}; use backend onnxruntime")
    try:
        return convert(model).eval()
    except NotImplementedError as exc:  # a supported op with an unsupported attribute value
        raise EngineError(f"torch backend: {path.name}: onnx2torch cannot convert it: {exc}") from None
    except Exception as exc:  # onnx2torch's own failures on forms it does not expect (KeyError, ...): one line
        raise EngineError(f"torch backend: {path.name}: onnx2torch failed to convert it ({first_line(exc)}); "
                          "use backend onnxruntime") from None


def graph_inputs(path: Path) -> list[str]:
    """Names of the graph's inputs, in order (initializers listed as inputs excluded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {w.name for w in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in weights]


def graph_outputs(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
