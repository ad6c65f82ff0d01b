from __future__ import annotations

from pathlib import Path

from qnnbuild.engine.recipe.checks import load_recipe
from qnnbuild.engine.recipe.plan import plan_of, render
from tests.conftest import write

RECIPE = """\
schema_version: 1
recipe: g
targets: [SM8650, SM8750]
stages:
  export: {kind: export, onnx: m.onnx}
  q8: {kind: quantize, model: export}
  q16: {kind: quantize, model: export, activations: uint16}
  convert: {kind: convert, model: q8}
  compile: {kind: compile, model: q8, after: [convert]}
  compile16: {kind: compile, model: q16}
  context: {kind: context-binary, compiled: compile}
"""


def plan(tmp_path: Path):
    (tmp_path / "m.onnx").write_bytes(b"")
    return plan_of(load_recipe(write(tmp_path, "g.yaml", RECIPE)))


def test_fan_out_per_target_from_compile_downstream(tmp_path: Path) -> None:
    p = plan(tmp_path)
    ids = [i.id for i in p.instances]
    assert ids == ["export", "q16", "compile16[SM8650]", "compile16[SM8750]", "q8", "convert", "compile[SM8650]",
                   "compile[SM8750]", "context[SM8650]", "context[SM8750]"]
    by_id = p.by_id()
    assert by_id["context[SM8750]"].inputs == {"compiled": "compile[SM8750]"}
    assert by_id["compile[SM8650]"].after == ("convert",)
    assert by_id["compile[SM8650]"].target == "SM8650"
    assert by_id["q8"].target is None


def test_generations_and_up_down_stream(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert p.generations[0] == ("export",)
    assert set(p.generations[1]) == {"q16", "q8"}
    assert p.downstream({"q8"}) == {"q8", "convert", "compile[SM8650]", "compile[SM8750]", "context[SM8650]",
                                    "context[SM8750]"}
    assert p.upstream({"context[SM8650]"}) == {"context[SM8650]", "compile[SM8650]", "q8", "convert", "export"}


def test_renderings(tmp_path: Path) -> None:
    p = plan(tmp_path)
    text = render(p, "text")
    assert text.splitlines()[0] == "g: 10 stage instances in 5 generations"
    assert "compile[SM8650]" in text
    mermaid = render(p, "mermaid")
    assert mermaid.startswith("flowchart LR\n") and "-.->" in mermaid
    dot = render(p, "dot")
    assert '"q8" -> "compile[SM8650]";' in dot and '"convert" -> "compile[SM8650]" [style=dashed];' in dot


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    from qnnbuild.engine.recipe.plan import Plan

    p = plan(tmp_path)
    assert Plan.from_json(p.to_json()) == p
