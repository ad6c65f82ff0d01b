"""One encoder (all-MiniLM-L6-v2, from the wheel the transformer tests use) as exporters other than qnnbuild hand
it over, each built for SM8650 at w8a16 and validated on held-out sentences against its own fp32 export:

- `hf:` with the TorchScript exporter and with `exporter: dynamo`;
- files exported by torch directly with dynamic batch and sequence axes, as Optimum-style exports have them:
  by the dynamo exporter (transformers' mask functions leave a GatherND and softmax NaN guards) and by the
  TorchScript exporter (Shape/Gather/Concat chains);
- the dynamo file with int8 weights dequantized in the graph, by Cast·Mul and by DequantizeLinear.

Every export must leave no shape computation (Shape, Size, Range, ConstantOfShape, Expand) and no GatherND, check every
rewrite it applied (rewrites.json), and every build reach embedding cosine ≥ 0.99 on HTP (the validate gate).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_process
from tests.wheels import minilm_l6_folder

pytest.importorskip("transformers")
pytest.importorskip("torch")
pytestmark = pytest.mark.slow

SEQ = 64
SHAPE_OPS = {"Shape", "Size", "Range", "ConstantOfShape", "Expand", "GatherND", "ScatterND"}
EXPORT = """\
import sys
import torch
from qnnbuild.toolchain.sources.hfexport import import_transformers

folder, dynamo = sys.argv[1], sys.argv[2] == "dynamo"
model = import_transformers().AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


ids = torch.ones(1, 64, dtype=torch.long)
names = ["input_ids", "attention_mask"]
if dynamo:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    torch.onnx.export(Encoder(), (ids, ids), None, input_names=names, output_names=["last_hidden_state"],
                      dynamic_shapes=shapes, dynamo=True, opset_version=18).save("dynamo.onnx")
else:
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(Encoder(), (ids, ids), "torchscript.onnx", input_names=names,
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
"""


def prequantized(source: Path, dest: Path, form: str) -> None:
    """`source` with every MatMul/Gemm weight as int8 (symmetric, per output channel) dequantized in the graph."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    users: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    added = []
    for init in list(graph.initializer):
        ops = users.get(init.name, [])
        if init.data_type != TensorProto.FLOAT or len(init.dims) != 2 or not ops or set(ops) - {"MatMul", "Gemm"}:
            continue
        weights = numpy_helper.to_array(init)
        scale = np.maximum(np.abs(weights).max(axis=0) / 127, 1e-12).astype(np.float32)
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(np.round(weights / scale).astype(np.int8), f"{init.name}_q"),
                                  numpy_helper.from_array(scale, f"{init.name}_scale")])
        if form == "dq":
            added.append(helper.make_node("DequantizeLinear", [f"{init.name}_q", f"{init.name}_scale"], [init.name],
                                          axis=1, name=f"{init.name}_dq"))
        else:
            added += [helper.make_node("Cast", [f"{init.name}_q"], [f"{init.name}_f"], to=TensorProto.FLOAT,
                                       name=f"{init.name}_cast"),
                      helper.make_node("Mul", [f"{init.name}_f", f"{init.name}_scale"], [init.name],
                                       name=f"{init.name}_mul")]
    assert added
    for index, node in enumerate(added):
        graph.node.insert(index, node)
    onnx.save(model, str(dest))


def _chain(name: str, export: str, tokenizer: Path) -> str:
    text = "{text: {file: text.txt, tokenizer: %s, count: %d, skip: %d}}"
    return (f"  {name}: {export}\n"
            f"  {name}_q: {{kind: quantize, model: {name}, precision: w8a16, calibration: {text % (tokenizer, 16, 0)}}}\n"
            f"  {name}_c: {{kind: compile, model: {name}_q}}\n"
            f"  {name}_x: {{kind: context-binary, compiled: {name}_c}}\n"
            f"  {name}_v: {{kind: validate, context: {name}_x, reference: {name}, quantized: {name}_q, "
            f"min_embedding_cosine: 0.99, data: {text % (tokenizer, 8, 16)}}}\n")


def test_every_exporter_builds_for_htp(tmp_path: Path) -> None:
    from tests.hfmodels import stdlib_sentences

    l6 = minilm_l6_folder()
    (tmp_path / "text.txt").write_text("\n".join(stdlib_sentences(24)) + "\n")
    (tmp_path / "export.py").write_text(EXPORT)
    for exporter in ("dynamo", "torchscript"):
        subprocess.run([sys.executable, "export.py", str(l6), exporter], cwd=tmp_path, check=True,
                       capture_output=True)
    prequantized(tmp_path / "dynamo.onnx", tmp_path / "int8_castmul.onnx", "castmul")
    prequantized(tmp_path / "dynamo.onnx", tmp_path / "int8_dq.onnx", "dq")
    fixed = f"inputs: {{input_ids: [1, {SEQ}], attention_mask: [1, {SEQ}]}}"
    exports = {
        "hf_torchscript": f"{{kind: export, hf: {l6}, task: feature-extraction, {fixed}}}",
        "hf_dynamo": f"{{kind: export, hf: {l6}, task: feature-extraction, exporter: dynamo, opset: 18, {fixed}}}",
        **{name: f"{{kind: export, onnx: {name}.onnx, {fixed}}}"
           for name in ("dynamo", "torchscript", "int8_castmul", "int8_dq")},
    }
    recipe = "schema_version: 1\nrecipe: corpus\ntargets: [SM8650]\nstages:\n" + "".join(
        _chain(name, export, l6 / "tokenizer.json") for name, export in exports.items())
    (tmp_path / "corpus.yaml").write_text(recipe)
    proc = run_process(["run", "corpus.yaml", "-j", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import onnx

    figures = {}
    for name in exports:
        folder = tmp_path / "artifacts/corpus" / name
        ops = collections.Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)
        assert not SHAPE_OPS & set(ops), (name, ops)
        applied = json.loads((folder / "rewrites.json").read_text())
        assert all(isinstance(step["check"], dict) for step in applied), (name, applied)
        metrics = json.loads((tmp_path / f"artifacts/corpus/{name}_v/SM8650/metrics.json").read_text())
        figures[name] = {"cosine_htp": metrics["embedding_cosine"]["last_hidden_state"]["htp"],
                         "rewrites": [step["rewrite"] for step in applied]}
        assert figures[name]["cosine_htp"] >= 0.99
    print(json.dumps(figures, indent=1))
    assert "constant-indices" in figures["dynamo"]["rewrites"] and "softmax-nan-guard" in figures["dynamo"]["rewrites"]
    for name in ("int8_castmul", "int8_dq"):
        assert "dequantized-weights" in figures[name]["rewrites"]
        rules = json.loads((tmp_path / f"artifacts/corpus/{name}_q/rules.json").read_text())
        assert any(rule["rule"] == "pre-quantized-weights" for rule in rules)
