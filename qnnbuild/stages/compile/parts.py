"""compile's `parts: K` as stage instances: the compile stage unfolds into K `llm-part` stages (stages/part.py)
and a compile of each, then joins the compiled parts into the layout context-binary reads (parts/<graph>/<k>/,
shared/<k>/), with each whole graph's inputs and outputs for the chain."""

from __future__ import annotations

import shutil
from pathlib import Path

from qnnbuild.stages.base import Params, StageRun, Unfolded
from qnnbuild.toolchain.llm import layout


def _io_of(path: Path) -> dict[str, list[str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {"inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}


def _place(source: Path, dest: Path) -> None:
    """A finished part's files into the joined output: hard links where the store allows (its entries are never
    written again), copies elsewhere."""
    import os

    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(p for p in source.iterdir() if p.is_file()):
        try:
            os.link(item, dest / item.name)
        except OSError:
            shutil.copyfile(item, dest / item.name)


def join(ctx: StageRun) -> None:
    """compile's parts: K: each part was compiled by its own instance (`part.k`); this one lays them out as one
    compile output (parts/<graph>/<k>/, shared/<k>/), with each whole graph's inputs and outputs for the chain."""
    model, parts = ctx.inputs["model"], len(ctx.params["part_stages"])
    for k in range(1, parts + 1):
        done = ctx.inputs[f"part.{k}"]
        _place(done, ctx.out / "parts" / "prefill" / str(k))
        _place(done / "decode", ctx.out / "parts" / "decode" / str(k))
        if (done / "shared").is_dir():
            _place(done / "shared", ctx.out / "shared" / str(k))
    info = layout.info(model)
    info["parts"] = parts
    info["graphs"] = {g: _io_of(model / folder / "model.qdq.onnx") for g, folder in (("prefill", ""),
                                                                                     ("decode", "decode"))}
    layout.write_info(ctx.out, info)
    ctx.say(f"{parts} parts joined, each compiled by its own instance")


def unfold(name: str, params: Params) -> Unfolded | None:
    """parts: K → K `llm-part` stages (`<name>.split<k>`) and a compile of each (`<name>.part<k>`), which this
    stage then joins (`part_stages`, not keyed: the parts' own digests are)."""
    count = params.get("parts", 1)
    if count < 2 or params.get("part_stages"):
        return None
    stages: dict[str, tuple[str, Params]] = {}
    for k in range(1, count + 1):
        stages[f"{name}.split{k}"] = ("llm-part", {"model": params["model"], "part": k, "parts": count,
                                                   "max_part_mb": params["max_part_mb"]})
        stages[f"{name}.part{k}"] = ("compile", {**params, "model": f"{name}.split{k}", "parts": 1})
    return Unfolded({**params, "part_stages": [f"{name}.part{k}" for k in range(1, count + 1)]}, stages)


def refs(params: Params) -> dict[str, str]:
    return {"model": params["model"], **{f"part.{k}": s for k, s in enumerate(params.get("part_stages", []), 1)}}
