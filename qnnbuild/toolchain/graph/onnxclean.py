"""An fp32 ONNX model from any source → the clean model QNN and the quantizer need, with its I/O description.

Clean means: every input shape concrete, every node named, graph inputs and outputs without ':', ';' or '/',
every other tensor renamed to a short fixed-width name (`names`: short name → the source's name), constants
folded and Identity/Constant debris and BatchNorm folded away (onnxruntime's basic graph optimizations, written
offline), the QNN rewrites applied, shapes inferred. Output bytes depend only on the inputs: fixed file names,
no metadata, no timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qnnbuild.common import memory
from qnnbuild.errors import StageFailed

# tf2onnx's own names carry a process-wide counter (`Relu6_min__15`), and its duplicate-constant merge keeps one
# of several such names at random: not a source name, so `names` leaves them out (the short name stands)
TF2ONNX_MADE_UP = re.compile(r"__\d+(:\d+)?$")
SHAPE_OPS = ("Shape", "Size", "Range", "ConstantOfShape")  # computations on shapes: constants once shapes are fixed


@dataclass
class Cleaned:
    model: Any  # onnx.ModelProto
    io: dict[str, Any]  # io_spec of the model, with `source_name` where an I/O name was changed, and `nodes`
    names: dict[str, str]  # short tensor name → the source model's name
    rewrites: list[dict[str, Any]]


def _fold(fixed: list[Path], scratch: Path) -> Any:
    """onnxruntime's basic optimizations (constant folding, Identity/Constant removal, BatchNorm into Conv),
    written offline: the same folding the quantizer and QNN would otherwise each do their own way. `fixed`: the
    files of the model to fold (its .onnx, then its data file if it has one), removed once read."""
    import onnx

    from qnnbuild.toolchain.graph import onnxfile
    from qnnbuild.toolchain.runtime.qnn import ort

    rt = ort()
    so = rt.SessionOptions()
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_BASIC
    optimized = [scratch / "optimized.onnx", scratch / "optimized.onnx.data"]
    so.optimized_model_filepath = str(optimized[0])
    if len(fixed) > 1:  # weights in a data file: onnxruntime cannot write them as one protobuf either
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized[1].name)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                    str(onnxfile.SMALLEST))
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "1")  # never run: packed weights are a copy
    rt.InferenceSession(str(fixed[0]), so, providers=["CPUExecutionProvider"])
    memory.trim()  # the session's copy of the weights is gone
    _discard(fixed)  # scratch copies go once read: an LLM's weights are GBs each
    folded = onnx.load(str(optimized[0]))
    _discard(optimized)
    return folded


def _load(raw: Path, scratch: Path) -> tuple[Any, Path]:
    """`raw` → (its model, where the fixed copy goes). A scratch file's weights stay in its data file, unread:
    the fixed copy goes beside it and refers to that file, so the weights are first read by the fold. A user's
    file (an `onnx:` source) is read whole, its folder not ours to write in."""
    import onnx

    if raw.resolve().is_relative_to(scratch.resolve()):
        return onnx.load(str(raw), load_external_data=False), raw.with_name("fixed.onnx")
    return onnx.load(str(raw)), scratch / "fixed.onnx"


def _discard(files: list[Path]) -> None:
    for file in files:
        file.unlink(missing_ok=True)


def _prepare(raw: Path, scratch: Path, shapes: dict[str, list[int]], say: Callable[[str], None]
             ) -> tuple[list[Path], dict[str, str], list[dict[str, Any]], Any]:
    """The source at the fixed shapes, with safe names, named nodes and the rewrites before folding, written
    for the fold: (its files, the renamed tensors, the rewrites applied, the check that follows them)."""
    from qnnbuild.toolchain.graph import onnxfile, onnxgraph, rewrites
    from qnnbuild.toolchain.graph.rewritecheck import RewriteCheck

    model, fixed_path = _load(raw, scratch)
    problems = onnxgraph.fix_input_shapes(model, shapes)
    if problems:
        raise StageFailed("; ".join(problems))
    renamed = onnxgraph.rename_tensors(model)
    if renamed:
        say(f"renamed {len(renamed)} tensors with unsafe names")
    onnxgraph.name_nodes(model)
    check = RewriteCheck(model)
    applied = rewrites.before_folding(model, check)
    del model.metadata_props[:]
    model.doc_string = ""
    model.graph.doc_string = ""
    fixed = onnxfile.save(model, fixed_path, external=True)  # so that the model can go before the fold reads it
    del model  # one copy of the weights at a time: an LLM's are most of the stage's memory
    memory.trim()
    return fixed, renamed, applied, check


def clean(raw: Path, scratch: Path, shapes: dict[str, list[int]], say: Callable[[str], None], *,
          mask_value: float, made_up: re.Pattern[str] | None = None,
          phase: Callable[[str], None] = lambda step: None) -> Cleaned:
    """`mask_value`: what an attention mask's "minus infinity" becomes; `made_up`: names the converter invented
    (left out of `names`); `phase` hears each step as it starts (minutes each for a 1 B LLM)."""
    import onnx

    from qnnbuild.toolchain.graph import onnxfile, onnxgraph, rewrites

    phase("reading the graph")
    fixed, renamed, applied, check = _prepare(raw, scratch, shapes, say)
    phase("folding constants (onnxruntime)")
    folded = _fold(fixed, scratch)
    check.rebase(folded)
    phase("rewrites after folding")
    model, fused = rewrites.after_folding(folded, mask_value, check)
    del folded
    applied += fused
    for step in applied:
        say(f"rewrite {step['rewrite']}: {', '.join(step['nodes'][:8])}")
    onnxgraph.name_nodes(model)
    source = {new: old for old, new in renamed.items()}
    short = onnxgraph.short_names(model)
    names = {new: source.get(old, old) for new, old in short.items()
             if not (made_up and made_up.search(source.get(old, old)))}
    del model.metadata_props[:]
    model.producer_name, model.producer_version = "qnnbuild", ""
    del model.graph.value_info[:]
    phase("writing the renamed graph")
    named = onnxfile.save(model, scratch / "named.onnx", external=True)
    del model
    memory.trim()
    phase("inferring shapes")
    model = onnxgraph.infer_shapes_file(named[0], scratch / "typed.onnx")  # typed.onnx reads named's data file
    computed = [f"{n.name} ({n.op_type})" for n in model.graph.node if n.op_type in SHAPE_OPS]
    if computed:  # every model of the exporter corpus folds to none (tests/test_exporter_corpus.py)
        say(f"warning: shape computations left after folding at the fixed shapes: {', '.join(computed[:8])}")
    debris = [n.name for n in model.graph.node if n.op_type in ("Constant", "Identity")]
    if debris:
        say(f"left in the graph: {', '.join(debris)}")
    phase("checking the model")
    onnx.checker.check_model(str(scratch / "typed.onnx"))  # by path: onnx reads it, no copy of ours
    _discard([scratch / "typed.onnx", *named])
    spec = onnxgraph.io_spec(model)
    for value in [*spec["inputs"], *spec["outputs"]]:
        if value["name"] in source:
            value["source_name"] = source[value["name"]]
    say(f"model.onnx: {len(model.graph.node)} nodes; inputs {spec['inputs']}")
    return Cleaned(model, {**spec, "nodes": len(model.graph.node)}, names, applied)
