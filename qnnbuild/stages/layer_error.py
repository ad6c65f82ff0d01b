"""`layer-error`: where quantization loses accuracy, layer by layer, on the CPU.

Every activation the quantizer quantized is compared between the fp32 model and the QDQ model (after its
Quantize→Dequantize pair). Error accumulates along the graph, so a layer is ranked by the SQNR it *loses*:
its output's SQNR against the worst SQNR of the activations it reads. The layers that lose most are the
ones worth raising to 16 bits; the stage writes them as ready-to-paste quantize `overrides`. Weights are
scored too (fp32 against dequantized weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qnnbuild.stages.base import Params, StageKind, StageRun, refs_of
from qnnbuild.toolchain.data import calibration

HELD_OUT = {"synthetic": {"count": 4, "seed": 1000}}



def _files(params: Params) -> dict[str, str]:
    return calibration.files_of(params.get("data", {}), "data")


def values_range(spec: dict[str, Any], start: int, stop: int) -> Any:
    """Samples [start, stop)'s activations, fp32 and dequantized: one shard, in its own process."""
    import onnx

    from qnnbuild.toolchain.quant import sensitivity
    from qnnbuild.toolchain.runtime import shards

    inputs = {k: Path(v) for k, v in spec["inputs"].items()}
    samples = calibration.samples_for(spec["data"], {k: Path(v) for k, v in spec["files"].items()},
                                      inputs["reference"])
    return sensitivity.activation_values(onnx.load(str(inputs["reference"] / "model.onnx")),
                                         onnx.load(str(inputs["model"] / "model.qdq.onnx")), samples, start, stop,
                                         shards.tick)


def run(ctx: StageRun) -> None:
    import onnx

    from qnnbuild.toolchain.graph import onnxgraph
    from qnnbuild.toolchain.quant import sensitivity
    from qnnbuild.toolchain.runtime import shards

    fp32 = onnx.load(str(ctx.inputs["reference"] / "model.onnx"))
    qdq = onnx.load(str(ctx.inputs["model"] / "model.qdq.onnx"))
    samples = calibration.samples_for(ctx.params["data"], ctx.files, ctx.inputs["reference"])
    spec = {"data": ctx.params["data"], "files": {k: str(v) for k, v in ctx.files.items()},
            "inputs": {k: str(v) for k, v in ctx.inputs.items()}}
    values, _ = shards.run(values_range, spec, len(samples), min(ctx.workers(), len(samples)), ctx.progress,
                           ctx.spread)
    sqnr, (_, producers) = sensitivity.sqnr_of(values), sensitivity.pair_activations(fp32, qdq)
    source = onnxgraph.source_names(ctx.inputs["reference"])  # report the user's tensor names
    layers = sensitivity.rank({source.get(t, t): v for t, v in sqnr.items()},
                              {source.get(t, t): [source.get(i, i) for i in ins] for t, ins in producers.items()})
    weights = [{**w, "tensor": source.get(w["tensor"], w["tensor"])} for w in sensitivity.weight_errors(fp32, qdq)]
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
        "workers": {"type": "integer", "minimum": 1, "description": "processes (or, with --scheduler, Dask "
                    "tasks) the samples are spread over (default: the run's -j, or the cluster's threads); the "
                    "report is the same for any number, and changing it rebuilds nothing"},
    },
    unkeyed=("workers",),
    spreads=True,
    required=("model", "reference"),
    refs=refs_of("model", "reference"),
    files=_files,
    tools=("onnx", "onnxruntime", "numpy"),
    run=run,
)
