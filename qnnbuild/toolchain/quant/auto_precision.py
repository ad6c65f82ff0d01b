"""Automatic mixed precision: promote the worst layers from 8 to 16 bits until the QDQ model reaches a SQNR.

A step quantizes (with the ranges calibrated once, from onnxruntime's calibration cache), measures every
quantized activation against fp32 on held-out samples, and promotes the layers that *lose* the most SQNR
(see sensitivity.rank), re-ranked after each step because promotions interact; each step doubles the
number of promoted layers (one outlier layer is found in one step; MobileNetV2's small errors need dozens).
A layer is promoted as a unit: its weights (16-bit symmetric: with outlier channels, a16w8 is no better than
a8w8, a16w16 is), its input and its output, together with a Relu/Clip fused onto it, so that a promotion does
not split a fused Conv+Relu and add the requantization error it was meant to remove.

Confirm the result on HTP (the validate stage): HTP computes a symmetric activation encoding on a Conv, Relu or
Clip output wrong, and the QNN EP requantizes the second input of a MatMul of two 16-bit activations to 8 bits.
Promotions here are asymmetric uint16 activations; 16-bit activations into MobileNetV2's classifier are right on
HTP (a16w8 stays within 1 dB of the CPU: tests/test_mobilenet.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed

ACTIVATION_16 = {"type": "uint16"}
WEIGHT_16 = {"type": "int16", "symmetric": True}
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op → index of its weight input
FUSED = {"Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "Sigmoid"}


def layer_unit(model: Any, tensor: str) -> dict[str, dict[str, Any]]:
    """The overrides that promote the layer producing `tensor`: its weights and its output, with the
    activation fused after it (or the weighted op before it, when `tensor` is that activation's output)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    inits = {i.name for i in model.graph.initializer}
    node = producer.get(tensor)
    nodes = [node] if node is not None else []
    if node is not None and node.op_type in FUSED and node.input[0] in producer:
        nodes.insert(0, producer[node.input[0]])
    elif node is not None and node.op_type in WEIGHTED:
        after = consumers.get(tensor, [])
        if len(after) == 1 and after[0].op_type in FUSED:
            nodes.append(after[0])
    unit: dict[str, dict[str, Any]] = {}
    for n in nodes:
        weight = WEIGHTED.get(n.op_type)
        if weight is not None and len(n.input) > weight and n.input[weight] in inits:
            unit[n.input[weight]] = WEIGHT_16
            unit[n.input[0]] = ACTIVATION_16  # the layer's input with its weight: no 16-bit weight on 8-bit data
        unit[n.output[0]] = ACTIVATION_16
    return unit or {tensor: ACTIVATION_16}


def output_sqnr(sqnr: dict[str, float], outputs: list[str]) -> float:
    """The worst graph output's SQNR (the figure a user states)."""
    found = [sqnr[o] for o in outputs if o in sqnr]
    return min(found) if found else math.inf


def search(fp32: Any, samples: Any, quantize_with: Callable[[dict[str, dict[str, Any]]], Path],
           base: dict[str, dict[str, Any]], target_db: float, max_promoted: int,
           say: Callable[[str], None],
           progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, Any]:
    """Promote until the worst output reaches `target_db`; the QDQ model of the last step is left where
    `quantize_with` wrote it. Raises StageFailed with the best figure reached when it cannot. `progress` hears
    (steps done, the most there can be: 0, 1, 2, 4, ... layers up to max_promoted)."""
    import math

    import onnx

    from qnnbuild.toolchain.quant import sensitivity

    outputs = [o.name for o in fp32.graph.output]
    promoted: list[str] = []
    extra: dict[str, dict[str, Any]] = {}
    steps: list[list[float]] = []
    while True:
        qdq = onnx.load(str(quantize_with({**extra, **base})))
        sqnr, producers = sensitivity.activation_sqnr(fp32, qdq, samples)
        db = output_sqnr(sqnr, outputs)
        steps.append([len(promoted), round(db, 3)])
        progress(len(steps), 2 + math.ceil(math.log2(max_promoted)) if max_promoted else 1)
        say(f"auto precision: {len(promoted)} layer(s) at 16 bits → output SQNR {db:.2f} dB (goal {target_db} dB)")
        if db >= target_db:
            return {"promoted": promoted, "sqnr_db": round(db, 3), "steps": steps, "overrides": extra}
        ranked = [r for r in sensitivity.rank(sqnr, producers) if r["tensor"] not in extra]
        if len(promoted) >= max_promoted or not ranked:
            best = max(steps, key=lambda s: s[1])
            why = f"max_promoted {max_promoted} reached" if ranked else "every quantized tensor is at 16 bits"
            raise StageFailed(f"auto precision could not reach {target_db} dB output SQNR ({why}): the best was "
                              f"{best[1]:.2f} dB with {int(best[0])} layer(s) at 16 bits")
        # the step doubles what is at 16 bits (1, 2, 4, ... layers): a goal many small errors stand between is
        # reached in log(n) quantizations, at most twice the layers a one-by-one search would promote
        for row in ranked[: min(max(1, len(promoted)), max_promoted - len(promoted))]:
            promoted.append(row["tensor"])
            extra.update(layer_unit(fp32, row["tensor"]))
