"""Weights that arrive pre-quantized: integer initializers dequantized in the graph, by DequantizeLinear or by a
Cast to float, a Sub of their zero point where they have one, and a Mul by their scale (how int8-weight exports
and weight-only quantizers write them).

They become the float weights they stand for, computed as ONNX defines them ((q - zero point) × scale, per
axis where the scale is a vector), and quantize then quantizes them by the recipe's rules like any float weight:
the source's own encodings are not kept. At 8-bit symmetric per-channel weights a weight quantized that way
comes back on its own grid; the recipe may choose other bit widths. Left in the float model, a
DequantizeLinear would reach the quantizer as an op of a float graph, and a Cast/Mul pair would be folded by
onnxruntime without a word: export names the weights (rewrites.json) and quantize says it (rules.json).
"""

from __future__ import annotations

from typing import Any

import numpy as np

INTEGERS = ("int8", "uint8", "int16", "uint16", "int4", "uint4")


def _array(init: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def _per_axis(value: Any, rank: int, axis: int) -> Any:
    """A scale or zero point of DequantizeLinear shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if value.ndim != 1 or rank == 0:
        return value
    shape = [1] * rank
    shape[axis % rank] = value.shape[0]
    return value.reshape(shape)


def _dequantize_linear(node: Any, constant: dict[str, Any]) -> Any | None:
    from onnx import helper

    if not all(i in constant for i in node.input if i):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size"):
        return None  # blocked scales: left to the quantizer's own reading
    q = _array(constant[node.input[0]])
    if q.dtype.name not in INTEGERS:
        return None
    axis = int(attrs.get("axis", 1))
    scale = _per_axis(_array(constant[node.input[1]]).astype(np.float32), q.ndim, axis)
    zero = (_per_axis(_array(constant[node.input[2]]).astype(np.int32), q.ndim, axis)
            if len(node.input) > 2 and node.input[2] else 0)
    return ((q.astype(np.int32) - zero).astype(np.float32) * scale).astype(np.float32)


def _cast_then_mul(node: Any, constant: dict[str, Any], users: dict[str, list[Any]]) -> tuple[list[Any], Any] | None:
    """A Cast to float of an integer initializer, then a Sub of a constant zero point (optional) and a Mul by a
    constant scale, each the only reader of the one before: the nodes after the Cast, and the weights."""
    from onnx import TensorProto, helper

    if node.input[0] not in constant or _array(constant[node.input[0]]).dtype.name not in INTEGERS:
        return None
    if helper.get_attribute_value(next(a for a in node.attribute if a.name == "to")) != TensorProto.FLOAT:
        return None
    weights = _array(constant[node.input[0]]).astype(np.float32)
    chain, current = [], node.output[0]
    for op in ("Sub", "Mul"):
        following = users.get(current, [])
        if len(following) != 1 or following[0].op_type != op:
            continue
        step = following[0]
        other = next((i for i in step.input if i != current), None)
        if other not in constant or (op == "Sub" and step.input[0] != current):
            continue
        value = _array(constant[other]).astype(np.float32)
        weights = (weights - value if op == "Sub" else weights * value).astype(np.float32)
        chain.append(step)
        current = step.output[0]
    if not chain or chain[-1].op_type != "Mul":
        return None
    return chain, weights


def dequantized_weights(model: Any) -> list[str]:
    """Pre-quantized weights → float initializers of the same name as the dequantized tensor, in place; the
    names of those weights."""
    from onnx import numpy_helper

    graph = model.graph
    constant = {i.name: i for i in graph.initializer}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    changed: list[str] = []
    freed: set[str] = set()
    for node in list(graph.node):
        gone, weights = [node], None
        if node.op_type == "DequantizeLinear":
            weights = _dequantize_linear(node, constant)
            output = node.output[0]
        elif node.op_type == "Cast" and len(node.input) == 1:
            found = _cast_then_mul(node, constant, users)
            if found is not None:
                gone, weights, output = [node, *found[0]], found[1], found[0][-1].output[0]
        if weights is None:
            continue
        for dead in gone:
            graph.node.remove(dead)
            freed.update(i for i in dead.input if i in constant)
        graph.initializer.append(numpy_helper.from_array(weights, output))
        changed.append(output)
    if changed:
        _drop_unread(graph, freed)
    return changed


def _drop_unread(graph: Any, freed: set[str]) -> None:
    """The integer weights and scales among `freed` that nothing reads any more (subgraphs included)."""
    from qnnbuild.toolchain.graph.onnxgraph import all_nodes

    read = {i for n in all_nodes(graph) for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name in freed and i.name not in read]:
        graph.initializer.remove(init)
