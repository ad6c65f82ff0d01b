"""Well-known rewrites that fit real models to QNN, applied at the recipe's fixed input shapes before quantizing.

Each returns the names of the nodes it changed, so export can say what was changed (rewrites.json, and the op
report after it). None changes what the model computes:
- Constant nodes become initializers: Paddle exports keep Resize's scales/roi as Constant nodes, which the
  quantizer then quantizes (scales [1, 1, 2, 2] come back as [0.996, 0.996, 2, 2]);
- a Clip whose min or max is computed (`ReduceMax - 80` in a mel spectrogram) becomes Max / Min, which HTP takes;
- onnxruntime's own `qnn_preprocess_model` fuses the Erf sequence into Gelu (and LayerNorm, ...); it raises on
  a model that carries metadata, so metadata is cleared first;
- `Max(x, -inf)` / `Min(x, +inf)` (jax2tf's softmax keeps `Maximum(max, -inf)`) is x; the quantizer would give
  the infinite constant an infinite scale, and the dequantized 0 * inf is NaN, so the model's output is NaN;
- `Reciprocal(x)` becomes `Div(1, x)`: onnxruntime's QNN EP lowers Reciprocal to a divide whose numerator 1 is
  quantized with x's own encoding, which saturates when x stays below 1 (magika's LayerNorm: 1/sqrt(var) came out
  ~8x too small on HTP, 1 dB against 15 dB for the same QDQ model on the CPU); an explicit constant gets its
  own encoding;
- an attention mask's huge negative constant (`(1 - mask) * finfo(float32).min`, a causal mask of -inf,
  `Where(mask, scores, -inf)`) reaching a Softmax becomes a finite `mask_value`: the quantizer would give the
  masked scores a range of ~1e38 and every real score would collapse to one value (all-MiniLM-L6-v2: embedding
  cosine 0.08 on HTP); Qualcomm AI Hub does the same with -50 for Llama;
- an RMSNorm or LayerNorm written as basic ops becomes one `RMSNormalization` / `LayerNormalization`
  (graph/normfuse.py says why);
- weights that arrive pre-quantized (int8 initializers dequantized in the graph) become the float weights they
  stand for, which quantize quantizes by the recipe's rules (graph/prequant.py);
- constant folding at the fixed shapes (onnxruntime's basic optimizations, run by export afterwards) removes
  shape-computing subgraphs such as Range.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.toolchain.graph import normfuse, prequant
from qnnbuild.toolchain.graph.rewritecheck import no_check


def constants_to_initializers(model: Any) -> list[str]:
    from onnx import numpy_helper

    graph = model.graph
    changed = []
    for node in list(graph.node):
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Constant" or "value" not in attrs or len(node.output) != 1:
            continue
        tensor = numpy_helper.to_array(attrs["value"].t)
        graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        graph.node.remove(node)
        changed.append(node.name or node.output[0])
    return changed


def computed_clip_bounds(model: Any) -> list[str]:
    """Clip(x, min, max) with a min or max computed at run time → Max(x, min) / Min(·, max)."""
    from onnx import helper

    graph = model.graph
    constant = {i.name for i in graph.initializer}
    changed = []
    for index, node in enumerate(list(graph.node)):
        bounds = list(node.input[1:]) + [""] * (3 - len(node.input))
        if node.op_type != "Clip" or all(b == "" or b in constant for b in bounds[:2]):
            continue
        low, high = bounds[0], bounds[1]
        current, replacement = node.input[0], []
        for op, bound in (("Max", low), ("Min", high)):
            if bound:
                out = f"{node.output[0]}_{op.lower()}" if (op == "Max" and high) else node.output[0]
                replacement.append(helper.make_node(op, [current, bound], [out], name=f"{node.name}_{op.lower()}"))
                current = out
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
        changed.append(node.name or f"Clip_{index}")
    return changed


def infinite_bounds(model: Any) -> list[str]:
    """Max(x, -inf) and Min(x, +inf) with a one-element constant bound → Identity (folded away later)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    constant = {i.name: i for i in graph.initializer}
    changed = []
    for node in list(graph.node):
        infinity = {"Max": -np.inf, "Min": np.inf}.get(node.op_type)
        if infinity is None or len(node.input) != 2:
            continue
        bounds = [i for i in node.input if i in constant and math.prod(constant[i].dims) == 1]  # never a weight
        if len(bounds) != 1 or numpy_helper.to_array(constant[bounds[0]]).item() != infinity:
            continue
        other = next(i for i in node.input if i != bounds[0])
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, helper.make_node("Identity", [other], list(node.output), name=node.name))
        changed.append(node.name or node.output[0])
    return changed


