"""The validate stage for an LLM: perplexity and greedy agreement of QDQ-CPU and HTP against fp32 on text, by
running the static prefill/decode graphs (toolchain/llm/run.py) on each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import StageRun
from qnnbuild.toolchain.data import textdata
from qnnbuild.toolchain.llm import layout
from qnnbuild.toolchain.llm import run as llmrun


def figures(inputs: dict[str, Path], files: dict[str, Path], data: dict[str, Any],
            progress: Callable[[int, int, str], None] = lambda done, total, unit: None,
            generate: dict[str, int] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """The validate stage's figures for an LLM: `inputs` are its reference (export), quantized and context
    folders; returns (metrics, decode tokens/s per model)."""
    from qnnbuild.toolchain.runtime import qnn

    ref = inputs["reference"]
    if "text" not in data:
        raise StageFailed("an LLM is validated on text: data: {text: {file, skip, count}}")
    info = layout.info(ref)
    tokenizer = files.get("data.text.tokenizer", layout.tokenizer(ref))
    texts = textdata.token_lines(files["data.text.file"], tokenizer, data["text"], info["bos_token_id"])
    pairs = {"fp32": (ref / "model.onnx", ref / "decode" / "model.onnx")}
    if "quantized" in inputs:
        pairs["qdq_cpu"] = (inputs["quantized"] / "model.qdq.onnx", inputs["quantized"] / "decode" / "model.qdq.onnx")
    runners = {m: llmrun.Runner(qnn.cpu_session(str(p)), qnn.cpu_session(str(d))) for m, (p, d) in pairs.items()}
    runners["htp"] = llmrun.Runner(qnn.deliverable_session(inputs["context"]),
                            qnn.deliverable_session(inputs["context"], graph="decode"))
    found = llmrun.evaluate(runners, texts, generate, progress=progress)
    report = {"samples": len(texts), "source": "text", **found}
    return report, {m: llmrun.decode_speed(r) for m, r in runners.items()}


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
    report, speed = figures(ctx.inputs, ctx.files, ctx.params["data"], ctx.progress, ctx.params.get("generate"))
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
    ctx.timings({"decode_tokens_per_second": speed})
    ctx.say(f"{report['samples']} texts: perplexity " + ", ".join(f"{m} {v:.3f}" for m, v in
                                                                   report["perplexity"].items())
            + "; token agreement with fp32 " + ", ".join(f"{m} {v:.1%}" for m, v in
                                                        report["token_agreement"].items())
            + f"; first divergence (of {report['generate']['tokens']} greedy tokens) "
            + ", ".join(f"{m} {v:g}" for m, v in report["first_divergence"].items())
            + "; decode tokens/s " + ", ".join(f"{m} {v:g}" for m, v in speed.items()))
    if missed:
        raise StageFailed(f"accuracy on {target} below the recipe's thresholds: " + "; ".join(missed))
