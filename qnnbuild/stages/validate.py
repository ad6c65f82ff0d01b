"""`validate`: the built context on the HTP emulator against the fp32 model on the CPU, over held-out inputs.

Reports per output SQNR, cosine, max abs error and (classifiers) top-1/top-5 agreement, and fails the build
when the worst output misses a threshold of the recipe. The samples default to a seed the calibration
default does not use, so validation is not scored on the data the ranges were fitted to.
"""

from __future__ import annotations

import json
import time
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageKind, StageRun, refs_of
from qnnbuild.toolchain import calibration

HELD_OUT = {"synthetic": {"count": 8, "seed": 1000}}



def _files(params: Params) -> dict[str, str]:
    return calibration.files_of(params.get("data", {}), "data")


def verdicts(metrics: dict[str, dict[str, Any]], params: Params) -> list[str]:
    """Threshold misses, each with the measured and the required figure."""
    misses = []
    for name, fig in metrics.items():
        if params.get("min_sqnr_db") is not None and fig["sqnr_db"] < params["min_sqnr_db"]:
            misses.append(f"{name}: SQNR {fig['sqnr_db']:.2f} dB < required {params['min_sqnr_db']} dB")
        if params.get("min_cosine") is not None and fig["cosine"] < params["min_cosine"]:
            misses.append(f"{name}: cosine {fig['cosine']:.4f} < required {params['min_cosine']}")
        need = params.get("min_top1_agreement")
        if need is not None and "top1_agreement" in fig and fig["top1_agreement"] < need:
            misses.append(f"{name}: top-1 agreement {fig['top1_agreement']:.1%} < required {need:.1%}")
    return misses


def run(ctx: StageRun) -> None:
    from qnnbuild.toolchain import metrics, qnn

    target = ctx.require_target()
    samples = calibration.samples_for(ctx.params["data"], ctx.files, ctx.inputs["reference"])
    reference = qnn.cpu_session(str(ctx.inputs["reference"] / "model.onnx"))
    npu = qnn.deliverable_session(ctx.inputs["context"])
    names = [o.name for o in reference.get_outputs()]
    refs: dict[str, list[Any]] = {n: [] for n in names}
    gots: dict[str, list[Any]] = {n: [] for n in names}
    started = time.monotonic()
    for i in range(len(samples)):
        feed = samples[i]
        for name, r, g in zip(names, reference.run(names, feed), npu.run(names, feed), strict=True):
            refs[name].append(r)
            gots[name].append(g)
    per_sample = (time.monotonic() - started) / max(1, len(samples))
    figures = {n: metrics.compare(refs[n], gots[n]) for n in names}
    thresholds = {k: ctx.params.get(k) for k in ("min_sqnr_db", "min_cosine", "min_top1_agreement")}
    report = {"target": target["name"], "samples": len(samples), "source": next(iter(ctx.params["data"])),
              "outputs": figures, "thresholds": {k: v for k, v in thresholds.items() if v is not None}}
    misses = verdicts(figures, ctx.params)
    report["passed"] = not misses
    (ctx.out / "metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for name, fig in figures.items():
        extra = f", top-1 {fig['top1_agreement']:.0%}, top-5 {fig['top5_agreement']:.0%}" if "top1_agreement" in \
            fig else ""
        ctx.say(f"{name}: SQNR {fig['sqnr_db']:.2f} dB, cosine {fig['cosine']:.5f}, max abs error "
                f"{fig['max_abs_error']:.4g}{extra} ({len(samples)} samples, {per_sample:.2f} s/sample, emulator)")
    if misses:
        raise StageFailed(f"accuracy on {target['name']} below the recipe's thresholds: " + "; ".join(misses))


KIND = StageKind(
    name="validate",
    version=2,
    summary="context on the HTP emulator vs the fp32 model on the CPU: SQNR, cosine, top-k; fails below thresholds",
    params={
        "context": {"type": "string", "description": "the context-binary stage"},
        "reference": {"type": "string", "description": "the export stage (fp32 model)"},
        "data": {**calibration.SCHEMA, "default": HELD_OUT, "description": "held-out inputs (default: 8 "
                 "synthetic samples with seed 1000)"},
        "min_sqnr_db": {"type": "number"},
        "min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
        "min_top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
    },
    required=("context", "reference"),
    refs=refs_of("context", "reference"),
    files=_files,
    tools=("onnxruntime", "onnxruntime-qnn", "numpy"),
    run=run,
)
