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


def test_report_shows_quantize_variants_of_one_recipe(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: v
        targets: [SM8650]
        stages:
          export: {kind: export, onnx: model.onnx}
          w8a8: {kind: quantize, model: export}
          w8a16: {kind: quantize, model: export, activations: uint16}
          c8: {kind: compile, model: w8a8}
          c16: {kind: compile, model: w8a16}
          x8: {kind: context-binary, compiled: c8}
          x16: {kind: context-binary, compiled: c16}
          v8: {kind: validate, context: x8, reference: export}
          v16: {kind: validate, context: x16, reference: export}
          p8: {kind: profile, context: x8, model: w8a8, runs: 2}
          p16: {kind: profile, context: x16, model: w8a16, runs: 2}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    code, _, err = cli("report", "r.yaml")
    assert code == 0, err
    page = (tmp_path / "artifacts/v/report.html").read_text()
    assert "Quantization variants" in page and "<code>w8a8</code>" in page and "<code>w8a16</code>" in page
    assert 'alt="accuracy against cycles"' in page
