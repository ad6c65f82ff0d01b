"""ONNX graph surgery that several stages need: safe names, fixed shapes, I/O descriptions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SAFE = re.compile(r"[^A-Za-z0-9_.-]")
DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
          10: "float16", 11: "float64", 21: "uint4", 22: "int4"}


def dtype_name(elem_type: int) -> str:
    return DTYPES.get(elem_type, f"onnx-type-{elem_type}")


def graph_inputs(model: Any) -> list[Any]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def io_spec(model: Any) -> dict[str, list[dict[str, Any]]]:
    def describe(value: Any) -> dict[str, Any]:
        t = value.type.tensor_type
        return {"name": value.name, "dtype": dtype_name(t.elem_type),
                "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]}

    return {"inputs": [describe(v) for v in graph_inputs(model)],
            "outputs": [describe(v) for v in model.graph.output]}


def rename_tensors(model: Any) -> dict[str, str]:
    """Give every tensor a name downstream tools accept (no ':', ';', '/'...); returns old → new."""
    graph = model.graph
    names: list[str] = [i.name for i in graph.input] + [i.name for i in graph.initializer]
    for node in graph.node:
        names += list(node.input) + list(node.output)
    mapping: dict[str, str] = {}
    taken = {n for n in names if not SAFE.search(n)}
    for name in dict.fromkeys(names):
        if not name or not SAFE.search(name):
            continue
        base = SAFE.sub("_", name).strip("_") or "t"
        new, n = base, 1
        while new in taken:
            n += 1
            new = f"{base}_{n}"
        taken.add(new)
        mapping[name] = new
    _rename(mapping, [graph])
    return mapping


def _rename(mapping: dict[str, str], graphs: list[Any]) -> None:
    """Apply old → new tensor names to every node and value of `graphs`."""
    def fix(seq: Any) -> None:
        for i, n in enumerate(seq):
            if n in mapping:
                seq[i] = mapping[n]

    for g in graphs:
        for node in g.node:
            fix(node.input)
            fix(node.output)
        for coll in (g.input, g.output, g.value_info, g.initializer):
            for item in coll:
                item.name = mapping.get(item.name, item.name)


def _graphs(graph: Any) -> list[Any]:
    """`graph` and every subgraph under it (If/Loop/Scan bodies): tensor names are unique across all."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subs:
                found += _graphs(sub)
    return found


def all_nodes(graph: Any) -> list[Any]:
    """The nodes of `graph` and of every subgraph under it."""
    return [n for g in _graphs(graph) for n in g.node]


def short_names(model: Any) -> dict[str, str]:
    """Rename every tensor but the graph's inputs and outputs to `t` + a fixed-width number; returns new → old.

    Why: onnxruntime's quantizer names a copy of a shared initializer `<name><N>` and checks only initializer
    names, so with TF-style names a copy can become an existing activation (`conv1d_25` + `2` = `conv1d_252`)
    and the QDQ model it writes is invalid. Names of one length cannot be turned into one another by a suffix.
    Numbering follows node order and initializers are written sorted by their new names, so two conversions
    that differ only in the names a converter made up give equal bytes.
    """
    graphs = _graphs(model.graph)
    keep = {v.name for v in [*model.graph.input, *model.graph.output]}
    names: list[str] = []
    for g in graphs:  # by first use in node order, not by the initializer list, whose order follows the names
        for node in g.node:
            names += [*node.input, *node.output]
        names += [i.name for i in g.initializer] + [i.name for i in g.input] + [o.name for o in g.output]
    ordered = [n for n in dict.fromkeys(names) if n and n not in keep]
    prefix = "t"  # never a name the source model has (a model exported by qnnbuild before has t000...)
    while any(re.fullmatch(re.escape(prefix) + r"\d+", n) for n in [*names, *keep]):
        prefix += "t"
    width = len(str(len(ordered)))
    mapping = {old: f"{prefix}{i:0{width}d}" for i, old in enumerate(ordered)}
    _rename(mapping, graphs)
    for g in graphs:  # equal graphs give equal bytes, whatever names (and so order) the converter chose
        g.initializer.sort(key=lambda t: t.name)  # in place: a copy would hold the weights twice
    return {new: old for old, new in mapping.items()}


def source_names(export_folder: Path) -> dict[str, str]:
    """short tensor name → the source model's name, from an export's names.json (empty for older exports)."""
    try:
        return dict(json.loads((export_folder / "names.json").read_text()))
    except OSError:
        return {}


