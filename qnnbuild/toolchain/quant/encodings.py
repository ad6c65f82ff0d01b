"""QDQ model → QNN `--quantization_overrides` encodings (AIMET legacy 0.6.1 layout).

QNN dequantizes as (q + offset) * scale over the unsigned range [0, 2^bw - 1], so offset = -zero_point for
unsigned types; signed types are first shifted into that range (zero_point - qmin), which is how AIMET
writes symmetric signed weights (offset -2^(bw-1)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qnnbuild.errors import StageFailed

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
    outputs = {o.name for o in model.graph.output}

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
    producer = {o: n for n in model.graph.node for o in n.output}
    block_scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 1
                    and n.input[1] in producer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        if node.output[0] in block_scales:  # an LPBQ weight's block scales: part of the weight's encoding
            continue
        if node.input[1] in producer and node.input[0] in inits:
            name = node.input[0].removesuffix("_quantized").removesuffix("_lpbq")
            params[name] = _lpbq(producer[node.input[1]], node, inits)
            continue
        zp = node.input[2] if len(node.input) > 2 else ""
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            # a graph output's last Quantize reads `<output>_QuantizeLinear_Input`: name the output itself
            name = node.input[0].removesuffix("_QuantizeLinear_Input") if node.input[0].removesuffix(
                "_QuantizeLinear_Input") in outputs else node.input[0]
            activations.setdefault(name, per_channel(node.input[1], zp))
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.input[0].removesuffix("_quantized")
            params.setdefault(name, per_channel(node.input[1], zp))
    return {"version": "0.6.1", "activation_encodings": dict(sorted(activations.items())),
            "param_encodings": dict(sorted(params.items()))}


def _lpbq(scale_dq: Any, weight_dq: Any, inits: dict[str, Any]) -> list[dict[str, Any]]:
    """An LPBQ weight's encoding (toolchain/quant/blockwise.py): per column, its float scale and block integers."""
    from onnx import numpy_helper

    from qnnbuild.toolchain.quant import blockwise

    block = next(a.i for a in weight_dq.attribute if a.name == "block_size")
    return blockwise.block_encodings(numpy_helper.to_array(inits[scale_dq.input[0]]),
                                     numpy_helper.to_array(inits[scale_dq.input[1]]), block)


