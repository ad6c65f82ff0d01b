"""`context-binary`: the deliverable for one target — the EPContext model, the raw QNN context binary named
for the target, io_spec.json (names, shapes, dtypes and the scale/offset of quantized I/O) for people
who load the binary with QNN directly, and a Hugging Face source's tokenizer files (tokenizer.json, ...).
The binary is loaded and run once on the HTP emulator before it is published, so a deliverable that QNN
cannot load never leaves the build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import PREPROCESSING, StageKind, StageRun, refs_of
from qnnbuild.toolchain.llm import layout


def _deliver(compiled: Path, out: Path, stem: str) -> dict[str, Any]:
    """compiled/model_ctx.onnx + its binary → out/<stem>.onnx + <stem>.bin; returns the graph's io_spec."""
    import onnx

    model = onnx.load(str(compiled / "model_ctx.onnx"))
    nodes = [n for n in model.graph.node if n.op_type == "EPContext"]
    if len(nodes) != 1:
        raise StageFailed(f"expected one EPContext node, found {len(nodes)}: the whole graph must be on QNN")
    for attr in nodes[0].attribute:
        if attr.name == "ep_cache_context":
            attr.s = f"{stem}.bin".encode()
    onnx.save(model, str(out / f"{stem}.onnx"))
    shutil.copyfile(compiled / "model_ctx_qnn.bin", out / f"{stem}.bin")
    info = json.loads((compiled / "compile.json").read_text())
    quant = info["io_quantization"]

    def entry(value: dict[str, object]) -> dict[str, object]:
        q = quant.get(str(value["name"]))
        return {**value, "quantization": None if q is None else {
            "dtype": f"uint{q['bitwidth']}", "scale": q["scale"], "offset": q["offset"]}}

    return {"target": info["target"], "context_binary": f"{stem}.bin", "epcontext_model": f"{stem}.onnx",
            "graph_io_quantized_inside": True,
            "inputs": [entry(v) for v in info["inputs"]], "outputs": [entry(v) for v in info["outputs"]]}


def _shared(compiled: Path, out: Path, stem: str, beside: str) -> dict[str, Any]:
    """One weight-shared binary into out/weight_shared/: both EPContext models pointing at it. It is checked by
    structure only (both nodes name the one .bin, which exists), never loaded: on the emulator QNN refuses shared
    weights and the process segfaults. `beside`: the non-shared prefill binary it is compared with."""
    import onnx

    folder = out / "weight_shared"
    folder.mkdir(exist_ok=True)
    binary = f"{stem}_shared.bin"
    shutil.copyfile(compiled / "prefill_ctx_qnn.bin", folder / binary)
    referenced = set()
    for graph in ("prefill", "decode"):
        model = onnx.load(str(compiled / f"{graph}_ctx.onnx"))
        for node in (n for n in model.graph.node if n.op_type == "EPContext"):
            for attr in node.attribute:
                if attr.name == "ep_cache_context":
                    referenced.add(attr.s.decode())
                    attr.s = binary.encode()
        onnx.save(model, str(folder / f"{stem}_{graph}.onnx"))
    if referenced != {"prefill_ctx_qnn.bin"}:
        raise StageFailed(f"the weight-shared graphs do not share one binary: they reference {sorted(referenced)}")
    size = (folder / binary).stat().st_size
    return {"context_binary": binary, "bytes": size, "size_ratio": round(size / (out / beside).stat().st_size, 3)}


def _all_shared(compiled: Path, out: Path, stem: str, prefill: dict[str, Any]) -> dict[str, Any]:
    """The weight-shared variant, one binary per part (or one); sizes against the prefill graph's own binaries."""
    parts = prefill.get("parts", [prefill])
    if len(parts) == 1:
        found = [_shared(compiled / "shared", out, stem, prefill["context_binary"])]
    else:
        found = [_shared(compiled / "shared" / str(k), out, f"{stem}_{k}of{len(parts)}", part["context_binary"])
                 for k, part in enumerate(parts, start=1)]
    size = sum(f["bytes"] for f in found)
    own = sum((out / part["context_binary"]).stat().st_size for part in parts)
    return {"folder": "weight_shared", **({"parts": found} if len(found) > 1 else found[0]), "bytes": size,
            "size_ratio": round(size / own, 3), "run_here": False,
            "why": "the HTP emulator cannot load shared weights (QNN: Shared weights buffer isn't supported on this "
                   "platform); the non-shared pair beside it is the one run and validated"}


