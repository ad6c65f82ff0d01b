"""Block-wise 4-bit MatMul weights in the form QNN's HTP fuses: LPBQ (low-power block quantization).

onnxruntime's quantizer writes 4-bit weights per channel: one scale per output column of a [K, N] MatMul weight.
Block-wise weights give every `block_size` rows of a column their own scale, so one outlier spoils only its block.
QNN stores such a scale as a per-column float times a small per-block integer; onnxruntime's QNN EP recognises
the ONNX form of that and fuses it into one LPBQ MatMul:

    block_ints (uint8 [K/B, N]) → DequantizeLinear(axis 1, per-column float scale) → block scales [K/B, N]
    weight (int4 [K, N]) → DequantizeLinear(block scales, axis 0, block_size B) → MatMul

Measured on the HTP emulator (onnxruntime-qnn 2.7.0, SM8650 and SM8750): with block integers in 1..16 the fused
MatMul matches the QDQ model on the CPU (35-37 dB apart, correlation 0.9999); with integers up to 32 or more
it compiles, passes op validation and returns unrelated numbers (correlation < 0.1). The integers are 4-bit, as
AIMET's LPBQ writes them (compressed bit width 4), so LEVELS is 16 and the check below refuses anything else.
The weight is re-quantized from the fp32 model's own values (onnxruntime's per-channel integers are not reused),
deterministically, so an LLM's prefill and decode graphs still get identical weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

INT4 = 22
LEVELS = 16  # per-block integer scales 1..LEVELS: 4 bits, what QNN's LPBQ reads correctly (module docstring)


def _block_encoding(weight: Any, block: int) -> tuple[Any, Any, Any]:
    """weight [K, N] → (int4 values [K, N], block integers uint8 [K/B, N], per-column float scales [N]);
    each block's scale is its integer times its column's float, at least the block's absmax / 7."""
    k, n = weight.shape
    absmax = np.abs(weight.reshape(k // block, block, n)).max(axis=1).astype(np.float64)
    needed = np.maximum(absmax / 7.0, np.finfo(np.float32).tiny)
    column = (needed.max(axis=0) / LEVELS).astype(np.float32)
    ints = np.clip(np.ceil(needed / column - 1e-6), 1, LEVELS).astype(np.uint8)
    scales = ints.astype(np.float32) * column
    values = np.clip(np.round(weight / np.repeat(scales, block, axis=0)), -8, 7).astype(np.int8)
    return values, ints, column


def _weight_dq(node: Any, producer: dict[str, Any], inits: dict[str, Any]) -> Any | None:
    """The DequantizeLinear giving this MatMul a per-channel 4-bit [K, N] constant weight, if it has one."""
    dq = producer.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    weight, scale = inits[dq.input[0]], inits.get(dq.input[1])
    if weight.data_type != INT4 or len(weight.dims) != 2 or scale is None:
        return None
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    per_tensor = list(scale.dims) in ([], [1])
    return dq if per_tensor or (list(scale.dims) == [weight.dims[1]] and axis in (1, -1)) else None


def _int4(name: str, values: Any) -> Any:
    """An INT4 initializer from int8 values in -8..7 (two to a byte, low nibble first, as ONNX packs them)."""
    from onnx import TensorProto, helper

    flat = values.astype(np.int8).flatten()
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    nibbles = (flat & 0xF).astype(np.uint8)
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, TensorProto.INT4, list(values.shape), packed.tobytes(), raw=True)


def _nodes_for(name: str, out: str, fp32: Any, block: int) -> tuple[list[Any], list[Any]]:
    """The LPBQ form of weight `name` (float values `fp32`) ending in tensor `out`: nodes and initializers."""
    from onnx import helper, numpy_helper

    values, ints, column = _block_encoding(fp32, block)
    k, n = fp32.shape
    prefix = f"{name}_lpbq"
    inits = [_int4(f"{prefix}_quantized", values),
             numpy_helper.from_array(ints, f"{prefix}_block_ints"),
             numpy_helper.from_array(column, f"{prefix}_column_scale"),
             numpy_helper.from_array(np.zeros(n, np.uint8), f"{prefix}_column_zero_point"),
             _int4(f"{prefix}_zero_point", np.zeros((k // block, n), np.int8))]
    nodes = [helper.make_node("DequantizeLinear", [f"{prefix}_block_ints", f"{prefix}_column_scale",
                                                   f"{prefix}_column_zero_point"], [f"{prefix}_scale"],
                              name=f"{prefix}_scale_DequantizeLinear", axis=1),
             helper.make_node("DequantizeLinear", [f"{prefix}_quantized", f"{prefix}_scale", f"{prefix}_zero_point"],
                              [out], name=f"{prefix}_DequantizeLinear", axis=0, block_size=block)]
    return nodes, inits


def convert(qdq: Any, fp32_weights: dict[str, Any], block: int | None) -> tuple[list[str], list[str]]:
    """Rewrite `qdq` in place: each 4-bit MatMul weight with K a multiple of `block` becomes LPBQ; `block` None
    is one block per column (per channel: onnxruntime's quantizer leaves MatMul weights per tensor, and a plain
    per-channel 4-bit MatMul weight ran 2.5 dB worse on the HTP emulator than on the CPU; as one LPBQ block it
    matches). Returns (converted, left as they were because K is not a multiple of the block), by weight name."""
    graph = qdq.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    converted: list[str] = []
    kept: list[str] = []
    dropped: set[str] = set()
    for node in list(graph.node):
        dq = _weight_dq(node, producer, inits)
        name = dq.input[0].removesuffix("_quantized") if dq is not None else ""
        if dq is None or name not in fp32_weights or name in converted:
            continue
        weight = np.asarray(fp32_weights[name], np.float32)
        if block is not None and weight.shape[0] % block:
            kept.append(name)
            continue
        nodes, new_inits = _nodes_for(name, dq.output[0], weight, block or weight.shape[0])
        position = list(graph.node).index(dq)
        graph.node.remove(dq)
        for offset, new in enumerate(nodes):
            graph.node.insert(position + offset, new)
        graph.initializer.extend(new_inits)
        dropped.update(i for i in dq.input if i)
        converted.append(name)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name in dropped and i.name not in used]:
        graph.initializer.remove(init)
    return converted, kept


def convert_file(qdq_path: Any, fp32_path: Any, block: int | None) -> tuple[list[str], list[str]]:
    """convert() on files: the QDQ model is rewritten where it lies."""
    import onnx
    from onnx import numpy_helper

    from qnnbuild.common import memory
    from qnnbuild.toolchain.graph import onnxfile

    fp32 = onnx.load(str(fp32_path))
    weights = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer if len(i.dims) == 2}
    del fp32  # the arrays are copies: one fp32 copy of the weights at a time
    memory.trim()
    external = onnxfile.is_external(Path(qdq_path))
    qdq = onnx.load(str(qdq_path))
    found = convert(qdq, weights, block)
    del weights
    onnxfile.save(qdq, Path(qdq_path), external=external)
    return found


def block_encodings(ints: Any, column: Any, block: int) -> list[dict[str, Any]]:
    """encodings.json's entry for an LPBQ weight: per column, its float scale and its blocks' integers."""
    return [{"bitwidth": 4, "dtype": "int", "enc_type": "LPBQ", "is_symmetric": "True", "offset": -8,
             "scale": float(c), "block_size": block, "per_block_int_scale": [int(v) for v in ints[:, j]]}
            for j, c in enumerate(column)]
