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
from qnnbuild.stages.base import Params, StageKind, StageRun, read_json, refs_of
from qnnbuild.stages.quantize.techniques import HELD_OUT, TECHNIQUES, checks, quantize_with_techniques, techniques_of
from qnnbuild.toolchain.data import calibration
from qnnbuild.toolchain.llm import layout
from qnnbuild.toolchain.quant import qnnrules, quantizer
from qnnbuild.toolchain.quant.spec import PRESETS, QTYPES, expand

HUGE_RANGE = 1e4




def _files(params: Params) -> dict[str, str]:
    return {**({"encodings": params["encodings"]} if "encodings" in params else {}),
            **calibration.files_of(params.get("calibration", {}), "calibration"),
            **calibration.files_of(params.get("auto_precision", {}).get("data", {}), "auto_precision.data")}


def _check_loads(path: Path) -> None:
    """onnxruntime's quantizer can write a model that does not load (QNN_NOTES: a renamed shared bias colliding
    with an activation); fail here, naming onnxruntime's reason, rather than at convert."""
    from qnnbuild.toolchain.runtime import qnn

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


def _overrides(ctx: StageRun, model: Any, source: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The recipe's overrides, by the model's own tensor names (they may be written with source names)."""
    from qnnbuild.toolchain.graph import onnxgraph

    to_model, unknown = onnxgraph.model_names(model, source, ctx.params["overrides"])
    if unknown:
        raise StageFailed(f"overrides name tensors the model does not have: {', '.join(unknown)}")
    kept = qnnrules.keep_8bit(model, ctx.params["keep_8bit"], source)
    return {**kept, **{to_model[name]: o for name, o in ctx.params["overrides"].items()}}


def _prequantized(ctx: StageRun) -> list[dict[str, Any]]:
    """The weights that reached export pre-quantized (rewrites.json's `dequantized-weights`): quantized again
    here by the recipe's rules from their dequantized float values, their source encodings not kept."""
    applied = read_json(ctx.inputs["model"], "rewrites.json") or []
    weights = sorted(w for step in applied if step.get("rewrite") == "dequantized-weights" for w in step["nodes"])
    if not weights:
        return []
    ctx.say(f"{len(weights)} weight(s) arrived pre-quantized (integers dequantized in the graph): quantized again "
            "from their dequantized float values by this recipe's rules; the source's encodings are not kept")
    return [{"rule": "pre-quantized-weights", "by": "qnnbuild", "tensors": weights,
             "note": "re-quantized from the dequantized float weights; the source's encodings are not kept"}]


def _llm(ctx: StageRun) -> None:
    """An LLM's prefill and decode graphs, calibrated by running them on text (stages/quantize/llm.py)."""
    from qnnbuild.stages.quantize.llm import quantize_llm
    from qnnbuild.toolchain.graph import onnxgraph

    quantize_llm(ctx.inputs["model"], ctx.out, ctx.params, ctx.files,
                 lambda model, folder: _overrides(ctx, model, onnxgraph.source_names(folder)), ctx.say)
    ctx.carry("model")


def run(ctx: StageRun) -> None:
    import onnx

    from qnnbuild.toolchain.graph import onnxgraph
    from qnnbuild.toolchain.quant import encodings

    if layout.is_llm(ctx.inputs["model"]):
        _llm(ctx)
        return
    params = ctx.params
    cal = params["calibration"]
    samples = ctx.watched(calibration.samples_for(cal, ctx.files, ctx.inputs["model"], "calibration"), "calibrating")
    model = onnx.load(str(ctx.inputs["model"] / "model.onnx"))
    source = onnxgraph.source_names(ctx.inputs["model"])
    base = _overrides(ctx, model, source)
    if "encodings" in ctx.files:
        base = {**encodings.exact_overrides(ctx.files["encodings"], model, source, base), **base}
    qnnrules.refuse_symmetric_outputs(model, base, source)
    rules: list[dict[str, Any]] = []
    if not {"adaround", "seqmse"} & set(techniques_of(params)):  # AIMET's HTP configuration decides those
        base, rules = qnnrules.apply(model, params["activations"], base, params["weights"])
    rules += _prequantized(ctx)
    for rule in rules:
        ctx.say(f"QNN rule {rule['rule']} ({rule['by']}): {len(rule['tensors'])} tensor(s)")
    stride = quantizer.stride_for(len(samples))
    ctx.say(f"calibrating on {len(samples)} {next(iter(cal))} samples, {params['method']}, strides of {stride}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qnnbuild-calibration-") as tmp:
        technique = quantize_with_techniques(ctx, model, samples, base, source, Path(tmp))
    out = ctx.out / "model.qdq.onnx"
    seconds = time.monotonic() - started
    _check_loads(out)
    qdq = onnx.load(str(out))
    _check_finite(qdq, source)
    encs = encodings.named(qdq, source)
    if (ctx.inputs["model"] / "rewrites.json").is_file():  # carried forward for convert's op report
        shutil.copyfile(ctx.inputs["model"] / "rewrites.json", ctx.out / "rewrites.json")
    ctx.carry("model")
    encodings.write(ctx.out / "encodings.json", encs)
    named_rules = [{**r, "tensors": [source.get(t, t) for t in r["tensors"]]} for r in rules]
    (ctx.out / "rules.json").write_text(json.dumps(named_rules, indent=1) + "\n")
    ranges = {name: {"min": e[0]["min"], "max": e[0]["max"], "bitwidth": e[0]["bitwidth"]}
              for name, e in encs["activation_encodings"].items()}
    huge = sorted(str(n) for n, r in ranges.items() if max(abs(r["min"]), abs(r["max"])) >= HUGE_RANGE)
    if huge:  # one such value and every other value of the tensor quantizes to the same level
        ctx.say(f"warning: ranges of ±{HUGE_RANGE:g} or more (an attention mask's 'minus infinity'?): "
                + ", ".join(huge[:10]))
    stats = {"samples": len(samples), "source": next(iter(cal)), "method": params["method"], "stride": stride,
             "activation_ranges": ranges, "huge_ranges": huge, **technique}
    (ctx.out / "calibration.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ctx.say(f"quantized in {seconds:.2f} s; {len(ranges)} activation and {len(encs['param_encodings'])} "
            f"parameter encodings; peak RSS {peak_mb:.0f} MB")


KIND = StageKind(
    name="quantize",
    version=7,
    summary="fp32 model + calibration data → QDQ model for QNN, QNN encodings, calibration statistics",
    params={
        "model": {"type": "string", "description": "the export stage to quantize"},
        "calibration": {**calibration.SCHEMA, "default": {"synthetic": {"count": 16, "seed": 0}}},
        "activations": {"enum": ["uint8", "uint16"], "default": "uint8"},
        "weights": {"enum": ["uint8", "int8", "int4", "int16"], "default": "uint8"},
        "precision": {"enum": list(PRESETS), "description": "Qualcomm AI Hub's names for weight/activation bits: "
                      "sets activations, weights, per_channel and symmetric (explicit ones win)"},
        "per_channel": {"type": "boolean", "default": False},
        "symmetric": {"type": "boolean", "default": False, "description": "symmetric weight quantization"},
        "method": {"enum": ["minmax", "entropy", "percentile"], "default": "minmax"},
        "block_size": {"enum": [16, 32, 64, 128], "description": "4-bit MatMul weights block-wise: a scale per "
                       "block_size rows of each column, in QNN's LPBQ form (a per-column float times a 4-bit "
                       "integer per block) that the HTP fuses; weights whose rows are not a multiple stay per tensor. "
                       "Without it, per_channel 4-bit MatMul weights get one block per column"},
        "keep_8bit": {"type": "array", "items": {"type": "string"}, "default": [], "description": "regular "
                      "expressions: Conv/MatMul/Gemm nodes whose name or output matches keep 8-bit weights (int8 "
                      "symmetric) under 4-bit weights, e.g. [lm_head] for an LLM's LM head"},
        "overrides": {"type": "object", "default": {},
                      "description": "tensor name → {type, symmetric}: mixed precision per tensor",
                      "additionalProperties": {"type": "object", "additionalProperties": False,
                                               "required": ["type"],
                                               "properties": {"type": {"enum": QTYPES},
                                                              "symmetric": {"type": "boolean"}}}},
        "encodings": {"type": "string", "description": "an AIMET/QNN encodings file (0.6.1 or 1.0.0, what QNN "
                      "takes as --quantization_overrides): its tensors get exactly its scale, offset and bit width; "
                      "the others are calibrated as usual"},
        "technique": {"description": "AIMET techniques (the aimet extra): cle (cross-layer equalization, then "
                      "onnxruntime's quantizer), adaround, seqmse (AIMET's simulation); a name or a list",
                      "oneOf": [{"enum": TECHNIQUES}, {"type": "array", "items": {"enum": TECHNIQUES},
                                                       "uniqueItems": True}]},
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
    checks=checks,
    expand=expand,
    files=_files,
    tools=lambda params: ("onnx", "onnxruntime", *(("aimet-onnx", "torch") if params.get("technique") else ())),
    run=run,
)
