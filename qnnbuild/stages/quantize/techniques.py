"""How quantize quantizes once the overrides are known: onnxruntime's quantizer (after AIMET's cross-layer
equalization when asked), AIMET's simulation for AdaRound / SeqMSE, or the automatic precision search; and
the settings AIMET's HTP configuration decides, refused by name when a recipe sets them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageRun
from qnnbuild.toolchain.data import calibration
from qnnbuild.toolchain.quant import quantizer
from qnnbuild.toolchain.quant.spec import QuantSpec, expand

TECHNIQUES = ["cle", "adaround", "seqmse"]
HELD_OUT = {"synthetic": {"count": 4, "seed": 2000}}


def techniques_of(params: Params) -> list[str]:
    technique = params.get("technique", [])
    return [technique] if isinstance(technique, str) else list(technique) if isinstance(technique, list) else []


def _auto_precision(ctx: StageRun, model: Any, source: dict[str, str], quantize_with: Any,
                    base: dict[str, dict[str, Any]]) -> None:
    from qnnbuild.toolchain.quant import auto_precision

    spec = ctx.params["auto_precision"]
    held_out = calibration.samples_for(spec.get("data", HELD_OUT), ctx.files, ctx.inputs["model"], "auto_precision")
    found = auto_precision.search(model, held_out, quantize_with, base, spec["min_sqnr_db"],
                                  spec.get("max_promoted", 16), ctx.say,
                                  lambda done, total: ctx.progress(done, total, "steps", "auto precision"))
    named = {"promoted": [source.get(t, t) for t in found["promoted"]], "sqnr_db": found["sqnr_db"],
             "steps": found["steps"], "samples": len(held_out),
             "overrides": {source.get(t, t): o for t, o in sorted(found["overrides"].items())}}
    (ctx.out / "precision.json").write_text(json.dumps(named, indent=1) + "\n")


def quantize_with_techniques(ctx: StageRun, model: Any, samples: calibration.Source, base: dict[str, Any],
                     source: dict[str, str], tmp: Path) -> dict[str, Any]:
    """Quantize into ctx.out: onnxruntime's quantizer (after AIMET's CLE, when asked), or AIMET's simulation
    for AdaRound / SeqMSE. Returns what calibration.json records of the technique."""
    import onnx

    from qnnbuild.toolchain.quant import aimet

    params = ctx.params
    techniques = techniques_of(params)
    record: dict[str, Any] = {"technique": techniques} if techniques else {}
    model_path = ctx.inputs["model"] / "model.onnx"  # quantizer.make quantizes a private link of it
    if "cle" in techniques:
        ctx.progress(phase="AIMET cross-layer equalization")
        started = time.monotonic()
        model, fidelity = aimet.equalize(model, samples)
        aimet.check_equalized(fidelity, model)
        ctx.say(f"cross-layer equalization in {time.monotonic() - started:.2f} s; the equalized model is "
                f"{fidelity:.1f} dB from the original")
        record["cle_fidelity_db"] = round(fidelity, 2)
        model_path = tmp / "equalized.onnx"
        onnx.save(model, str(model_path))
    if {"adaround", "seqmse"} & set(techniques):
        if base or params.get("auto_precision"):
            raise StageFailed("technique adaround/seqmse quantizes through AIMET's simulation: it cannot be "
                              "combined with overrides, encodings or auto_precision")
        simulated = aimet.simulate(model, samples, QuantSpec.of(params), techniques, ctx.progress)
        onnx.save(simulated, str(ctx.out / "model.qdq.onnx"))
        return record
    quantize_with = quantizer.make(model_path, ctx.out / "model.qdq.onnx", samples, QuantSpec.of(params),
                                   tmp / "ranges.json",
                                   ctx.say)
    if params.get("auto_precision"):
        _auto_precision(ctx, model, source, quantize_with, base)
    else:
        quantize_with(base)
    return record


AIMET_FIXED = {"per_channel": True, "symmetric": True, "method": "minmax"}


def checks(params: Params) -> list[tuple[tuple[str | int, ...], str]]:
    """AdaRound/SeqMSE quantize with AIMET's HTP configuration (per-channel symmetric weights, min-max ranges):
    a setting that contradicts it is refused by name rather than silently dropped. Judged on the spelled-out
    parameters, so a preset (`precision: w4a16`) and what it stands for are one answer."""
    used = set(techniques_of(params)) & {"adaround", "seqmse"}
    spelled = expand(params)
    contrary = [name for name, value in AIMET_FIXED.items() if used and spelled.get(name, value) != value]
    found: list[tuple[tuple[str | int, ...], str]] = [
        ((name,), f"technique {'/'.join(sorted(used))} quantizes with AIMET's HTP configuration (per-channel "
                  f"symmetric weights, min-max ranges); {name}: {json.dumps(spelled[name])} contradicts it")
        for name in contrary]
    if used and "block_size" in params:
        found.append((("block_size",), f"technique {'/'.join(sorted(used))} quantizes with AIMET's HTP "
                                       "configuration, which has no block-wise weights; drop block_size"))
    if "block_size" in params and expand(params).get("weights") != "int4":
        found.append((("block_size",), "block_size makes 4-bit weights block-wise: it needs weights: int4 "
                                       "(precision: w4a16)"))
    return found