def _llm_graph(compiled: Path, out: Path, stem: str, graph: str, info: dict[str, Any]) -> dict[str, Any]:
    """One LLM graph's deliverable: one EPContext model, or its parts (compile's parts: K) in order with the
    graph's own inputs and outputs over them."""
    parts = int(info.get("parts", 1))
    if parts == 1:
        return _deliver(compiled / ("" if graph == "prefill" else "decode"), out, f"{stem}_{graph}")
    specs = [_deliver(compiled / "parts" / graph / str(k), out, f"{stem}_{graph}_{k}of{parts}")
             for k in range(1, parts + 1)]
    by_name = {v["name"]: v for s in specs for v in (*s["inputs"], *s["outputs"])}
    io = info["graphs"][graph]
    return {"target": specs[0]["target"], "parts": specs, "graph_io_quantized_inside": True,
            "inputs": [by_name[n] for n in io["inputs"]], "outputs": [by_name[n] for n in io["outputs"]]}


def _run_once(out: Path, name: str, graph: str | None) -> list[list[int]]:
    """Load the deliverable's graph on the HTP emulator and run it on zeros; the output shapes."""
    import numpy as np

    from qnnbuild.toolchain.runtime import qnn

    session = qnn.deliverable_session(out, graph=graph)
    dtypes = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8,
              "tensor(float16)": np.float16}  # float32 otherwise
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtypes.get(i.type, np.float32))
             for i in session.get_inputs()}
    return [list(o.shape) for o in session.run(None, feeds)]


def run(ctx: StageRun) -> None:
    target = ctx.require_target()
    compiled = ctx.inputs["compiled"]
    stem = f"{ctx.recipe}_{target['name']}"
    llm = layout.is_llm(compiled)
    if llm:  # both graphs, and what onnxruntime-genai needs to run them
        from qnnbuild.toolchain.llm import genai

        info = layout.info(compiled)
        spec = _llm_graph(compiled, ctx.out, stem, "prefill", info)
        spec["decode"] = _llm_graph(compiled, ctx.out, stem, "decode", info)
        spec["llm"] = {k: v for k, v in info.items() if k != "graphs"}
        spec["genai"] = genai.write(ctx.out, spec)
        if (compiled / "shared").is_dir():
            spec["weight_shared"] = _all_shared(compiled, ctx.out, stem, spec)
            ctx.say(f"weight-shared variant: {spec['weight_shared']['size_ratio']:.2f}x the prefill binary; "
                    "checked structurally, not run here")
    else:
        spec = _deliver(compiled, ctx.out, stem)
    carried = sorted(p.name for p in (compiled / PREPROCESSING).glob("*") if p.is_file())
    for name in carried:  # beside the model, where onnxruntime-genai and tokenizers look for them
        shutil.copyfile(compiled / PREPROCESSING / name, ctx.out / name)
    spec["preprocessing"] = carried
    (ctx.out / "io_spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    ctx.progress(phase="loading the binary on the HTP emulator")
    for graph in ("prefill", "decode") if llm else (None,):
        try:
            shapes = _run_once(ctx.out, stem, graph)
        except Exception as exc:
            raise StageFailed(f"the context binary{f' ({graph})' if graph else ''} for {target['name']} does not "
                              f"load/run on the HTP emulator: {str(exc).strip()}") from None
        ctx.say(f"{graph or stem} loads and runs on the HTP emulator; outputs {shapes[:3]}")


def summarize(folder: Path) -> dict[str, Any]:
    found = {"context binary (kB)": round(sum(p.stat().st_size for p in folder.glob("*.bin")) / 1e3, 1)}
    shared = list((folder / "weight_shared").glob("*.bin"))
    if shared:  # the report marks it: never loaded here
        found["weight-shared binary (kB, not run here)"] = round(shared[0].stat().st_size / 1e3, 1)
    return found


KIND = StageKind(
    name="context-binary",
    version=2,
    summary="compile output → the per-target deliverable folder (EPContext model, context binary, io_spec.json)",
    params={"compiled": {"type": "string", "description": "the compile stage"}},
    required=("compiled",),
    refs=refs_of("compiled"),
    tools=("onnx", "onnxruntime", "onnxruntime-qnn"),
    summarize=summarize,
    named=True,
    run=run,
)
