"""Several recipes in one run: one doit run, identical keys built once, one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import make_conv_model, run_process, write

STAGES = """\
stages:
  export:   {kind: export, onnx: model.onnx}
  quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 2}}}
  compile:  {kind: compile, model: quantize}
"""


def test_two_recipes_share_their_common_stages(tmp_path: Path) -> None:
    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "a.yaml", f"schema_version: 1\nrecipe: a\ntargets: [SM8650]\n{STAGES}")
    write(tmp_path, "b.yaml", f"schema_version: 1\nrecipe: b\ntargets: [SM8650, SM8550]\n{STAGES}")
    proc = run_process(["run", "a.yaml", "b.yaml", "--json", "-j", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and [r["recipe"] for r in out["recipes"]] == ["a", "b"]
    by = {(r["recipe"], s["id"]): s for r in out["recipes"] for s in r["stages"]}
    # export, quantize and compile[SM8650] have one key across both recipes: each is built once
    for stage in ("export", "quantize", "compile[SM8650]"):
        assert by[("a", stage)]["key"] == by[("b", stage)]["key"]
        assert sorted([by[("a", stage)]["status"], by[("b", stage)]["status"]]) == ["cached", "ran"], stage
    assert by[("b", "compile[SM8550]")]["status"] == "ran"
    assert "b:compile[SM8550]" in proc.stderr and "a:export" in proc.stderr
    assert len(list((tmp_path / "artifacts/.store").glob("[0-9a-f]" * 64))) == 4
    for recipe in ("a", "b"):
        assert (tmp_path / f"artifacts/{recipe}/qnnbuild.lock").is_file()
        assert (tmp_path / f"artifacts/{recipe}/compile/SM8650/model_ctx.onnx").is_file()
    proc = run_process(["run", "a.yaml", "b.yaml", "--json"], tmp_path)  # the no-op over both
    statuses = {s["status"] for r in json.loads(proc.stdout)["recipes"] for s in r["stages"]}
    assert statuses == {"cached"}
    proc = run_process(["run", "a.yaml", "a.yaml"], tmp_path)
    assert proc.returncode == 2 and "two recipes are named a" in proc.stderr
