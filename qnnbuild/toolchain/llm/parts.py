"""An LLM graph split between decoder layers into K parts, each its own QNN context (compile's `parts: K`).

One HTP context must fit the NPU's address space (1-2 GB), so a model past that ships as parts run in a chain:
part 1 holds the embedding lookup and the first layers, the last part the final layers and the LM head. The split
is made on the quantized graph, by layer: a node named for decoder layer i (`layers.i`, as transformers names its
modules) goes to part i·K/L; every other node goes with the layer of its nearest labelled producer (a Quantize /
Dequantize pair after a layer's residual add stays with that layer); what reads no layer at all (weights'
Dequantize nodes, the embedding, the rotary tables, the mask) is computed by each part that reads it. What
crosses from part to part is the residual stream as quantized integers (and the KV cache outputs): on the HTP
emulator the chain gives the whole graph's outputs bit for bit (tested).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed

LAYER = re.compile(r"layers[._/](\d+)(?:[._/]|$)")
RESHAPES = {"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Cast", "Expand"}
BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 10: 16, 11: 64, 21: 4, 22: 4}


def _layers_of(nodes: list[Any], producer: dict[str, int], consumers: dict[str, list[int]]) -> list[int]:
    """Each node's decoder layer (module docstring's rule); -1 for a graph without labelled nodes."""
    named = [int(m.group(1)) if (m := LAYER.search(n.name)) else None for n in nodes]
    after: list[int | None] = [None] * len(nodes)  # the highest labelled layer among a node's producers
    for i, node in enumerate(nodes):  # nodes are in topological order
        ups = [after[producer[t]] if named[producer[t]] is None else named[producer[t]]
               for t in node.input if t in producer]
        known = [u for u in ups if u is not None]
        after[i] = max(known) if known else None
    before: list[int | None] = [None] * len(nodes)  # the lowest labelled layer among a node's consumers
    for i in reversed(range(len(nodes))):
        downs = [before[j] if named[j] is None else named[j] for t in nodes[i].output for j in consumers.get(t, [])]
        known = [d for d in downs if d is not None]
        before[i] = min(known) if known else None
    found = []
    for i in range(len(nodes)):
        layer = named[i] if named[i] is not None else after[i] if after[i] is not None else before[i]
        found.append(layer if layer is not None else 0)
    return found


def assign(model: Any, parts: int) -> list[int]:
    """The part (0-based) of each node of `model`; refuses a split that has no K layers to split between."""
    nodes = list(model.graph.node)
    producer = {t: i for i, n in enumerate(nodes) for t in n.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    layers = _layers_of(nodes, producer, consumers)
    count = max(layers) + 1
    if parts > count:
        raise StageFailed(f"parts: {parts} asks for more parts than the model has decoder layers ({count})")
    return [layer * parts // count for layer in layers]


def _value_infos(model: Any, names: set[str], folder: Path) -> dict[str, Any]:
    """Type and shape of the graph's inputs and outputs and of `names` (tensors crossing parts). onnx's shape
    inference leaves most tensors of a QDQ graph untyped, so they come from one run of the graph on the CPU on
    zeros: the graphs are static. `folder`: where the data file of `model`'s weights lies, read there."""
    import numpy as np
    import onnx
    from onnx import helper

    from qnnbuild.toolchain.runtime import qnn

    found = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    wanted = sorted(names - set(found))
    if wanted:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted)
        session = qnn.plain_cpu_session(probe.SerializeToString(), folder)
        feeds = {v.name: np.zeros([d.dim_value for d in v.type.tensor_type.shape.dim],
                                  helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
                 for v in model.graph.input}
        for name, value in zip(wanted, session.run(wanted, feeds), strict=True):
            found[name] = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        list(value.shape))
    return found


