"""`layer-error`: where quantization loses accuracy, layer by layer, on the CPU.

Every activation the quantizer quantized is compared between the fp32 model and the QDQ model (after its
Quantize→Dequantize pair). Error accumulates along the graph, so a layer is ranked by the SQNR it *loses*:
its output's SQNR against the worst SQNR of the activations it reads. The layers that lose most are the
ones worth raising to 16 bits; the stage writes them as ready-to-paste quantize `overrides`. Weights are
scored too (fp32 against dequantized weights).
"""

from __future__ import annotations

import json
import math
from typing import Any

from qnnbuild.stages.base import Params, StageKind, StageRun, refs_of
from qnnbuild.toolchain import calibration

HELD_OUT = {"synthetic": {"count": 4, "seed": 1000}}



def _files(params: Params) -> dict[str, str]:
    return calibration.files_of(params.get("data", {}), "data")


def _with_outputs(model: Any, names: list[str]) -> bytes:
    """The model serialized with `names` added as graph outputs (types left to onnxruntime)."""
    from onnx import helper

    copy = type(model)()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return bytes(copy.SerializeToString())


def rank(sqnr: dict[str, float], producers: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Layers by SQNR lost: output SQNR against the worst SQNR among the activations the layer reads."""
    rows = []
    for tensor, value in sqnr.items():
        upstream = [sqnr[i] for i in producers.get(tensor, []) if i in sqnr]
        before = min(upstream) if upstream else math.inf
        lost = (before - value) if math.isfinite(before) else 0.0
        rows.append({"tensor": tensor, "sqnr_db": round(value, 3), "input_sqnr_db": round(before, 3)
                     if math.isfinite(before) else None, "lost_db": round(max(lost, 0.0), 3)})
    return sorted(rows, key=lambda r: (-r["lost_db"], r["sqnr_db"], r["tensor"]))


def pair_activations(fp32: Any, qdq: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """fp32 tensor → its dequantized twin in the QDQ model, and each such tensor → the ones its layer reads."""
    fp32_tensors = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    consumers: dict[str, Any] = {}
    for node in qdq.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    pairs: dict[str, str] = {}
    key_of_q_input: dict[str, str] = {}  # the float tensor a Quantize reads → that fp32 tensor
    for node in qdq.graph.node:
        dq = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"] \
            if node.op_type == "QuantizeLinear" else []
        if not dq:
            continue
        # inner tensors keep their names; a graph output's name moves to the final Dequantize
        key = node.input[0] if node.input[0] in fp32_tensors else dq[0].output[0]
        if key in fp32_tensors and key not in pairs:
            pairs[key] = dq[0].output[0]
            key_of_q_input[node.input[0]] = key
    twin_of = {dq: t for t, dq in pairs.items()}
    producers: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        reads = [twin_of[i] for i in node.input if i in twin_of]
        for out in node.output:
            if out in key_of_q_input:
                producers[key_of_q_input[out]] = reads
    return pairs, producers


def weight_errors(fp32: Any, qdq: Any) -> list[dict[str, Any]]:
    """SQNR of every quantized weight: fp32 initializer against its dequantized value."""
    import numpy as np
    from onnx import numpy_helper

    from qnnbuild.toolchain import metrics
    from qnnbuild.toolchain.encodings import BITS

    inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    qinits = {i.name: i for i in qdq.graph.initializer}
    rows = []
    for node in qdq.graph.node:
        name = node.input[0].removesuffix("_quantized")
        if node.op_type != "DequantizeLinear" or node.input[0] not in qinits or name not in inits:
            continue
        q = numpy_helper.to_array(qinits[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(qinits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(qinits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else np.zeros(1)
        if scale.ndim == 1 and q.ndim > 1:  # per channel: broadcast along the quantization axis
            shape = [1] * q.ndim
            shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.ndim else zp
        rows.append({"tensor": name, "sqnr_db": round(metrics.sqnr_db(inits[name], (q - zp) * scale), 3),
                     "bits": BITS.get(qinits[node.input[0]].data_type, (None,))[0]})
    return sorted(rows, key=lambda w: (w["sqnr_db"], w["tensor"]))


def run(ctx: StageRun) -> None:
    import numpy as np
    import onnx

    from qnnbuild.toolchain import metrics, onnxgraph, qnn

    fp32 = onnx.load(str(ctx.inputs["reference"] / "model.onnx"))
    qdq = onnx.load(str(ctx.inputs["model"] / "model.qdq.onnx"))
    pairs, producers = pair_activations(fp32, qdq)
    samples = calibration.samples_for(ctx.params["data"], ctx.files, ctx.inputs["reference"])
    fp32_names, qdq_names = list(pairs), [pairs[t] for t in pairs]
    ref_sess = qnn.cpu_session(_with_outputs(fp32, fp32_names))
    qdq_sess = qnn.cpu_session(_with_outputs(qdq, qdq_names))
    refs: dict[str, list[Any]] = {t: [] for t in pairs}
    gots: dict[str, list[Any]] = {t: [] for t in pairs}
    for i in range(len(samples)):
        feed = samples[i]
        for t, r, g in zip(fp32_names, ref_sess.run(fp32_names, feed), qdq_sess.run(qdq_names, feed), strict=True):
            refs[t].append(r)
            gots[t].append(g)
    source = onnxgraph.source_names(ctx.inputs["reference"])  # report the user's tensor names
    layers = rank({source.get(t, t): metrics.sqnr_db(np.stack(refs[t]), np.stack(gots[t])) for t in pairs},
                  {source.get(t, t): [source.get(i, i) for i in ins] for t, ins in producers.items()})
    weights = [{**w, "tensor": source.get(w["tensor"], w["tensor"])} for w in weight_errors(fp32, qdq)]
    worst = [r for r in layers if r["lost_db"] >= ctx.params["suggest_above_db"]][: ctx.params["suggest"]]
    report = {"samples": len(samples), "activations": layers, "weights": weights,
              "suggested_overrides": {r["tensor"]: {"type": "uint16"} for r in worst}}
    (ctx.out / "layers.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for row in layers[:5]:
        ctx.say(f"{row['tensor']}: SQNR {row['sqnr_db']:.1f} dB, lost {row['lost_db']:.1f} dB")


KIND = StageKind(
    name="layer-error",
    version=2,
    summary="per-layer quantization error (fp32 vs QDQ on the CPU), worst layers, 16-bit suggestions",
    params={
        "model": {"type": "string", "description": "the quantize stage"},
        "reference": {"type": "string", "description": "the export stage (fp32 model)"},
        "data": {**calibration.SCHEMA, "default": HELD_OUT},
        "suggest": {"type": "integer", "minimum": 0, "default": 3,
                    "description": "how many layers to suggest raising to 16 bits"},
        "suggest_above_db": {"type": "number", "default": 3.0,
                             "description": "only suggest layers that lose at least this much SQNR"},
    },
    required=("model", "reference"),
    refs=refs_of("model", "reference"),
    files=_files,
    tools=("onnx", "onnxruntime", "numpy"),
    run=run,
)