def reciprocal_to_div(model: Any) -> list[str]:
    """Reciprocal(x) → Div(1, x), with 1 an initializer of x's element type (float models only)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    changed = []
    for node in list(graph.node):
        if node.op_type != "Reciprocal":
            continue
        one = f"{node.output[0]}_one"
        graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, helper.make_node("Div", [one, node.input[0]], list(node.output), name=node.name))
        changed.append(node.name or node.output[0])
    return changed


HUGE = 1e4  # a "minus infinity" in mask arithmetic; no real score or logit comes near it
MASK_PATH = {"Mul", "Add", "Sub", "Where", "Expand", "Unsqueeze", "Reshape", "Cast", "Slice", "Squeeze", "Concat",
             "Transpose", "Tile", "Min", "Max"}


def _reaches_softmax(tensor: str, consumers: dict[str, list[Any]], hops: int = 8) -> bool:
    """Whether `tensor` flows into a Softmax through mask arithmetic only (broadcasts, casts, adds)."""
    todo, seen = [(tensor, 0)], set()
    while todo:
        name, depth = todo.pop()
        for node in consumers.get(name, []):
            if node.op_type == "Softmax":
                return True
            if node.op_type in MASK_PATH and depth < hops and node.name not in seen:
                seen.add(node.name)
                todo += [(o, depth + 1) for o in node.output]
    return False


def finite_masks(model: Any, value: float) -> list[str]:
    """Float constants holding values ≤ -1e4 (or -inf) that reach a Softmax: those values become `value`."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    changed = []
    for index, init in enumerate(list(model.graph.initializer)):
        if init.data_type not in floats or not _reaches_softmax(init.name, consumers):
            continue  # asked first: reading a weight's values copies it (an LLM's every weight, one by one)
        array = numpy_helper.to_array(init)
        if not array.size or array.min() > -HUGE:
            continue
        finite = np.where(array <= -HUGE, np.asarray(value, array.dtype), array).astype(array.dtype)
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(finite, init.name))
        changed.append(init.name)
    return changed