def _part_model(model: Any, members: list[Any], inputs: list[str], outputs: list[str], infos: dict[str, Any],
                index: int) -> Any:
    """One part as a model: its nodes and the initializers they read."""
    from onnx import TensorProto, helper

    graph_inputs = {i.name for i in model.graph.input}
    for name in inputs:
        if name not in graph_inputs and infos[name].type.tensor_type.elem_type == TensorProto.FLOAT:
            raise StageFailed(f"cannot split at {name}: a float tensor that is not quantized where it crosses parts")
    read = {t for n in members for t in n.input}
    graph = helper.make_graph(members, f"{model.graph.name}_part{index + 1}", [infos[n] for n in inputs],
                              [infos[n] for n in outputs], [i for i in model.graph.initializer if i.name in read])
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _free(model: Any) -> set[int]:
    """Nodes that read no decoder layer, only constants and graph inputs (a weight's Dequantize, the embedding
    lookup, the rotary cos/sin and the mask built from the positions): each part that reads one computes it
    itself. A reshape of such values counts even when named for a layer: the exporter shares layer 0's
    Unsqueeze of cos/sin with every later layer. Passing those tables from part 1 instead moved a key of the
    tiny Llama's second part by one 8-bit step on the HTP against the whole graph; computed in each part, the
    chain gives the whole graph's outputs bit for bit."""
    known = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    found = set()
    for i, node in enumerate(model.graph.node):
        movable = not LAYER.search(node.name) or node.op_type in RESHAPES
        if movable and all(not t or t in known for t in node.input):
            found.add(i)
            known.update(node.output)
    return found


def _members(nodes: list[Any], producer: dict[str, int], owner: list[int], constants: set[int], p: int) -> list[Any]:
    """Part p's nodes in graph order: those assigned to it and the constant ones they read."""
    chosen = {i for i in range(len(nodes)) if owner[i] == p and i not in constants}
    stack = [producer[t] for i in chosen for t in nodes[i].input if t in producer and producer[t] in constants]
    while stack:
        i = stack.pop()
        if i not in chosen:
            chosen.add(i)
            stack += [producer[t] for t in nodes[i].input if t in producer]
    return [nodes[i] for i in sorted(chosen)]


def _with_dequantizers(members: list[Any], dequantizers: dict[str, Any]) -> list[Any]:
    """A part reads another part's activations as integers: a Dequantize made elsewhere is copied in, so the
    quantized tensor is what crosses, not a float the HTP converts on the way out and quantizes on the way in."""
    made_here = {t for n in members for t in n.output}
    copies = _ordered(t for n in members for t in n.input if t in dequantizers and t not in made_here)
    return [dequantizers[t] for t in copies] + members


def split(model: Any, parts: int, folder: Path, only: int | None = None) -> list[Any]:
    """`model` as `parts` models to run in order; each takes the graph inputs and earlier parts' outputs it reads
    and gives the graph outputs and the tensors later parts read. `folder`: the model file's, where the data
    file of weights not loaded lies (the parts' weights stay external to it). `only` (0-based): build that part
    alone (an llm-part stage keeps one, and reads only its weights)."""
    owner = assign(model, parts)
    nodes = list(model.graph.node)
    initializers = {i.name for i in model.graph.initializer}
    constants = _free(model)
    dequantizers = {n.output[0]: n for i, n in enumerate(nodes) if n.op_type == "DequantizeLinear"
                    and i not in constants}
    producer = {t: i for i, n in enumerate(nodes) for t in n.output}
    groups = [_with_dequantizers(_members(nodes, producer, owner, constants, p), dequantizers)
              for p in range(parts)]
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    reads = []
    for members in groups:
        made_here = {t for n in members for t in n.output}
        reads.append(_ordered(t for n in members for t in n.input
                              if t and t not in initializers and t not in made_here))
    infos = _value_infos(model, {t for read in reads for t in read}, folder)
    found = []
    for p, members in enumerate(groups):
        if only is not None and p != only:
            continue
        later = {t for read in reads[p + 1:] for t in read}
        outputs = [t for t in _ordered(t for n in members for t in n.output)
                   if t in graph_outputs or (t in later and not any(t in r for r in reads[:p + 1]))]
        inputs = [t for t in graph_inputs if t in reads[p]] + [t for t in reads[p] if t not in graph_inputs]
        found.append(_part_model(model, members, inputs, outputs, infos, p))
    return found


def _ordered(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def check_fits(model: Any, what: str, limit: float, advice: str) -> float:
    """A context must fit the NPU's address space: refuse `model` (a whole graph or a part) whose weights pass
    max_part_mb, before compiling; returns its weights' MB."""
    size = weight_mb(model)
    if size > limit:
        raise StageFailed(f"{what} holds {size:,.1f} MB of weights, over max_part_mb {limit:g} (one HTP context "
                          f"must fit the NPU's 1-2 GB address space): {advice}")
    return size


def weight_mb(model: Any) -> float:
    """The model's constants at their stored widths (int4 at half a byte), in MB: what a part's context holds."""
    import math

    bits = sum(math.prod(i.dims) * BITS.get(i.data_type, 32) for i in model.graph.initializer)
    return float(bits / 8 / 1e6)