def model_names(model: Any, source: dict[str, str], names: Any) -> tuple[dict[str, str], list[str]]:
    """Tensor names a user wrote (the model's own, or the source model's from names.json) → the model's names,
    and the sorted names the model does not have."""
    tensors = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output} | {
        i.name for i in model.graph.input}
    short = {old: new for new, old in source.items()}
    unknown = sorted(n for n in names if n not in tensors and n not in short)
    # a source name first: short names never look like a source's names (short_names), so this is exact
    return {n: short.get(n, n) for n in names if n not in unknown}, unknown


def name_nodes(model: Any) -> None:
    """Every node gets a unique name (onnxruntime.quantization refuses unnamed nodes)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = SAFE.sub("_", node.name) if node.name else f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        node.name = name


def fix_input_shapes(model: Any, shapes: dict[str, list[int]]) -> list[str]:
    """Set declared input shapes; returns problems (unknown names, dynamic dims left)."""
    problems = []
    inputs = {i.name: i for i in graph_inputs(model)}
    for name in shapes:
        if name not in inputs:
            problems.append(f"inputs: the model has no input {name!r} (it has: {', '.join(inputs)})")
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if name in shapes:
            want = shapes[name]
            if len(want) != len(dims):
                problems.append(f"inputs.{name}: the model's input has rank {len(dims)}, the recipe gives {len(want)}")
                continue
            for dim, size in zip(dims, want, strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
        dynamic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value") or d.dim_value <= 0]
        if dynamic:
            problems.append(f"input {name!r} has dynamic dimensions ({', '.join(dynamic)}); "
                            f"give its shape under inputs: {{{name}: [...]}}")
    return problems


def infer_shapes(model: Any) -> Any:
    """Every tensor typed, at the fixed shapes. onnx's own inference stops at contrib ops (the Gelu that
    qnn_preprocess_model fuses is com.microsoft), leaving everything after the first one untyped; the
    quantizer calibrates only typed tensors, then fails on the ranges it needs (`Only an existing tensor can
    be modified`). onnxruntime's symbolic inference knows the contrib ops; it runs only where needed."""
    import onnx

    del model.graph.value_info[:]
    return _typed_or_symbolic(onnx.shape_inference.infer_shapes(model, strict_mode=True))


def infer_shapes_file(source: Path, dest: Path) -> Any:
    """infer_shapes from file to file, then the result loaded: onnx reads and writes the files itself, so the
    caller need not hold the model (an LLM's weights) while the inferred copy is made. `source` must have no
    value_info."""
    import onnx

    onnx.shape_inference.infer_shapes_path(str(source), str(dest), strict_mode=True)
    return _typed_or_symbolic(onnx.load(str(dest)))


def _typed_or_symbolic(model: Any) -> Any:
    typed = {v.name for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    if all(o in typed for n in model.graph.node for o in n.output if o):
        return model
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False)


def _skeleton(model: Any, keep: int = 0) -> Any:
    """A copy of `model` whose initializers over `keep` bytes carry their name, type and dims but no values:
    what onnx's converter and shape inference need of the weights, without a copy of an LLM's."""
    import onnx
    from onnx import helper

    graph = model.graph
    inits = [i if i.ByteSize() <= keep else onnx.TensorProto(name=i.name, data_type=i.data_type, dims=i.dims)
             for i in graph.initializer]
    return helper.make_model(helper.make_graph(list(graph.node), graph.name, list(graph.input), list(graph.output),
                                               inits),
                             opset_imports=list(model.opset_import), ir_version=model.ir_version)


def convert_opset(model: Any, opset: int) -> None:
    """Move `model` to `opset` in place with onnx's version converter, run on a copy without the weights' bytes:
    the converter works on a serialized copy, and for an LLM that copy (and the one it returns) would be the
    stage's memory peak. Adapters rewrite nodes and add small constants; the weights stay where they are."""
    import onnx

    graph = model.graph
    converted = onnx.version_converter.convert_version(_skeleton(model), opset)
    del graph.node[:]
    graph.node.extend(converted.graph.node)
    known = {i.name for i in graph.initializer}
    graph.initializer.extend(i for i in converted.graph.initializer if i.name not in known)
    del model.opset_import[:]
    model.opset_import.extend(converted.opset_import)
    model.ir_version = converted.ir_version


def static_shapes(model: Any) -> dict[str, list[int]]:
    """Every tensor's shape where shape inference knows it whole, inferred on a copy holding only the small
    initializers' values (shapes and indices; the weights' bytes stay out, an LLM's included)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_skeleton(model, keep=1 << 16), data_prop=True)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes
