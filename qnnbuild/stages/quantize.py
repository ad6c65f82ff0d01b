"""`quantize`: fp32 model + calibration samples → QDQ model for QNN, encodings.json, calibration.json.

onnxruntime.quantization with its QNN configuration (get_qnn_qdq_config). Its calibrators keep every
sample's intermediate tensors until the end, so memory grows with the calibration set; we feed them in
strides of at most STRIDE samples (onnxruntime's CalibStridedMinMax hook, which merges ranges or histograms
between strides) from a source that loads one sample at a time.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageKind, StageRun, refs_of
from qnnbuild.toolchain import calibration

STRIDE = 16
HELD_OUT = {"synthetic": {"count": 4, "seed": 2000}}
QTYPES = ["uint8", "uint16", "int8", "int16", "int4", "uint4"]



def _files(params: Params) -> dict[str, str]:
    return {**calibration.files_of(params.get("calibration", {}), "calibration"),
            **calibration.files_of(params.get("auto_precision", {}).get("data", {}), "auto_precision.data")}


def stride_for(count: int) -> int:
    """The largest stride ≤ STRIDE dividing count (onnxruntime requires it to divide the set)."""
    return max(d for d in range(1, min(STRIDE, count) + 1) if count % d == 0)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol, plus the range hooks its strided calibration uses."""

    def __init__(self, samples: calibration.Samples) -> None:
        self.samples = samples
        self.start, self.end, self.next = 0, len(samples), 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.next = start_index, end_index, start_index

    def get_next(self) -> dict[str, Any] | None:
        if self.next >= self.end:
            return None
        self.next += 1
        return self.samples[self.next - 1]

    def rewind(self) -> None:
        self.next = self.start


def _check_loads(path: Path) -> None:
    """onnxruntime's quantizer can write a model that does not load (QNN_NOTES: a renamed shared bias colliding
    with an activation); fail here, naming onnxruntime's reason, rather than at convert."""
    from qnnbuild.toolchain import qnn

    try:
        qnn.cpu_session(str(path))
    except Exception as exc:
        raise StageFailed(f"onnxruntime.quantization wrote a QDQ model that does not load: {str(exc).strip()}"
                          ) from None


def _check_finite(qdq: Any, source: dict[str, str]) -> None:
    """An infinite or NaN constant gets an infinite scale, and everything downstream of it is NaN: say which."""
    import numpy as np
    from onnx import numpy_helper

    bad = sorted({source.get(i.name[: -len("_scale")], i.name[: -len("_scale")]) for i in qdq.graph.initializer
                  if i.name.endswith("_scale") and not np.isfinite(numpy_helper.to_array(i)).all()})
    if bad:
        raise StageFailed(f"cannot quantize tensor(s) holding inf or NaN (their scale is not finite): "
                          f"{', '.join(bad[:10])}" + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))


def _quantizer(ctx: StageRun, samples: calibration.Samples, cache: Path) -> Any:
    """quantize_with(overrides) → the QDQ model path; ranges are calibrated on the first call and read from
    onnxruntime's calibration cache after that (automatic precision quantizes once per step)."""
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    params = ctx.params
    qtypes = {name: getattr(QuantType, "Q" + name[0].upper() + name[1:].replace("int", "Int")) for name in QTYPES}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    model_path = str(ctx.inputs["model"] / "model.onnx")
    out = ctx.out / "model.qdq.onnx"

    def quantize_with(overrides: dict[str, dict[str, Any]]) -> Path:
        ort_overrides = {name: [{"quant_type": qtypes[o["type"]],
                                 **({"symmetric": o["symmetric"]} if "symmetric" in o else {})}]
                         for name, o in overrides.items()}
        config = get_qnn_qdq_config(
            model_path, _Reader(samples), calibrate_method=methods[params["method"]],
            activation_type=qtypes[params["activations"]], weight_type=qtypes[params["weights"]],
            per_channel=params["per_channel"], init_overrides=ort_overrides or None,
            weight_symmetric=params["symmetric"], stride=stride_for(len(samples)))
        try:
            quantize_static(model_path, str(out), config.calibration_data_reader,
                            calibrate_method=config.calibrate_method, quant_format=config.quant_format,
                            activation_type=config.activation_type, weight_type=config.weight_type,
                            op_types_to_quantize=config.op_types_to_quantize,
                            nodes_to_quantize=config.nodes_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
                            per_channel=config.per_channel, reduce_range=config.reduce_range,
                            use_external_data_format=config.use_external_data_format,
                            calibration_providers=config.calibration_providers,
                            extra_options=config.extra_options, calibration_cache_path=cache)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise StageFailed(f"onnxruntime.quantization failed: {exc}") from None
        return out

    return quantize_with


def _overrides(ctx: StageRun, model: Any, source: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The recipe's overrides, by the model's own tensor names (they may be written with source names)."""
    tensors = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output} | {
        i.name for i in model.graph.input}
    short = {old: new for new, old in source.items()}
    unknown = sorted(n for n in ctx.params["overrides"] if n not in tensors and n not in short)
    if unknown:
        raise StageFailed(f"overrides name tensors the model does not have: {', '.join(unknown)}")
    return {(name if name in tensors else short[name]): o for name, o in ctx.params["overrides"].items()}


def _auto_precision(ctx: StageRun, model: Any, source: dict[str, str], quantize_with: Any,
                    base: dict[str, dict[str, Any]]) -> None:
    from qnnbuild.toolchain import precision

    spec = ctx.params["auto_precision"]
    held_out = calibration.samples_for(spec.get("data", HELD_OUT), ctx.files, ctx.inputs["model"], "auto_precision")
    found = precision.search(model, held_out, quantize_with, base, spec["min_sqnr_db"], spec.get("max_promoted", 16),
                             ctx.say)
    named = {"promoted": [source.get(t, t) for t in found["promoted"]], "sqnr_db": found["sqnr_db"],
             "steps": found["steps"], "samples": len(held_out),
             "overrides": {source.get(t, t): o for t, o in sorted(found["overrides"].items())}}
    (ctx.out / "precision.json").write_text(json.dumps(named, indent=1) + "\n")


def run(ctx: StageRun) -> None:
    import onnx

    from qnnbuild.toolchain import encodings, onnxgraph

    params = ctx.params
    cal = params["calibration"]
    samples = calibration.samples_for(cal, ctx.files, ctx.inputs["model"], "calibration")
    model = onnx.load(str(ctx.inputs["model"] / "model.onnx"))
    source = onnxgraph.source_names(ctx.inputs["model"])
    base = _overrides(ctx, model, source)
    stride = stride_for(len(samples))
    ctx.say(f"calibrating on {len(samples)} {next(iter(cal))} samples, {params['method']}, strides of {stride}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qnnbuild-calibration-") as tmp:
        quantize_with = _quantizer(ctx, samples, Path(tmp) / "ranges.json")
        if params.get("auto_precision"):
            _auto_precision(ctx, model, source, quantize_with, base)
        else:
            quantize_with(base)
    out = ctx.out / "model.qdq.onnx"
    seconds = time.monotonic() - started
    _check_loads(out)
    qdq = onnx.load(str(out))
    _check_finite(qdq, source)
    encs = {section: {source.get(k, k): v for k, v in table.items()} if isinstance(table, dict) else table
            for section, table in encodings.from_qdq(qdq).items()}
    if (ctx.inputs["model"] / "rewrites.json").is_file():  # carried forward for convert's op report
        shutil.copyfile(ctx.inputs["model"] / "rewrites.json", ctx.out / "rewrites.json")
    (ctx.out / "encodings.json").write_text(json.dumps(encs, indent=1, sort_keys=True) + "\n")
    ranges = {name: {"min": e[0]["min"], "max": e[0]["max"], "bitwidth": e[0]["bitwidth"]}
              for name, e in encs["activation_encodings"].items()}
    stats = {"samples": len(samples), "source": next(iter(cal)), "method": params["method"], "stride": stride,
             "activation_ranges": ranges}
    (ctx.out / "calibration.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ctx.say(f"quantized in {seconds:.2f} s; {len(ranges)} activation and {len(encs['param_encodings'])} "
            f"parameter encodings; peak RSS {peak_mb:.0f} MB")


KIND = StageKind(
    name="quantize",
    version=3,
    summary="fp32 model + calibration data → QDQ model for QNN, QNN encodings, calibration statistics",
    params={
        "model": {"type": "string", "description": "the export stage to quantize"},
        "calibration": {**calibration.SCHEMA, "default": {"synthetic": {"count": 16, "seed": 0}}},
        "activations": {"enum": ["uint8", "uint16"], "default": "uint8"},
        "weights": {"enum": ["uint8", "int8", "int4"], "default": "uint8"},
        "per_channel": {"type": "boolean", "default": False},
        "symmetric": {"type": "boolean", "default": False, "description": "symmetric weight quantization"},
        "method": {"enum": ["minmax", "entropy", "percentile"], "default": "minmax"},
        "overrides": {"type": "object", "default": {},
                      "description": "tensor name → {type, symmetric}: mixed precision per tensor",
                      "additionalProperties": {"type": "object", "additionalProperties": False,
                                               "required": ["type"],
                                               "properties": {"type": {"enum": QTYPES},
                                                              "symmetric": {"type": "boolean"}}}},
        "auto_precision": {
            "type": "object", "additionalProperties": False, "required": ["min_sqnr_db"],
            "description": "promote the worst layers (weights and activations) to 16 bits until the QDQ "
                           "model's output SQNR against fp32 reaches min_sqnr_db; writes precision.json",
            "properties": {"min_sqnr_db": {"type": "number"},
                           "max_promoted": {"type": "integer", "minimum": 0, "default": 16},
                           "data": {**calibration.SCHEMA, "default": HELD_OUT,
                                    "description": "held-out samples (default: 4 synthetic, seed 2000)"}}},
    },
    required=("model",),
    refs=refs_of("model"),
    files=_files,
    tools=("onnx", "onnxruntime"),
    run=run,
)
