"""QNN's quantization rules for HTP, applied to a model's overrides before quantizing, each one listed.

What onnxruntime's `get_qnn_qdq_config` already does is listed too, so `rules.json` says everything that was
decided for QNN and not by the recipe:
- `matmul-act-act-int16` (applied here): with 16-bit activations, the second input of a MatMul of two
  activations (attention's Q·Kᵀ, attention·V) gets an int16 symmetric encoding. Otherwise the QNN EP inserts a
  Convert that requantizes it to 8 bits (QNN_NOTES: a Q·Kᵀ alone, CPU 84 dB, HTP 41 dB; int16 symmetric: 75 dB);
- `matmul-weight-per-tensor`, `layernorm-weights-8bit`, `sigmoid-tanh-fixed-scale` (get_qnn_qdq_config):
  a MatMul's static weight per tensor at the weight type (QNN has no per-channel MatMul), LayerNorm
  weights at 8 bits under 16-bit activations, fixed 16-bit output encodings for Sigmoid and Tanh;
- `int4-only-conv-matmul-weights` (applied here): with 4-bit weights, only the weights of Conv, MatMul and Gemm
  stay 4-bit (the ops QNN's HTP takes INT4 weights for); every other constant (LayerNorm's gamma and beta, an
  embedding table, a Linear's bias added by an Add) gets uint8 — QNN refuses a LayerNorm with int4 weights
  (op validation error 3110), and a bias at 4 bits would lose what the 4-bit weights keep;
- `no-symmetric-conv-relu-clip` (refusal): HTP computes a symmetric activation encoding on a Conv, Relu or Clip
  output wrong (QNN_NOTES: Conv+Clip, CPU 44.9 dB, HTP −0.1 dB), so an override or encodings entry asking for
  one is refused by tensor name.
"""

from __future__ import annotations

from typing import Any

from qnnbuild.errors import StageFailed

SIXTEEN = ("uint16", "int16")
NO_SYMMETRIC_OUTPUT = ("Conv", "ConvTranspose", "Relu", "Clip")
INT16_SYMMETRIC = {"type": "int16", "symmetric": True}
FOUR = ("int4", "uint4")
INT4_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}  # op → index of the weight QNN takes at 4 bits


def _is_symmetric(override: Any) -> bool:
    entries = override if isinstance(override, list) else [override]
    return any(isinstance(e, dict) and (e.get("symmetric") or e.get("is_symmetric") in (True, "True")) for e in
               entries)


def refuse_symmetric_outputs(model: Any, overrides: dict[str, Any], source: dict[str, str]) -> None:
    """An override (or encodings entry) making a Conv/Relu/Clip output symmetric is refused, by tensor name."""
    producer = {o: n for n in model.graph.node for o in n.output}
    bad = [f"{source.get(t, t)} ({producer[t].op_type} {producer[t].name})" for t, o in sorted(overrides.items())
           if t in producer and producer[t].op_type in NO_SYMMETRIC_OUTPUT and _is_symmetric(o)]
    if bad:
        raise StageFailed("a symmetric activation encoding on a Conv, Relu or Clip output is computed wrong by HTP: "
                          + ", ".join(bad[:10]) + "; drop `symmetric` for these tensors")


def _eight_bit_constants(model: Any, consts: set[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """Constants that 4-bit weights must not reach: all but the weights of Conv/MatMul/Gemm (see the rule)."""
    four = {n.input[i] for n in model.graph.node for op, i in INT4_WEIGHTED.items() if n.op_type == op
            and len(n.input) > i}
    skip = {n.input[2] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm") and len(n.input) > 2}
    return {t: {"type": "uint8"} for n in model.graph.node for t in n.input
            if t in consts and t not in four | skip and t not in overrides}


def apply(model: Any, activations: str, overrides: dict[str, Any],
          weights: str = "uint8") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The overrides with QNN's rules added (the recipe's own entries win), and the rules as applied:
    [{"rule", "by", "tensors"}] with the model's tensor names."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    floats = {i.name for i in model.graph.initializer if i.data_type in (1, 10, 16)}  # float, float16, bfloat16
    eight = _eight_bit_constants(model, floats, overrides) if weights in FOUR else {}
    applied = [{"rule": "int4-only-conv-matmul-weights", "by": "qnnbuild", "tensors": sorted(eight)}] if eight else []
    if activations not in SIXTEEN:
        return {**eight, **overrides}, applied
    added: dict[str, Any] = {}
    listed: dict[str, list[str]] = {"matmul-weight-per-tensor": [], "layernorm-weights-8bit": [],
                                    "sigmoid-tanh-fixed-scale": []}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2:
            a, b = node.input
            if a not in consts and b not in consts and b not in overrides:
                added[b] = INT16_SYMMETRIC
            elif b in consts:
                listed["matmul-weight-per-tensor"].append(b)
        elif node.op_type == "LayerNormalization":
            listed["layernorm-weights-8bit"] += [i for i in node.input[1:] if i in consts]
        elif node.op_type in ("Sigmoid", "Tanh"):
            listed["sigmoid-tanh-fixed-scale"] += list(node.output)
    applied += [{"rule": "matmul-act-act-int16", "by": "qnnbuild", "tensors": sorted(added)}] if added else []
    applied += [{"rule": rule, "by": "get_qnn_qdq_config", "tensors": sorted(set(tensors))}
                for rule, tensors in listed.items() if tensors]
    return {**added, **eight, **overrides}, applied


def keep_8bit(model: Any, patterns: list[str], source: dict[str, str]) -> dict[str, Any]:
    """`keep_8bit: [patterns]`: the weights of Conv/MatMul/Gemm nodes whose name or output (in the model's or the
    source's spelling) matches a pattern (a regular expression, searched) stay 8-bit when the weights are 4-bit —
    an LLM's LM head, sensitive projections. Exported weights often carry no module path (`onnx::MatMul_557`);
    their node's output does (`/lm_head/MatMul_output_0`). A pattern matching nothing is refused by name."""
    import re

    consts = {i.name for i in model.graph.initializer}
    found: dict[str, Any] = {}
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [n for n in model.graph.node if n.op_type in INT4_WEIGHTED and len(n.input) > 1
                and n.input[1] in consts and any(regex.search(x) for x in
                                                  (n.name, n.output[0], source.get(n.output[0], "")))]
        if not hits:
            raise StageFailed(f"keep_8bit: {pattern!r} matches no Conv/MatMul/Gemm with a constant weight")
        found.update({n.input[1]: {"type": "int8", "symmetric": True} for n in hits})
    return found
