"""A node QNN refuses, described so a person can act: its input shapes at the recipe's fixed shapes, and
whether export has a rewrite for its op (every rewrite is tried on every model; one that exists did not apply
here, and the reason it needs is said). docs/troubleshooting.md ("A node QNN refuses") says what to do next."""

from __future__ import annotations

from typing import Any

# op → (the rewrite export tries, what it needs to apply)
REWRITES = {
    "GatherND": ("constant-indices", "indices that are constants once shapes are fixed"),
    "ScatterND": ("constant-indices", "indices that are constants once shapes are fixed"),
    "Clip": ("clip-computed-bounds", "a computed min or max"),
    "Reciprocal": ("reciprocal-to-div", "a float input"),
    "IsNaN": ("softmax-nan-guard", "to guard a Softmax's output as Where(IsNaN(p), 0, p)"),
    "Erf": ("qnn-preprocess", "to be part of a Gelu written as x·(1 + erf(x/√2))/2"),
    "Pow": ("fused-norm", "to be part of an RMSNorm or LayerNorm written as basic ops"),
    "ReduceMean": ("fused-norm", "to be part of an RMSNorm or LayerNorm written as basic ops"),
    "DequantizeLinear": ("dequantized-weights", "constant integer weights"),
}


def annotate(model: str, refused: list[dict[str, str]]) -> list[dict[str, str]]:
    """`refused` (name, op_type, reason) with `inputs` (each input's shape) and `rewrite` added."""
    import onnx

    from qnnbuild.toolchain.graph.onnxgraph import static_shapes

    graph = onnx.load(model, load_external_data=False)
    try:
        shapes: dict[str, Any] = static_shapes(graph)
    except Exception:  # shape inference refused the graph: the shapes are then not said
        shapes = {}
    nodes = {n.name: n for n in graph.graph.node}
    described = []
    for entry in refused:
        node = nodes.get(entry["name"])
        extra = {}
        if node is not None:
            extra["inputs"] = ", ".join(str(shapes.get(i, "?")) for i in node.input if i) or "none"
        rewrite = REWRITES.get(entry["op_type"])
        extra["rewrite"] = (f"tried {rewrite[0]}, which needs {rewrite[1]}: it did not apply" if rewrite else
                            f"none: qnnbuild has no rewrite for {entry['op_type']}")
        described.append({**entry, **extra})
    return described
