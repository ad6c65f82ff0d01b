"""Where quantization loses accuracy: every quantized activation and weight of a QDQ model against the fp32
model, on the CPU. Shared by the layer-error stage (a report) and quantize's automatic mixed precision (which
promotes the worst tensors to 16 bits).

Error accumulates along the graph, so a layer is ranked by the SQNR it *loses*: its output's SQNR against the
worst SQNR of the activations it reads.
"""

from __future__ import annotations

import math
from typing import Any


def activation_sqnr(fp32: Any, qdq: Any, samples: Any) -> tuple[dict[str, float], dict[str, list[str]]]:
    """SQNR (dB) of every quantized activation over the samples, and the activations each one's layer reads."""
    _, producers = pair_activations(fp32, qdq)
    return sqnr_of([activation_values(fp32, qdq, samples, 0, len(samples))]), producers


def activation_values(fp32: Any, qdq: Any, samples: Any, start: int, stop: int,
                      tick: Any = lambda: None) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Every quantized activation of samples [start, stop), fp32 and dequantized: one shard's share (the
    layer-error stage spreads the samples over processes; toolchain/runtime/shards)."""
    from qnnbuild.toolchain.runtime import qnn

    pairs, _ = pair_activations(fp32, qdq)
    fp32_names, qdq_names = list(pairs), [pairs[t] for t in pairs]
    ref_sess = qnn.cpu_session(_with_outputs(fp32, fp32_names))
    qdq_sess = qnn.cpu_session(_with_outputs(qdq, qdq_names))
    refs: dict[str, list[Any]] = {t: [] for t in pairs}
    gots: dict[str, list[Any]] = {t: [] for t in pairs}
    for i in range(start, stop):
        feed = samples[i]
        for t, r, g in zip(fp32_names, ref_sess.run(fp32_names, feed), qdq_sess.run(qdq_names, feed), strict=True):
            refs[t].append(r)
            gots[t].append(g)
        tick()
    return refs, gots


def sqnr_of(shards: list[tuple[dict[str, list[Any]], dict[str, list[Any]]]]) -> dict[str, float]:
    """SQNR per activation over the shards' values joined in sample order: the figures one pass computes."""
    import numpy as np

    from qnnbuild.toolchain.data import metrics

    tensors = shards[0][0]
    return {t: metrics.sqnr_db(np.stack([v for refs, _ in shards for v in refs[t]]),
                               np.stack([v for _, gots in shards for v in gots[t]])) for t in tensors}


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

    from qnnbuild.toolchain.data import metrics
    from qnnbuild.toolchain.quant.encodings import BITS

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