def qnn_preprocess(model: Any) -> tuple[Any, list[str]]:
    """onnxruntime's QNN pre-processing (Erf → Gelu and other fusions); the fused op types, or nothing."""
    import onnx
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    from qnnbuild.toolchain.graph import onnxfile

    del model.metadata_props[:]  # qnn_preprocess_model raises a TypeError on models that carry metadata
    before = {n.op_type for n in model.graph.node}
    with tempfile.TemporaryDirectory(prefix="qnnbuild-preprocess-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        large = len(onnxfile.save(model, src)) > 1  # the weights went to a data file
        if not qnn_preprocess_model(str(src), str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                                    external_data_location="out.onnx.data"):
            return onnx.load(str(src)), []  # saving spent `model`'s weights when large
        fused = onnx.load(str(dst))
    added = sorted({n.op_type for n in fused.graph.node} - before)
    return fused, [f"fused into {op}" for op in added] or ["qnn_preprocess_model"]


Check = Callable[[Any, dict[str, Any]], None]  # the model after a rewrite, and its entry (graph/rewritecheck.py)


def before_folding(model: Any, check: Check = no_check) -> list[dict[str, Any]]:
    """The graph rewrites, in place, before onnxruntime folds constants at the fixed shapes; each is checked
    (`check`) as it is applied."""
    applied = []
    for name, rewrite in (("constant-to-initializer", constants_to_initializers),
                          ("dequantized-weights", prequant.dequantized_weights),
                          ("clip-computed-bounds", computed_clip_bounds),
                          ("infinite-bound", infinite_bounds),
                          ("reciprocal-to-div", reciprocal_to_div)):
        nodes = rewrite(model)
        if nodes:
            applied.append({"rewrite": name, "nodes": nodes})
            check(model, applied[-1])
    return applied


def after_folding(model: Any, mask_value: float, check: Check = no_check) -> tuple[Any, list[dict[str, Any]]]:
    """On the folded model, where masks are plain constants: finite attention masks (then the NaN guards they
    make needless), constant-index gathers, then onnxruntime's QNN pre-processing where there is an Erf to fuse
    (before folding, the quantizer later fails on what onnxruntime's optimizer makes of the fused ops), then
    normalizations written as basic ops; each checked (`check`) as it is applied."""
    applied: list[dict[str, Any]] = []

    def done(step: dict[str, Any]) -> None:
        applied.append(step)
        check(model, step)

    masks = finite_masks(model, mask_value)
    if masks:
        done({"rewrite": "finite-mask", "nodes": masks, "value": mask_value})
    guards = softmax_nan_guards(model)
    if guards:
        done({"rewrite": "softmax-nan-guard", "nodes": guards})
    if any(n.op_type in ("GatherND", "ScatterND") for n in model.graph.node):
        from qnnbuild.toolchain.graph import constindex, onnxgraph

        indexed = constindex.constant_indices(model, onnxgraph.static_shapes(model))
        if indexed:
            done({"rewrite": "constant-indices", "nodes": indexed})
    if any(n.op_type == "Erf" for n in model.graph.node):
        model, fused = qnn_preprocess(model)
        if fused:
            done({"rewrite": "qnn-preprocess", "nodes": fused})
    opset = normfuse.needs_opset(model)
    if opset:
        from qnnbuild.toolchain.graph import onnxgraph

        onnxgraph.convert_opset(model, opset)
        constants_to_initializers(model)  # the converter writes Reduce axes as Constant nodes
    norms = normfuse.fuse(model)
    if norms:
        done({"rewrite": "fused-norm", "nodes": norms})
    return model, applied


def softmax_nan_guards(model: Any) -> list[str]:
    """Where(IsNaN(p), 0, p) with p a Softmax's output → p. The dynamo exporter guards attention weights so a
    row masked entirely with -inf gives 0 rather than NaN; once masks are finite (`finite-mask`) a Softmax of
    finite scores is never NaN, and the guard is a bool test and a select per score that HTP would run for
    nothing (checked against the model before it at build time: rewrites.json)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constant = {i.name: i for i in graph.initializer}
    changed = []
    for node in list(graph.node):
        if node.op_type != "Where" or len(node.input) != 3:
            continue
        test, zero, kept = (producer.get(node.input[0]), node.input[1], node.input[2])
        if test is None or test.op_type != "IsNaN" or test.input[0] != kept:
            continue
        if getattr(producer.get(kept), "op_type", "") != "Softmax" or not _is_zero(constant.get(zero)):
            continue
        _bypass(graph, node.output[0], kept)
        graph.node.remove(node)
        if not any(test.output[0] in n.input for n in graph.node):
            graph.node.remove(test)
        changed.append(node.name or node.output[0])
    return changed


def _is_zero(init: Any) -> bool:
    from onnx import numpy_helper

    return init is not None and math.prod(init.dims) == 1 and numpy_helper.to_array(init).item() == 0


def _bypass(graph: Any, old: str, new: str) -> None:
    """Every use of tensor `old` reads `new` instead (a graph output keeps its name through an Identity)."""
    from onnx import helper

    if any(o.name == old for o in graph.output):
        graph.node.append(helper.make_node("Identity", [new], [old], name=f"{old}_kept"))
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
