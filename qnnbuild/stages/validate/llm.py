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
            progress: Callable[[int, int, str], None] = lambda done, total, unit: None
            ) -> tuple[dict[str, Any], dict[str, float]]:
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
    report = {"samples": len(texts), "source": "text", **llmrun.evaluate(runners, texts, progress=progress)}
    return report, {m: llmrun.decode_speed(r) for m, r in runners.items()}


def validate_llm(ctx: StageRun, target: str) -> None:
    """An LLM: perplexity and greedy agreement of QDQ-CPU and HTP against fp32 on text (toolchain/llm/run.py)."""
    report, speed = figures(ctx.inputs, ctx.files, ctx.params["data"], ctx.progress)
    ppl, limit = report["perplexity"], ctx.params.get("max_perplexity_ratio")
    miss = limit is not None and ppl["htp"] > limit * ppl["fp32"]
    report.update(target=target, passed=not miss)
    (ctx.out / "metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    ctx.timings({"decode_tokens_per_second": speed})
    ctx.say(f"{report['samples']} texts: perplexity " + ", ".join(f"{m} {v:.3f}" for m, v in ppl.items())
            + "; greedy agreement with fp32 " + ", ".join(f"{m} {v:.0%}" for m, v in
                                                         report["greedy_agreement"].items())
            + "; decode tokens/s " + ", ".join(f"{m} {v:g}" for m, v in speed.items()))
    if miss:
        raise StageFailed(f"accuracy on {target} below the recipe's thresholds: perplexity {ppl['htp']:.3f} on "
                          f"HTP > {limit} x fp32's {ppl['fp32']:.3f}")
