"""`qnnbuild diff`: two quantize variants of one model side by side."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CLI, make_conv_model, write

VARIANT = """\
schema_version: 1
recipe: %(name)s
targets: [SM8650]
stages:
  export: {kind: export, onnx: model.onnx}
  quantize: {kind: quantize, model: export, activations: %(activations)s}
  compile: {kind: compile, model: quantize}
  context: {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export}
  profile: {kind: profile, context: context, model: quantize, runs: 2}
"""


def test_diff_two_quantize_variants(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "w8a8.yaml", VARIANT % {"name": "w8a8", "activations": "uint8"})
    write(tmp_path, "w8a16.yaml", VARIANT % {"name": "w8a16", "activations": "uint16"})
    code, _, err = cli("run", "w8a8.yaml", "w8a16.yaml")
    assert code == 0, err
    code, out, err = cli("diff", "w8a8.yaml", "w8a16.yaml", "--json")
    assert code == 0, err
    rows = {(r["target"], r["metric"]): r for r in json.loads(out)["rows"]}
    sqnr = rows[("SM8650", "SQNR output (dB)")]
    assert float(sqnr["b"]) > float(sqnr["a"])  # 16-bit activations are closer to fp32
    assert sqnr["change"].startswith("+")
    assert ("SM8650", "cycles per inference") in rows and ("SM8650", "context binary (kB)") in rows
    code, out, _ = cli("diff", "w8a8.yaml", "artifacts/w8a16/qnnbuild.lock")
    assert code == 0 and "cycles per inference" in out and "w8a16 (artifacts/w8a16/qnnbuild.lock)" in out
    code, _, err = cli("diff", "w8a8.yaml", "nothing.lock")
    assert code == 2 and "nothing.lock: cannot read the lock file" in err
