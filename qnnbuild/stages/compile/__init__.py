"""`compile`: QDQ model → a QNN context binary finalized for one Snapdragon target (HTP graph finalize).

One fresh worker process per compile and a fixed relative model path: QNN hashes the path string into the
graph name and changes counters on a second generation in one process, and both would break byte-identical
rebuilds. Options are validated here because the EP ignores unknown keys and bad values silently.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageKind, StageRun
from qnnbuild.stages.compile.parts import join, refs, unfold
from qnnbuild.toolchain.llm import layout

PERFORMANCE_MODES = ["default", "burst", "balanced", "high_performance", "sustained_high_performance",
                     "power_saver", "low_power_saver", "high_power_saver", "low_balanced", "extreme_power_saver"]



def provider_options(params: Params, target: dict[str, int | str]) -> dict[str, str]:
    """The QNN EP options for this target; every value here has been checked against the schema."""
    options = {"soc_model": str(target["soc_model"]), "htp_arch": str(target["htp_arch"]),
               "htp_graph_finalization_optimization_mode": str(params["optimization_level"]),
               "htp_performance_mode": params["performance_mode"]}
    if params.get("vtcm_mb") is not None:
        if int(params["vtcm_mb"]) > int(target["vtcm_mb"]):
            raise StageFailed(f"vtcm_mb {params['vtcm_mb']} exceeds the {target['vtcm_mb']} MB VTCM of "
                              f"{target['name']}")
        options["vtcm_mb"] = str(params["vtcm_mb"])
    if params["fp16"]:
        options["enable_htp_fp16_precision"] = "1"
    return options


def _finalize(source: Path, dest: Path, options: dict[str, str], target: dict[str, Any]) -> None:
    """`source` (a QDQ model) → dest/model_ctx.onnx + model_ctx_qnn.bin + compile.json."""
    import onnx

    from qnnbuild.toolchain.graph import onnxfile, onnxgraph, refusals
    from qnnbuild.toolchain.quant import encodings
    from qnnbuild.toolchain.runtime import assignment, qnn

    with tempfile.TemporaryDirectory(prefix="qnnbuild-compile-") as tmp, contextlib.chdir(tmp):
        onnxfile.place(source, Path("model.onnx"))  # with its weights file, if it has one
        config = {"ep.context_enable": "1", "ep.context_file_path": "model_ctx.onnx",
                  "ep.context_embed_mode": "0"}
        try:
            qnn.htp_session("model.onnx", options, config, verbose=True)
        except Exception as exc:
            types = {n.name: n.op_type for n in onnx.load("model.onnx", load_external_data=False).graph.node}
            refused = qnn.finalize_failures(qnn.failure_log("model.onnx", options), types)
            if not refused:  # no op QNN failed to create: nodes it would leave to the CPU, which a build forbids
                refused = [r for r in assignment.refused_nodes("model.onnx", options)[0] if r["name"] != "?"]
            why = qnn.describe(refusals.annotate("model.onnx", refused)) if refused else str(exc).strip()
            raise StageFailed(f"HTP compile for {target['name']} failed: {why}") from None
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("model_ctx.onnx", "model_ctx_qnn.bin"):
            if not Path(name).is_file():
                raise StageFailed(f"QNN did not write {name}")
            shutil.move(name, dest / name)
    qdq = onnx.load(str(source), load_external_data=False)  # io_quantization reads scalars: no weights needed
    info = {"target": target, "provider_options": options, **onnxgraph.io_spec(qdq),
            "io_quantization": encodings.io_quantization(qdq)}
    (dest / "compile.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def _finalize_shared(pair: dict[str, Path], dest: Path, options: dict[str, str]) -> None:
    """An LLM's two graphs (QDQ models `pair`) in one context binary sharing one copy of the weights
    (`ep.share_ep_contexts`, the variant Qualcomm AI Hub ships): dest/prefill_ctx.onnx and decode_ctx.onnx both
    referencing prefill_ctx_qnn.bin. Never loaded here: on the emulator QNN answers `Shared weights buffer isn't
    supported on this platform` and the process segfaults (QNN_NOTES)."""
    from qnnbuild.toolchain.graph import onnxfile
    from qnnbuild.toolchain.runtime import qnn

    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="qnnbuild-shared-") as tmp, contextlib.chdir(tmp):
        for graph, source in pair.items():
            onnxfile.place(source, Path(f"{graph}.onnx"))
            config = {"ep.context_enable": "1", "ep.context_file_path": f"{graph}_ctx.onnx",
                      "ep.context_embed_mode": "0", "ep.share_ep_contexts": "1",
                      **({"ep.stop_share_ep_contexts": "1"} if graph == "decode" else {})}
            try:
                qnn.htp_session(f"{graph}.onnx", options, config)
            except Exception as exc:
                raise StageFailed(f"weight-shared context for the {graph} graph failed: {str(exc).strip()}") from None
        for name in ("prefill_ctx.onnx", "decode_ctx.onnx", "prefill_ctx_qnn.bin"):
            if not Path(name).is_file():
                raise StageFailed(f"QNN did not write {name} for the weight-shared context")
            shutil.move(name, dest / name)


def _graphs(model: Path, limit: float) -> dict[str, Path]:
    """graph → its QDQ model to compile (an LLM's two graphs, or one part of each), checked for size."""
    import onnx

    from qnnbuild.toolchain.llm import parts as llmparts

    llm = layout.is_llm(model)
    graphs = {"prefill": model / "model.qdq.onnx", **({"decode": model / "decode" / "model.qdq.onnx"} if llm else {})}
    for graph, path in graphs.items():
        skeleton = onnx.load(str(path), load_external_data=False)  # weight_mb counts from the shapes
        llmparts.check_fits(skeleton, f"the {graph} graph" if llm else "the model", limit,
                            "split an LLM with parts: K, or raise the limit")
    return graphs


def _llm(ctx: StageRun, graphs: dict[str, Path], options: dict[str, str], target: dict[str, Any]) -> None:
    """An LLM's graphs (or one part of each): prefill at the top and decode/; with weight_sharing also shared/."""
    for graph, path in graphs.items():
        _finalize(path, ctx.out / ("" if graph == "prefill" else "decode"), options, target)
    layout.carry_info(ctx.inputs["model"], ctx.out)
    if ctx.params["weight_sharing"]:
        _finalize_shared(graphs, ctx.out / "shared", options)
        ctx.say("weight-shared context (prefill and decode in one binary) written; not loaded here (the emulator "
                "cannot)")


def run(ctx: StageRun) -> None:
    target = ctx.require_target()
    model = ctx.inputs["model"]
    if ctx.params.get("part_stages"):
        join(ctx)
    else:
        options = provider_options(ctx.params, target)
        ctx.say(f"finalizing the HTP graph for {target['name']} ({target['product']}, HTP v"
                f"{target['htp_arch']}), optimization level {ctx.params['optimization_level']}")
        ctx.progress(phase=f"finalizing the HTP graph for {target['name']}")
        graphs = _graphs(model, ctx.params["max_part_mb"])
        if layout.is_llm(model):
            _llm(ctx, graphs, options, target)
        else:
            _finalize(graphs["prefill"], ctx.out, options, target)
    ctx.carry("model")
    sizes = [p.stat().st_size / 1e6 for p in ctx.out.rglob("model_ctx_qnn.bin")]
    over = [s for s in sizes if s > ctx.params["max_part_mb"]]
    if over:
        raise StageFailed(f"a context binary is {max(over):,.1f} MB, over max_part_mb {ctx.params['max_part_mb']:g}")
    ctx.say(f"context binary: {sum(sizes):.2f} MB" + (f" in {len(sizes)} parts" if len(sizes) > 2 else ""))


KIND = StageKind(
    name="compile",
    version=1,
    summary="QDQ model → QNN context binary finalized for each target",
    params={
        "model": {"type": "string", "description": "the quantize stage whose model to compile"},
        "optimization_level": {"type": "integer", "minimum": 1, "maximum": 3, "default": 3,
                               "description": "HTP graph finalization optimization mode"},
        "vtcm_mb": {"type": "integer", "minimum": 1, "maximum": 8, "description": "VTCM to use (default: all)"},
        "fp16": {"type": "boolean", "default": False, "description": "run float ops in fp16 on HTP"},
        "performance_mode": {"enum": PERFORMANCE_MODES, "default": "default"},
        "parts": {"type": "integer", "minimum": 1, "default": 1, "description": "an LLM: split each graph "
                  "between decoder layers into this many context binaries, run in a chain (embedding first, LM "
                  "head last); each part is split and compiled by its own stage instances, side by side"},
        "max_part_mb": {"type": "number", "exclusiveMinimum": 0, "default": 1500, "description": "refuse a "
                        "context (a whole graph, or a part) whose weights pass this many MB"},
        "weight_sharing": {"type": "boolean", "default": False, "description": "an LLM: also write both graphs in "
                           "one context binary sharing one copy of the weights (checked structurally, never run "
                           "here: the emulator cannot load it)"},
    },
    required=("model",),
    refs=refs,
    fans_out=True,
    unkeyed=("part_stages",),
    unfold=unfold,
    stays_here=lambda params: bool(params.get("part_stages")),  # the join: hard links to the parts' binaries
    tools=("onnx", "onnxruntime", "onnxruntime-qnn"),
    run=run,
)
