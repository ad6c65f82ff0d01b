"""`llm-part`: one part of an LLM's quantized prefill and decode graphs, split between decoder layers
(toolchain/llm/parts.py says how), laid out like a quantize output so that compile builds it as it builds a
whole graph.

compile's `parts: K` unfolds into K of these, a compile of each and the compile that joins them: the parts
compile side by side (under `-j`, or on Dask workers) and each part's compile is keyed by its own graph's bytes,
so an edit that leaves a part's graph as it was (the LM head's precision, an override inside another part's
layers) leaves that part's compile cached.
"""

from __future__ import annotations

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import StageKind, StageRun, refs_of
from qnnbuild.toolchain.llm import layout

GRAPHS = {"prefill": "", "decode": "decode"}  # graph → its folder in a quantize output (and in this one)


def part_of(params: dict[str, int], graph: str) -> str:
    return f"part {params['part']} of {params['parts']} of the {graph} graph"


def run(ctx: StageRun) -> None:
    import onnx

    from qnnbuild.toolchain.graph import onnxfile
    from qnnbuild.toolchain.llm import parts as llmparts

    model, index, count = ctx.inputs["model"], ctx.params["part"], ctx.params["parts"]
    if not layout.is_llm(model):
        raise StageFailed("parts: K splits an LLM's decoder between its layers; this model is not an LLM export")
    for graph, folder in GRAPHS.items():
        source = model / folder / "model.qdq.onnx"
        whole = onnx.load(str(source), load_external_data=False)  # the graph, not its weights
        part = llmparts.split(whole, count, source.parent, only=index - 1)[0]
        del whole
        onnxfile.load_data(part, source.parent)  # this part's weights alone
        size = llmparts.check_fits(part, part_of(ctx.params, graph), ctx.params["max_part_mb"],
                                   "split into more parts, or raise the limit")
        (ctx.out / folder).mkdir(exist_ok=True)
        ctx.say(f"{part_of(ctx.params, graph)}: {len(part.graph.node)} nodes, {size:,.1f} MB of weights")
        onnxfile.save(part, ctx.out / folder / "model.qdq.onnx", external=onnxfile.is_external(source))
    layout.carry_info(model, ctx.out)


KIND = StageKind(
    name="llm-part",
    version=1,
    summary="one part of an LLM's quantized graphs, split between decoder layers (what compile's parts: K "
            "unfolds into)",
    params={
        "model": {"type": "string", "description": "the quantize stage whose graphs to split"},
        "part": {"type": "integer", "minimum": 1, "description": "which part (1 holds the embedding, the last "
                 "the LM head)"},
        "parts": {"type": "integer", "minimum": 2, "description": "how many parts the graphs are split into"},
        "max_part_mb": {"type": "number", "exclusiveMinimum": 0, "default": 1500, "description": "refuse a part "
                        "whose weights pass this many MB"},
    },
    required=("model", "part", "parts"),
    refs=refs_of("model"),
    checks=lambda params: [(("part",), "part is larger than parts")] if params.get("part", 1) > params.get(
        "parts", 2) else [],
    tools=("onnx", "onnxruntime"),
    run=run,
)
