"""`convert`: QDQ model → the QNN graph, written by QNN's own IR backend: model.dlc, model_net.json and an
op report. This is where a model QNN cannot take fails, early, with the refused nodes, their op types, QNN's
reasons and the target that refused them: the model is judged against every target of the recipe (a node
QNN's default HTP refuses may build for SM8650), by the cheapest HTP finalize for each.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import StageKind, StageRun, refs_of

FLOAT_TYPES = {0x0232: "float32", 0x0216: "float16"}  # QNN_DATATYPE_FLOAT_32 / _16
DLC_TIMESTAMP = re.compile(rb'"timestamp": "\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"')
FIXED_TIMESTAMP = b'"timestamp": "1980-01-01 00:00:00 UTC"'  # the zip entries' own date


def reproducible_dlc(data: bytes) -> bytes:
    """The DLC with its generation timestamps fixed, so equal inputs give equal bytes.

    A DLC is a stored (uncompressed) zip whose metadata entries carry the wall-clock time of generation.
    The replacement has the same length, so no offset or size in the archive moves; QNN writes CRC 0 for
    every entry (its reader does not check them), so no checksum goes stale either.
    """
    fixed, count = DLC_TIMESTAMP.subn(FIXED_TIMESTAMP, data)
    if count == 0:
        raise StageFailed("the DLC carries no generation timestamp where one was expected; QNN's format changed")
    return fixed



def target_options(target: dict[str, Any] | None) -> dict[str, str]:
    """Ask QNN about this part; finalization mode 1 is the cheapest finalize (op creation does not depend on
    it), so the check costs a fraction of a compile. No target: QNN's default HTP."""
    if target is None:
        return {}
    return {"soc_model": str(target["soc_model"]), "htp_arch": str(target["htp_arch"]),
            "htp_graph_finalization_optimization_mode": "1"}


def judge(model: str, targets: list[dict[str, Any]], say: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every recipe target's verdict: refused nodes (each naming its target, its input shapes and the rewrite
    export tried) and nodes on QNN per target."""
    from qnnbuild.toolchain.graph import refusals
    from qnnbuild.toolchain.runtime import assignment

    refused: list[dict[str, Any]] = []
    on_qnn: dict[str, int] = {}
    asked: list[dict[str, Any] | None] = [*targets] or [None]
    for target in asked:
        name = target["name"] if target else "default HTP"
        nodes, on_qnn[name] = assignment.refused_nodes(model, target_options(target))
        say(f"{name}: {on_qnn[name]} nodes on QNN, {len(nodes)} refused")
        refused += [{**node, "target": name} for node in refusals.annotate(model, nodes)]
    return refused, on_qnn


def _refusal_message(refused: list[dict[str, Any]]) -> str:
    from qnnbuild.toolchain.runtime import qnn

    by_target: dict[str, list[dict[str, str]]] = {}
    for node in refused:
        by_target.setdefault(node["target"], []).append(node)
    parts = [f"for {target}: {len(nodes)} node(s): {qnn.describe(nodes)}" for target, nodes in by_target.items()]
    return "QNN cannot take the model " + "; ".join(parts)


def op_report(graph: dict[str, Any]) -> dict[str, Any]:
    nodes = graph["graph"]["nodes"]
    tensors = graph["graph"]["tensors"]
    histogram = Counter(n["type"] for n in nodes.values())
    float_ops = []
    for name, node in nodes.items():
        if node["type"] in ("Quantize", "Dequantize", "Convert", "Cast"):
            continue
        types = {FLOAT_TYPES.get(tensors[o]["data_type"]) for o in node["output_names"] if o in tensors}
        if types - {None}:
            float_ops.append({"name": name, "type": node["type"]})
    return {"ops": len(nodes), "histogram": dict(sorted(histogram.items())),
            "transposes": sorted(n for n, v in nodes.items() if v["type"] == "Transpose"),
            "float_ops": float_ops, "macs": graph.get("Total MACs per inference"),
            "parameters": graph.get("Total parameters")}


def run(ctx: StageRun) -> None:
    from qnnbuild.toolchain.graph import onnxfile
    from qnnbuild.toolchain.runtime import qnn

    source = ctx.inputs["model"] / "model.qdq.onnx"
    with tempfile.TemporaryDirectory(prefix="qnnbuild-convert-") as tmp, contextlib.chdir(tmp):
        onnxfile.place(source, Path("model.onnx"))  # a fixed relative name: QNN hashes the path into names
        refused, on_qnn = judge("model.onnx", ctx.targets, ctx.say)
        if refused:
            (ctx.out / "op_report.json").write_text(json.dumps({"refused": refused}, indent=1) + "\n")
            raise StageFailed(_refusal_message(refused))
        Path("dump").mkdir()
        qnn.htp_session("model.onnx", {
            "dump_qnn_ir_dlc": "1", "dump_qnn_ir_dlc_dir": "dump",
            "qnn_ir_backend_path": str(qnn.library_dir() / "libQnnIr.so"),
            "dump_json_qnn_graph": "1", "json_qnn_graph_dir": "dump"})
        dumped = sorted(Path("dump").iterdir())
        dlc = [p for p in dumped if p.suffix == ".dlc"]
        graph_json = [p for p in dumped if p.suffix == ".json" and not p.name.endswith("_tensor_log.json")]
        if len(dlc) != 1 or len(graph_json) != 1:
            raise StageFailed(f"expected one QNN graph, QNN wrote: {', '.join(p.name for p in dumped)}")
        (ctx.out / "model.dlc").write_bytes(reproducible_dlc(dlc[0].read_bytes()))
        graph = json.loads(graph_json[0].read_text())
    (ctx.out / "model_net.json").write_text(json.dumps(graph, indent=1, sort_keys=True) + "\n")
    rewrites = ctx.inputs["model"] / "rewrites.json"
    report = {"onnx_nodes_on_qnn": on_qnn, "refused": [], "targets": sorted(on_qnn),
              "rewrites": json.loads(rewrites.read_text()) if rewrites.is_file() else [], **op_report(graph)}
    (ctx.out / "op_report.json").write_text(json.dumps(report, indent=1) + "\n")
    ctx.say(f"QNN graph: {report['ops']} ops {report['histogram']}; {len(report['transposes'])} transposes, "
            f"{len(report['float_ops'])} float ops")


KIND = StageKind(
    name="convert",
    version=2,
    summary="QDQ model → QNN graph (DLC + JSON, by QNN's IR backend) and an op report",
    params={"model": {"type": "string", "description": "the quantize stage whose model to convert"}},
    required=("model",),
    refs=refs_of("model"),
    tools=("onnx", "onnxruntime", "onnxruntime-qnn"),
    all_targets=True,
    run=run,
)
