"""QDQ model → QNN `--quantization_overrides` encodings (AIMET legacy 0.6.1 layout).

QNN dequantizes as (q + offset) * scale over the unsigned range [0, 2^bw - 1], so offset = -zero_point for
unsigned types; signed types are first shifted into that range (zero_point - qmin), which is how AIMET
writes symmetric signed weights (offset -2^(bw-1)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BITS = {2: (8, 0), 3: (8, -128), 4: (16, 0), 5: (16, -32768), 6: (32, -(2**31)), 21: (4, 0), 22: (4, -8)}


def _encoding(scale: float, zero_point: int, elem_type: int) -> dict[str, Any]:
    bits, qmin = BITS[elem_type]
    zp_unsigned = zero_point - qmin
    offset = -zp_unsigned
    return {"bitwidth": bits, "dtype": "int", "is_symmetric": str(qmin < 0 and zero_point == 0),
            "min": float(scale * offset), "max": float(scale * (2**bits - 1 + offset)), "scale": float(scale),
            "offset": int(offset)}


def from_qdq(model: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}

    def per_channel(scale_name: str, zp_name: str) -> list[dict[str, Any]]:
        scales = np.atleast_1d(numpy_helper.to_array(inits[scale_name])).astype(np.float64)
        zp_init = inits.get(zp_name)
        elem = zp_init.data_type if zp_init is not None else 2
        zps = np.atleast_1d(numpy_helper.to_array(zp_init)).astype(np.int64) if zp_init is not None else \
            np.zeros_like(scales, dtype=np.int64)
        zps = np.broadcast_to(zps, scales.shape)
        return [_encoding(float(s), int(z), elem) for s, z in zip(scales, zps, strict=True)]

    activations: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        zp = node.input[2] if len(node.input) > 2 else ""
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            activations.setdefault(node.input[0], per_channel(node.input[1], zp))
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.input[0].removesuffix("_quantized")
            params.setdefault(name, per_channel(node.input[1], zp))
    return {"version": "0.6.1", "activation_encodings": dict(sorted(activations.items())),
            "param_encodings": dict(sorted(params.items()))}


def io_quantization(model: Any) -> dict[str, dict[str, Any]]:
    """Scale/offset applied right after each graph input and right before each graph output."""
    encs = from_qdq(model)["activation_encodings"]
    out: dict[str, dict[str, Any]] = {}
    producers = {o: n for n in model.graph.node for o in n.output}
    for value in model.graph.input:
        if value.name in encs:
            out[value.name] = encs[value.name][0]
    for value in model.graph.output:
        node = producers.get(value.name)
        if node is not None and node.op_type == "DequantizeLinear":
            q = producers.get(node.input[0])
            if q is not None and q.input[0] in encs:
                out[value.name] = encs[q.input[0]][0]
    return out
