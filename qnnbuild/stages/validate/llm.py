"""The validate stage for an LLM: perplexity and teacher-forced token agreement of QDQ-CPU and HTP against fp32 on
text, by running the static prefill/decode graphs (toolchain/llm/run.py) on each, the texts spread over shards
like validate's samples; then how long short greedy generations stay equal to fp32's."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.common import memory
from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import StageRun
from qnnbuild.toolchain.data import textdata
from qnnbuild.toolchain.llm import layout
from qnnbuild.toolchain.llm import run as llmrun


def _texts(inputs: dict[str, Path], files: dict[str, Path], data: dict[str, Any]) -> list[list[int]]:
    ref = inputs["reference"]
    if "text" not in data:
        raise StageFailed("an LLM is validated on text: data: {text: {file, skip, count}}")
    tokenizer = files.get("data.text.tokenizer", layout.tokenizer(ref))
    return textdata.token_lines(files["data.text.file"], tokenizer, data["text"], layout.info(ref)["bos_token_id"])


def _openers(inputs: dict[str, Path]) -> dict[str, Callable[[], llmrun.Runner]]:
    """model → how to open its runner: fp32 and (given a quantize stage) QDQ on onnxruntime's CPU, the context
    binaries on the HTP emulator. One model's sessions are open at a time: fp32's prefill and decode graphs each
    hold every weight, and with all six sessions open SmolLM2-135M's validate peaked at 19.3 bytes per parameter
    (benchmarks/llm_memory.py --validate)."""
    ref = inputs["reference"]
    graphs = {"fp32": layout.graphs(ref)}
    if "quantized" in inputs:
        graphs["qdq_cpu"] = layout.graphs(inputs["quantized"], "model.qdq.onnx")
    found: dict[str, Callable[[], llmrun.Runner]] = {m: functools.partial(_cpu_runner, g) for m, g in graphs.items()}
    found["htp"] = functools.partial(_htp_runner, inputs["context"])
    return found


def _cpu_runner(graphs: dict[str, Path]) -> llmrun.Runner:
    from qnnbuild.toolchain.runtime import qnn

    return llmrun.Runner(qnn.cpu_session(str(graphs["prefill"])), qnn.cpu_session(str(graphs["decode"])))


def _htp_runner(context: Path) -> llmrun.Runner:
    from qnnbuild.toolchain.runtime import qnn

    return llmrun.Runner(qnn.deliverable_session(context), qnn.deliverable_session(context, graph="decode"))


def score_range(spec: dict[str, Any], start: int, stop: int) -> dict[str, list[llmrun.Score]]:
    """Texts [start, stop) scored by every model in turn, teacher forced. Runs in a shard's process (toolchain/
    runtime/shards.py), so it takes plain paths and loads its texts and sessions itself."""
    from qnnbuild.toolchain.runtime import shards

    inputs = {k: Path(v) for k, v in spec["inputs"].items()}
    texts = _texts(inputs, {k: Path(v) for k, v in spec["files"].items()}, spec["data"])
    scores: dict[str, list[llmrun.Score]] = {}
    for model, opener in _openers(inputs).items():
        runner = opener()
        scores[model] = []
        for ids in texts[start:stop]:
            scores[model].append(runner.score(ids[:runner.context]))
            shards.tick()
        del runner
        memory.trim()
    return scores


def figures(ctx: StageRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validate stage's figures for an LLM: the texts scored over `workers` shards (processes here, tasks on a
    Dask cluster) and merged in text order, so the figures are the same for any number; then the short greedy
    runs here. Returns (metrics, timings)."""
    import time

    from qnnbuild.toolchain.runtime import shards

    texts = _texts(ctx.inputs, ctx.files, ctx.params["data"])
    gen = ctx.params["generate"]  # both counts filled in from the schema's defaults
    prompts = llmrun.prompts_of(texts, gen["prompts"])
    spec = {"data": ctx.params["data"], "files": {k: str(v) for k, v in ctx.files.items()},
            "inputs": {k: str(v) for k, v in ctx.inputs.items()}}
    workers = min(ctx.workers(), len(texts))
    models = 3 if "quantized" in ctx.inputs else 2
    total = (len(texts) + len(prompts)) * models  # passes: a text or a prompt through one model
    started = time.perf_counter()
    results, seconds = shards.run(score_range, spec, len(texts), workers,
                                  lambda done, _: ctx.progress(done, total, "passes"), ctx.spread, ticks=models)
    scores = {m: [s for r in results for s in r[m]] for m in results[0]}
    speed: dict[str, float] = {}
    found = {**llmrun.summarize(scores), "first_divergence": llmrun.diverge(
        _openers(ctx.inputs), prompts, gen["tokens"], lambda n: ctx.progress(len(texts) * models + n, total, "passes"),
        lambda model, runner: speed.update({model: llmrun.decode_speed(runner)})), "generate": gen}
    timings = {"decode_tokens_per_second": speed, "workers": workers,
               "wall_seconds": round(time.perf_counter() - started, 2),
               "shard_seconds": [round(s, 2) for s in seconds]}
    return {"samples": len(texts), "source": "text", **found}, timings