def io_quantization(model: Any) -> dict[str, dict[str, Any]]:
    """Scale/offset applied right after each graph input and right before each graph output. Reads only those
    few scales (scalars, stored in the graph), so the model may be loaded without its weights: an LLM's every
    per-block weight encoding is not built to answer this."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    quantizers: dict[str, Any] = {}  # the activation each Quantize reads → that Quantize
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 1 and node.input[0] not in inits:
            quantizers.setdefault(node.input[0], node)
    ends = {}
    for value in model.graph.output:
        dq = producers.get(value.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 1:
            ends[value.name] = q
    found = {v.name: quantizers[v.name] for v in model.graph.input if v.name in quantizers} | ends

    def first_channel(node: Any) -> dict[str, Any]:
        scale = float(np.atleast_1d(numpy_helper.to_array(inits[node.input[1]])).flat[0])
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        point = int(np.atleast_1d(numpy_helper.to_array(zp)).flat[0]) if zp is not None else 0
        return _encoding(scale, point, zp.data_type if zp is not None else 2)

    return {name: first_channel(node) for name, node in found.items()}


SIGNED = {8: "int8", 16: "int16", 4: "int4"}
UNSIGNED = {8: "uint8", 16: "uint16", 4: "uint4"}


def read(path: Any) -> dict[str, list[dict[str, Any]]]:
    """An AIMET/QNN encodings file (legacy 0.6.1, entries a dict or a list of per-channel dicts, or 1.0.0)
    → tensor name → one {bitwidth, scale, offset, is_symmetric} per channel."""
    import json

    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or not ({"activation_encodings", "param_encodings"} & set(raw)):
        raise ValueError("not an encodings file: no activation_encodings or param_encodings")
    found: dict[str, list[dict[str, Any]]] = {}
    for section in ("activation_encodings", "param_encodings"):
        table = raw.get(section, {})
        if isinstance(table, list):  # 1.0.0: [{name, bw, scale: [...], offset: [...], is_sym, enc_type}]
            for entry in table:
                scales, offsets = entry["scale"], entry["offset"]
                found[entry["name"]] = [{"bitwidth": int(entry["bw"]), "scale": float(s), "offset": int(o),
                                         "is_symmetric": bool(entry.get("is_sym", False))}
                                        for s, o in zip(scales, offsets * len(scales) if len(offsets) == 1
                                                        else offsets, strict=True)]
        else:
            for name, value in table.items():
                found[name] = [{"bitwidth": int(e["bitwidth"]), "scale": float(e["scale"]),
                                "offset": int(e["offset"]),
                                "is_symmetric": str(e.get("is_symmetric", "False")).lower() == "true"}
                               for e in (value if isinstance(value, list) else [value])]
    return found


def to_overrides(encodings: dict[str, list[dict[str, Any]]], shapes: dict[str, list[int]]) -> dict[str, Any]:
    """onnxruntime TensorQuantOverrides that fix each tensor's scale and zero point exactly. QNN's offset is
    over the unsigned range, so zero_point = -offset; a symmetric signed encoding (offset -2^(bw-1)) maps
    back to the signed type with zero point 0, the form onnxruntime writes for symmetric weights.
    `shapes`: initializer shapes, for the per-channel axis (0; 1 for ConvTranspose-style [in, out] weights is
    not guessed: the channel count must match dimension 0)."""
    import numpy as np

    overrides: dict[str, Any] = {}
    for name, channels in encodings.items():
        if all(e["bitwidth"] == 32 for e in channels):
            continue  # a bias: its scale is the input's times the weight's, which the file also fixes
        entries = []
        for e in channels:
            bits = e["bitwidth"]
            if bits not in UNSIGNED:
                raise ValueError(f"{name}: bit width {bits} is not supported (4, 8 or 16; 32 for biases)")
            signed = e["is_symmetric"] and e["offset"] == -(2 ** (bits - 1))
            qtype = SIGNED[bits] if signed else UNSIGNED[bits]
            zero_point = 0 if signed else -e["offset"]
            if not 0 <= zero_point < 2**bits and not signed:
                raise ValueError(f"{name}: offset {e['offset']} is outside the {bits}-bit range")
            dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                     "int4": np.int8, "uint4": np.uint8}[qtype]
            entry: dict[str, Any] = {"type": qtype, "scale": np.array(e["scale"], np.float32),
                                     "zero_point": np.array(zero_point, dtype)}
            entries.append(entry)
        if len(entries) > 1:
            shape = shapes.get(name)
            if shape is None or shape[0] != len(entries):
                raise ValueError(f"{name}: {len(entries)} per-channel encodings, but the tensor has shape {shape}")
            entries[0]["axis"] = 0
        overrides[name] = entries
    return overrides


def exact_overrides(path: Path, model: Any, source: dict[str, str], base: dict[str, Any]) -> dict[str, Any]:
    """The encodings file's tensors (named as in the source model or the exported one), each fixed to the
    file's scale, zero point and bit width; `base`: the recipe's own overrides, which may not name them too."""
    from onnx import numpy_helper

    try:
        table = read(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageFailed(f"{path}: cannot read the encodings: {exc}") from None
    from qnnbuild.toolchain.graph import onnxgraph

    to_model, unknown = onnxgraph.model_names(model, source, table)
    if unknown:
        raise StageFailed(f"{path}: the model has no tensor named {', '.join(unknown[:10])}"
                          + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    both = sorted(n for n, m in to_model.items() if m in base)
    if both:
        raise StageFailed(f"{', '.join(both)}: set both by `overrides:` and by {path.name}; keep one")
    shapes = {n: list(numpy_helper.to_array(i).shape) for i in model.graph.initializer
              for n in (i.name, source.get(i.name, i.name))}
    try:  # errors name tensors as the file does
        return {to_model[n]: o for n, o in to_overrides(table, shapes).items()}
    except ValueError as exc:
        raise StageFailed(f"{path}: {exc}") from None


def named(qdq: Any, source: dict[str, str]) -> dict[str, Any]:
    """from_qdq(qdq) with tensors by the source model's names (what reports and `overrides:` speak)."""
    return {section: {source.get(k, k): v for k, v in table.items()} if isinstance(table, dict) else table
            for section, table in from_qdq(qdq).items()}


def write(path: Path, encs: dict[str, Any]) -> None:
    """encodings.json with one line per tensor, its encodings compact on it. Indented throughout, json's
    pure-Python encoder took 2.0 s of a 5 s MobileNetV2 quantize to write 7 MB (per-channel lists of dicts);
    a line per tensor goes through the C encoder and still reads and diffs tensor by tensor."""
    import json

    def section(body: Any, last: bool) -> list[str]:
        end = "" if last else ","
        if not isinstance(body[1], dict) or not body[1]:
            return [f" {json.dumps(body[0])}: {json.dumps(body[1], sort_keys=True)}{end}"]
        items = sorted(body[1].items())
        rows = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}{'' if i == len(items) - 1 else ','}"
                for i, (k, v) in enumerate(items)]
        return [f" {json.dumps(body[0])}: {{", *rows, f" }}{end}"]

    parts = sorted(encs.items())
    lines = ["{", *(line for i, part in enumerate(parts) for line in section(part, i == len(parts) - 1)), "}"]
    path.write_text("\n".join(lines) + "\n")

