"""Normalizations written as basic ops → one normalization op, so that quantization cannot break them apart.

An RMSNorm exported op by op (`x * 1/sqrt(mean(x²) + eps) * gamma`: Llama, Qwen2, Mistral, SmolLM2) quantizes
each intermediate with its own encoding, and the x² one is hopeless on a real LLM: SmolLM2-135M's residual stream
reaches ~25,000, so x² spans 0…6.2e8 and a 16-bit step is ~9,500; every ordinary token's x² rounds to 0 and the
QDQ model on the CPU had perplexity 369,445 where HTP (which runs the chain its own way) had 57. ONNX's
`RMSNormalization` (opset 23) is one op that onnxruntime's CPU runs and the QNN EP lowers to QNN's RmsNorm:
only its input, weight and output get encodings, as on the device. A LayerNorm written as basic ops (the same
chain on `x - mean(x)`, plus a bias) becomes `LayerNormalization` the same way.

The graph moves to the fused op's opset (onnx's version converter, graph/rewrites.py) only when it is older.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RMS_OPSET = 23  # RMSNormalization's first opset
LAYERNORM_OPSET = 17  # LayerNormalization's


@dataclass
class Chain:
    """One normalization found in the graph: the nodes it replaces and what the fused op takes."""

    nodes: list[Any]
    source: str  # the normalized tensor (x, or y for a LayerNorm of y)
    output: str
    epsilon: float
    gamma: str
    beta: str | None
    centered: bool  # a LayerNorm (x - mean(x) normalized), not an RMSNorm


def _size(init: Any) -> int:
    return math.prod(init.dims)


class _Graph:
    """Producers, consumers and constants of a graph, for matching chains of single-use nodes."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.const = {i.name: i for i in graph.initializer}  # read only when small: an LLM's are its weights
        self.outputs = {o.name for o in graph.output}

    def only_user(self, tensor: str, op: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op and tensor not in self.outputs:
            return users[0]
        return None

    def scalar(self, name: str) -> float | None:
        from onnx import numpy_helper

        init = self.const.get(name)
        return float(numpy_helper.to_array(init).reshape(-1)[0]) if init is not None and _size(init) == 1 else None

    def other(self, node: Any, name: str) -> str:
        return str(node.input[1] if node.input[0] == name else node.input[0])

    def last_axis_mean(self, node: Any, rank: int | None) -> bool:
        from onnx import numpy_helper

        attrs = {a.name: a for a in node.attribute}
        if "keepdims" in attrs and attrs["keepdims"].i == 0:
            return False
        axes = list(attrs["axes"].ints) if "axes" in attrs else (
            [int(a) for a in numpy_helper.to_array(self.const[node.input[1]]).reshape(-1)] if len(node.input) > 1
            and node.input[1] in self.const else [])
        return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _rank(model: Any, name: str) -> int | None:
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _square_of(g: _Graph, node: Any) -> str | None:
    """x where `node` computes x² (Pow(x, 2) or Mul(x, x))."""
    if node.op_type == "Pow" and g.scalar(node.input[1]) == 2.0:
        return str(node.input[0])
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return str(node.input[0])
    return None


def _scale_tail(g: _Graph, x: str, sqrt: Any) -> tuple[list[Any], str] | None:
    """x / sqrt(...) as Div(x, s) or Mul(x, Div(1, s)): (its nodes, the normalized tensor)."""
    div = g.only_user(sqrt.output[0], "Div")
    if div is None:
        return None
    if div.input[0] == x and div.input[1] == sqrt.output[0]:
        return [div], str(div.output[0])
    if g.scalar(div.input[0]) == 1.0:
        mul = g.only_user(div.output[0], "Mul")
        if mul is not None and g.other(mul, div.output[0]) == x:
            return [div, mul], str(mul.output[0])
    return None


def _affine(g: _Graph, tensor: str, op: str) -> tuple[Any, str] | None:
    """The Mul (or Add) applying a 1-D constant (gamma, beta) to `tensor`, if that is its only use."""
    node = g.only_user(tensor, op)
    if node is None:
        return None
    other = g.other(node, tensor)
    if other in g.const and len(g.const[other].dims) <= 1:
        return node, other
    return None


def _chain(g: _Graph, model: Any, square: Any) -> Chain | None:
    x = _square_of(g, square)
    mean = g.only_user(square.output[0], "ReduceMean") if x else None
    if x is None or mean is None or not g.last_axis_mean(mean, _rank(model, x)):
        return None
    add = g.only_user(mean.output[0], "Add")
    eps = g.scalar(g.other(add, mean.output[0])) if add is not None else None
    sqrt = g.only_user(add.output[0], "Sqrt") if add is not None and eps is not None else None
    tail = _scale_tail(g, x, sqrt) if sqrt is not None else None
    if tail is None or eps is None:
        return None
    nodes, out = [square, mean, add, sqrt, *tail[0]], tail[1]
    used_elsewhere = {n.name for n in g.consumers.get(x, [])} - {n.name for n in nodes}
    centered = None if used_elsewhere else _centering(g, model, x)  # x - mean(x): a LayerNorm
    source = x
    if centered is not None:
        nodes, source = [*centered[0], *nodes], centered[1]
    gamma = _affine(g, out, "Mul")
    if gamma is None:
        return None  # every real normalization has a weight; one without is left as it is
    nodes, out = [*nodes, gamma[0]], str(gamma[0].output[0])
    beta = _affine(g, out, "Add") if centered is not None else None
    if beta is not None:
        nodes, out = [*nodes, beta[0]], str(beta[0].output[0])
    return Chain(nodes, source, out, eps, gamma[1], beta[1] if beta else None, centered is not None)


def _centering(g: _Graph, model: Any, x: str) -> tuple[list[Any], str] | None:
    """([ReduceMean, Sub], y) where x = y - mean(y) over the last axis."""
    sub = g.producer.get(x)
    if sub is None or sub.op_type != "Sub":
        return None
    mean = g.producer.get(sub.input[1])
    if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
        return None
    if not g.last_axis_mean(mean, _rank(model, sub.input[0])) or len(g.consumers.get(mean.output[0], [])) != 1:
        return None
    return [mean, sub], str(sub.input[0])


def find(model: Any) -> list[Chain]:
    g = _Graph(model.graph)
    found = [_chain(g, model, n) for n in model.graph.node if n.op_type in ("Pow", "Mul")]
    return [c for c in found if c is not None]


def _initializer(graph: Any, name: str) -> Any:
    return next(i for i in graph.initializer if i.name == name)


def _replace(model: Any, chain: Chain) -> str:
    """Swap the chain for one node where its first node was; returns the new node's name."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    first = chain.nodes[0]
    name = f"{first.name}_{'LayerNorm' if chain.centered else 'RMSNorm'}"
    inputs = [chain.source, chain.gamma]
    if chain.centered:
        if chain.beta is None:
            zeros = np.zeros(numpy_helper.to_array(_initializer(graph, chain.gamma)).shape, np.float32)
            graph.initializer.append(numpy_helper.from_array(zeros, f"{name}_beta"))
        inputs.append(chain.beta or f"{name}_beta")
    op = "LayerNormalization" if chain.centered else "RMSNormalization"
    position = min(list(graph.node).index(n) for n in chain.nodes)
    for node in chain.nodes:
        graph.node.remove(node)
    graph.node.insert(position, helper.make_node(op, inputs, [chain.output], name=name, axis=-1,
                                                 epsilon=chain.epsilon))
    return name


def needs_opset(model: Any) -> int | None:
    """The opset the model must move to before `fuse` (23 for an RMSNorm, 17 for a LayerNorm), or None."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    needed = max((LAYERNORM_OPSET if c.centered else RMS_OPSET for c in find(model)), default=0)
    return needed if needed > opset else None


def fuse(model: Any) -> list[str]:
    """Fuse every normalization chain, in place; the new nodes' names."""
    return [_replace(model, c) for c in find(model)]
