"""`validate`: the built context on the HTP emulator against the fp32 model on the CPU, over held-out inputs.

Reports per output SQNR, cosine, max abs error and (classifiers) top-1/top-5 agreement, and fails the build
when the worst output misses a threshold of the recipe. The samples default to a seed the calibration
default does not use, so validation is not scored on the data the ranges were fitted to.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageKind, StageRun, read_json, refs_of
from qnnbuild.toolchain.data import calibration
from qnnbuild.toolchain.llm import layout

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


def collect_range(spec: dict[str, Any], start: int, stop: int) -> tuple[dict[str, dict[str, list[Any]]],
                                                                        dict[str, float]]:
    """Every output of samples [start, stop) from each model: fp32 and (given a quantize stage) QDQ on
    onnxruntime's CPU, the context on the HTP emulator, and each model's busy seconds. Each session is created
    once and runs sample after sample (batch-1 graphs: nothing to batch). Runs in a shard's process (toolchain/
    shards.py), so it takes plain paths and the data spec, and loads its samples itself."""
    from qnnbuild.toolchain.runtime import qnn, shards

    inputs = {k: Path(v) for k, v in spec["inputs"].items()}
    samples = calibration.samples_for(spec["data"], {k: Path(v) for k, v in spec["files"].items()},
                                      inputs["reference"])
    # one thread: the figures are keyed outputs, the same bytes on any machine and in any number of shards
    sessions = {"fp32": qnn.cpu_session(str(inputs["reference"] / "model.onnx"), threads=1)}
    if "quantized" in inputs:
        sessions["qdq_cpu"] = qnn.cpu_session(str(inputs["quantized"] / "model.qdq.onnx"), threads=1)
    sessions["htp"] = qnn.deliverable_session(inputs["context"])
    names = [o.name for o in sessions["fp32"].get_outputs()]
    outs: dict[str, dict[str, list[Any]]] = {m: {n: [] for n in names} for m in sessions}
    busy = dict.fromkeys(sessions, 0.0)
    for i in range(start, stop):
        feed = samples[i]
        for model, session in sessions.items():
            started = time.perf_counter()
            values = session.run(names, feed)
            busy[model] += time.perf_counter() - started
            for name, value in zip(names, values, strict=True):
                outs[model][name].append(value)
        shards.tick()
    return outs, busy


def _collect(ctx: StageRun, count: int) -> tuple[dict[str, dict[str, list[Any]]], dict[str, Any]]:
    """collect_range over all samples in `workers` shards, merged in sample order; the timings to record."""
    from qnnbuild.toolchain.runtime import shards

    spec = {"data": ctx.params["data"], "files": {k: str(v) for k, v in ctx.files.items()},
            "inputs": {k: str(v) for k, v in ctx.inputs.items()}}
    workers = min(ctx.workers(), count)
    started = time.perf_counter()
    results, seconds = shards.run(collect_range, spec, count, workers, ctx.progress, ctx.spread)
    wall = time.perf_counter() - started
    outs = {m: {n: [v for r in results for v in r[0][m][n]] for n in results[0][0][m]} for m in results[0][0]}
    busy = {m: sum(r[1][m] for r in results) for m in results[0][1]}
    speed = {m: round(count / t, 2) if t else 0.0 for m, t in busy.items()}
    timings = {"samples_per_second": speed, "workers": workers, "wall_seconds": round(wall, 2),
               "samples_per_second_wall": round(count / wall, 2), "shard_seconds": [round(s, 2) for s in seconds]}
    return outs, timings


def _accuracy(outs: dict[str, dict[str, list[Any]]], labels: list[int]) -> dict[str, dict[str, float]]:
    """Top-1 (and top-5, with ≥ 5 classes) accuracy in %, per model, on the first classifier output."""
    import numpy as np

    from qnnbuild.toolchain.data import metrics

    first = outs["fp32"]
    name = next((n for n, v in first.items() if metrics.is_classifier(v[0].shape)), None)
    if name is None:
        raise StageFailed("the data has labels, but no output looks like class scores ([1, classes])")
    found: dict[str, dict[str, float]] = {"top1_accuracy": {}}
    classes = int(np.asarray(first[name][0]).size)
    if classes >= 5:
        found["top5_accuracy"] = {}
    for model, values in outs.items():
        scores = [np.asarray(v).ravel() for v in values[name]]
        top1 = [int(np.argmax(s)) == y for s, y in zip(scores, labels, strict=True)]
        found["top1_accuracy"][model] = round(100 * sum(top1) / len(top1), 3)
        if classes >= 5:
            top5 = [y in np.argsort(s)[-5:] for s, y in zip(scores, labels, strict=True)]
            found["top5_accuracy"][model] = round(100 * sum(top5) / len(top5), 3)
    return found


def run(ctx: StageRun) -> None:
    import numpy as np

    from qnnbuild.toolchain.data import metrics

    target = ctx.require_target()
    if layout.is_llm(ctx.inputs["reference"]):
        _llm(ctx, target["name"])
        return
    samples = calibration.samples_for(ctx.params["data"], ctx.files, ctx.inputs["reference"])
    outs, timings = _collect(ctx, len(samples))
    speed = timings["samples_per_second"]
    figures = {n: metrics.compare(outs["fp32"][n], outs["htp"][n]) for n in outs["fp32"]}
    sqnr = {n: {m: round(metrics.sqnr_db(np.stack(outs["fp32"][n]), np.stack(outs[m][n])), 3)
                for m in outs if m != "fp32"} for n in outs["fp32"]}
    thresholds = {k: ctx.params.get(k) for k in ("min_sqnr_db", "min_cosine", "min_top1_agreement",
                                                 "max_accuracy_drop", "min_embedding_cosine")}
    report: dict[str, Any] = {"target": target["name"], "samples": len(samples),
                              "source": next(iter(ctx.params["data"])), "outputs": figures, "sqnr_db": sqnr,
                              "thresholds": {k: v for k, v in thresholds.items() if v is not None}}
    if samples.labels is not None:
        report.update(_accuracy(outs, samples.labels))
    masks = [samples[i]["attention_mask"] for i in range(len(samples))] if "text" in ctx.params["data"] else []
    if masks:  # sentence encoders: the embedding a user gets, mean-pooled over the kept tokens
        report["embedding_cosine"] = {n: {m: round(metrics.pooled_cosine(outs["fp32"][n], outs[m][n], masks), 6)
                                          for m in outs if m != "fp32"} for n in outs["fp32"]}
    misses = verdicts(figures, ctx.params) + _accuracy_misses(report, ctx.params) + _embedding_misses(report,
                                                                                                     ctx.params)
    report["passed"] = not misses
    (ctx.out / "metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    ctx.timings(timings)  # wall clock: not in the keyed metrics.json
    _say(ctx, report, speed)
    if misses:
        raise StageFailed(f"accuracy on {target['name']} below the recipe's thresholds: " + "; ".join(misses))


def _llm(ctx: StageRun, target: str) -> None:
    from qnnbuild.stages.validate.llm import validate_llm

    validate_llm(ctx, target)


def _embedding_misses(report: dict[str, Any], params: Params) -> list[str]:
    need = params.get("min_embedding_cosine")
    if need is None:
        return []
    if "embedding_cosine" not in report:
        raise StageFailed("min_embedding_cosine needs text data (data: {text: ...}): it pools over the attention "
                          "mask")
    return [f"{name}: mean-pooled embedding cosine {fig['htp']:.4f} on HTP < required {need}"
            for name, fig in report["embedding_cosine"].items() if fig["htp"] < need]


def _accuracy_misses(report: dict[str, Any], params: Params) -> list[str]:
    limit = params.get("max_accuracy_drop")
    if limit is None:
        return []
    if "top1_accuracy" not in report:
        raise StageFailed("max_accuracy_drop needs labelled data: `data: {npy: {dir, labels}}` or images with "
                          "labels or one subfolder per class")
    acc = report["top1_accuracy"]
    drop = acc["fp32"] - acc["htp"]
    if drop <= limit:
        return []
    return [f"top-1 accuracy {acc['htp']:.2f}% on HTP against {acc['fp32']:.2f}% fp32: a drop of {drop:.2f} "
            f"points > allowed {limit}"]


def _say(ctx: StageRun, report: dict[str, Any], speed: dict[str, float]) -> None:
    for name, fig in report["outputs"].items():
        extra = f", top-1 {fig['top1_agreement']:.0%}, top-5 {fig['top5_agreement']:.0%}" if "top1_agreement" in \
            fig else ""
        qdq = report["sqnr_db"][name].get("qdq_cpu")
        ctx.say(f"{name}: SQNR {fig['sqnr_db']:.2f} dB on HTP" + (f" ({qdq:.2f} dB QDQ on CPU)" if qdq else "")
                + f", cosine {fig['cosine']:.5f}, max abs error {fig['max_abs_error']:.4g}{extra}")
    for kind in ("top1_accuracy", "top5_accuracy"):
        if kind in report:
            ctx.say(f"{kind.replace('_', ' ')}: " + ", ".join(f"{m} {v:.2f}%" for m, v in report[kind].items()))
    ctx.say(f"{report['samples']} samples; samples/s: "
            + ", ".join(f"{m} {v:g}" for m, v in speed.items()))


def summarize(folder: Path) -> dict[str, Any]:
    """Per output SQNR on HTP, the worst of them, and labelled accuracy on HTP."""
    metrics = read_json(folder, "metrics.json")
    if not metrics:
        return {}
    if "perplexity" in metrics:  # an LLM
        return {f"perplexity {m}": v for m, v in metrics["perplexity"].items()} | {
            f"token agreement {m} (%)": round(100 * v, 1) for m, v in metrics["token_agreement"].items()}
    found: dict[str, Any] = {f"SQNR {name} (dB)": fig["sqnr_db"] for name, fig in metrics["outputs"].items()}
    if len(metrics["outputs"]) > 1:
        found["worst SQNR (dB)"] = min(fig["sqnr_db"] for fig in metrics["outputs"].values())
    for kind in ("top1_accuracy", "top5_accuracy"):
        if kind in metrics:
            found[kind.replace("_accuracy", " accuracy (%)").replace("top", "top-")] = metrics[kind]["htp"]
    return found


KIND = StageKind(
    name="validate",
    version=5,
    summary="context on the HTP emulator vs the fp32 model on the CPU: SQNR, cosine, top-k; fails below thresholds",
    params={
        "context": {"type": "string", "description": "the context-binary stage"},
        "reference": {"type": "string", "description": "the export stage (fp32 model)"},
        "data": {**calibration.SCHEMA, "default": HELD_OUT, "description": "held-out inputs (default: 8 "
                 "synthetic samples with seed 1000)"},
        "min_sqnr_db": {"type": "number"},
        "min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
        "min_top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
        "quantized": {"type": "string", "description": "the quantize stage: adds the QDQ model on the CPU to "
                      "every figure, telling quantization loss from HTP compile loss"},
        "min_embedding_cosine": {"type": "number", "minimum": -1, "maximum": 1, "description": "text data: the "
                                 "mean-pooled (attention-mask weighted) embedding's cosine, HTP vs fp32"},
        "max_perplexity_ratio": {"type": "number", "minimum": 1, "description": "an LLM on text: HTP's "
                                 "perplexity over fp32's; fails above"},
        "min_token_agreement": {"type": "number", "minimum": 0, "maximum": 1, "description": "an LLM on text: "
                                "the share of positions where HTP's next-token argmax equals fp32's (teacher "
                                "forced, from the perplexity passes); fails below"},
        "max_reference_gap": {"type": "number", "minimum": 0, "description": "an LLM: how far apart (relative "
                              "to HTP's) the QDQ-CPU and HTP perplexities may be; above 0.10 validate warns, above "
                              "this it fails (the CPU reference then does not predict the device)"},
        "generate": {"type": "object", "additionalProperties": False, "default": {},
                     "description": "an LLM: greedy generation from the first `prompts` texts, `tokens` long, "
                     "reported as first_divergence (mean tokens equal to fp32's before the first that differs)",
                     "properties": {"prompts": {"type": "integer", "minimum": 0, "default": 2},
                                    "tokens": {"type": "integer", "minimum": 1, "default": 8}}},
        "max_accuracy_drop": {"type": "number", "minimum": 0, "description": "labelled data: allowed top-1 "
                              "drop, HTP vs fp32, in percentage points"},
        "workers": {"type": "integer", "minimum": 1, "description": "processes the samples are spread over, "
                    "each on its own core (default: the run's -j); the metrics are the same for any number, and "
                    "changing it rebuilds nothing"},
    },
    unkeyed=("workers",),
    spreads=True,
    required=("context", "reference"),
    refs=refs_of("context", "reference", "quantized"),
    summarize=summarize,
    files=_files,
    tools=("onnxruntime", "onnxruntime-qnn", "numpy"),
    run=run,
)