REFERENCE_GAP_WARN = 0.10  # QDQ-CPU and HTP perplexities further apart: the CPU reference does not predict HTP


def reference_gap(report: dict[str, Any]) -> float | None:
    """|QDQ-CPU − HTP| / HTP perplexity: how far the CPU reference is from the device (None without QDQ-CPU)."""
    ppl = report["perplexity"]
    return round(abs(ppl["qdq_cpu"] - ppl["htp"]) / ppl["htp"], 4) if "qdq_cpu" in ppl and ppl["htp"] else None


def misses(report: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The recipe's LLM thresholds HTP missed, each with the measured and the required figure."""
    ppl, found = report["perplexity"], []
    limit = params.get("max_perplexity_ratio")
    if limit is not None and ppl["htp"] > limit * ppl["fp32"]:
        found.append(f"perplexity {ppl['htp']:.3f} on HTP > {limit} x fp32's {ppl['fp32']:.3f}")
    need = params.get("min_token_agreement")
    if need is not None and report["token_agreement"]["htp"] < need:
        found.append(f"token agreement with fp32 {report['token_agreement']['htp']:.4f} on HTP < {need}")
    gap, limit = report.get("reference_gap"), params.get("max_reference_gap")
    if gap is not None and limit is not None and gap > limit:
        found.append(f"QDQ-CPU and HTP perplexities {gap:.1%} apart > max_reference_gap {limit:.1%}")
    return found


def validate_llm(ctx: StageRun, target: str) -> None:
    """An LLM: perplexity and teacher-forced token agreement of QDQ-CPU and HTP against fp32 on text, and how
    far short greedy generations stay equal (toolchain/llm/run.py)."""
    report, timings = figures(ctx)
    speed = timings["decode_tokens_per_second"]
    gap = reference_gap(report)
    if gap is not None:
        report["reference_gap"] = gap
        if gap > REFERENCE_GAP_WARN:
            ctx.say(f"warning: QDQ-CPU and HTP perplexities are {gap:.1%} apart (more than "
                    f"{REFERENCE_GAP_WARN:.0%}): the CPU reference does not predict the device here, so it cannot "
                    "tell quantization loss from compile loss")
    missed = misses(report, ctx.params)
    report.update(target=target, passed=not missed)
    (ctx.out / "metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    ctx.timings(timings)
    ctx.say(f"{report['samples']} texts: perplexity " + ", ".join(f"{m} {v:.3f}" for m, v in
                                                                   report["perplexity"].items())
            + "; token agreement with fp32 " + ", ".join(f"{m} {v:.1%}" for m, v in
                                                        report["token_agreement"].items())
            + f"; first divergence (of {report['generate']['tokens']} greedy tokens) "
            + ", ".join(f"{m} {v:g}" for m, v in report["first_divergence"].items())
            + "; decode tokens/s " + ", ".join(f"{m} {v:g}" for m, v in speed.items()))
    if missed:
        raise StageFailed(f"accuracy on {target} below the recipe's thresholds: " + "; ".join(missed))
