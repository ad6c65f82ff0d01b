"""Every class of recipe error, with its exact message, file:line:col and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qnnbuild.engine.recipe.checks import load_recipe
from qnnbuild.errors import RecipeError
from tests.conftest import CLI, write

HEAD = "schema_version: 1\nrecipe: r\ntargets: [SM8650]\nstages:\n"


def problems(tmp_path: Path, stages: str, head: str = HEAD) -> list[str]:
    (tmp_path / "model.onnx").write_bytes(b"")
    path = write(tmp_path, "r.yaml", head + stages)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, "r.yaml")
    return [str(p) for p in info.value.problems]


def test_valid_recipe_fills_defaults(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    path = write(tmp_path, "r.yaml", HEAD + "  e: {kind: export, onnx: model.onnx}\n  q: {kind: quantize, model: e}\n")
    recipe = load_recipe(path)
    assert recipe.stages["q"].params["activations"] == "uint8"
    assert recipe.stages["q"].params["calibration"] == {"synthetic": {"count": 16, "seed": 0}}
    assert recipe.stages["q"].refs == {"model": "e"}
    assert recipe.stages["e"].files == {"onnx": (tmp_path / "model.onnx").resolve()}


def test_unknown_key(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, onnx: model.onnx, colour: red}\n") == [
        "r.yaml:5:39: stages.e.colour: unknown key 'colour'; allowed: after, checkpoint, exporter, gguf, hf, inputs, "
        "keras, kind, layout, llm, mask_value, min_fidelity_db, onnx, opset, outputs, saved_model, sources, task, tflite, "
        "torch"]


def test_bad_enum_value(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, onnx: model.onnx}\n  q: {kind: quantize, model: e, activations: int9}\n"
                    ) == ["r.yaml:6:46: stages.q.activations: 'int9' is not one of ['uint8', 'uint16']"]


def test_missing_required_and_schema_version(tmp_path: Path) -> None:
    assert problems(tmp_path, "  c: {kind: convert}\n", head="recipe: r\ntargets: [SM8650]\nstages:\n") == [
        "r.yaml:1:1: 'schema_version' is a required property",
        "r.yaml:4:6: stages.c: 'model' is a required property"]


def test_unknown_kind(tmp_path: Path) -> None:
    assert problems(tmp_path, "  c: {kind: frobnicate}\n") == [
        "r.yaml:5:13: stages.c.kind: 'frobnicate' is not one of ['command', 'compile', 'context-binary', "
        "'convert', 'export', 'layer-error', 'llm-part', 'profile', 'quantize', 'validate']"]


def test_unknown_stage_reference(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, onnx: model.onnx}\n  q: {kind: quantize, model: exprt}\n") == [
        "r.yaml:6:30: stages.q.model: unknown stage 'exprt'; stages: e, q"]


def test_cycle_names_its_stages(tmp_path: Path) -> None:
    assert problems(tmp_path, "  a: {kind: command, argv: [x], outputs: [o], after: [b]}\n"
                              "  b: {kind: command, argv: [x], outputs: [o], uses: {p: a}}\n") == [
        "r.yaml:5:3: stages.a: stages form a cycle: a → b → a"]


def test_unknown_target(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, onnx: model.onnx}\n",
                    head="schema_version: 1\nrecipe: r\ntargets: [SM8650, SM9999]\nstages:\n") == [
        "r.yaml:3:19: targets[1]: unknown target 'SM9999'; known: SM8350, SM8450, SM8475, SM8550, SM8650, "
        "SC8380XP, SM8635, SM8750, SM7675, SM8850, SC8480XP, SM8845"]


def test_missing_input_file(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, onnx: nope.onnx}\n") == [
        f"r.yaml:5:27: stages.e.onnx: file not found: nope.onnx (looked in {tmp_path.resolve()})"]


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "x" * 65])
def test_recipe_name_cannot_escape_the_artifacts_folder(tmp_path: Path, name: str) -> None:
    head = f"schema_version: 1\nrecipe: '{name}'\nstages:\n"
    assert problems(tmp_path, "  e: {kind: export, onnx: model.onnx}\n", head=head) == [
        f"r.yaml:2:9: recipe: '{name}' is not a valid name: use letters, digits, '_' and '-' (at most 64), "
        "starting with a letter or digit"]


def test_stage_name_and_output_name_cannot_escape(tmp_path: Path) -> None:
    assert problems(tmp_path, "  ../x: {kind: command, argv: [x], outputs: [o]}\n"
                              "  c: {kind: command, argv: [x], outputs: [../o, /etc/passwd]}\n") == [
        "r.yaml:5:3: stages.../x: stage '../x' is not a valid name: use letters, digits, '_' and '-' (at most 64), "
        "starting with a letter or digit",
        "r.yaml:6:43: stages.c.outputs[0]: output '../o' must be a relative path inside the stage's folder",
        "r.yaml:6:49: stages.c.outputs[1]: output '/etc/passwd' must be a relative path inside the stage's folder"]


def test_torch_factory_must_be_module_callable(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, torch: 'os.system(1)', inputs: {x: [1]}}\n") == [
        "r.yaml:5:28: stages.e.torch: 'os.system(1)' is not a torch factory: write \"package.module:callable\""]


def test_compile_needs_targets(tmp_path: Path) -> None:
    assert problems(tmp_path, "  e: {kind: export, onnx: model.onnx}\n  c: {kind: compile, model: e}\n",
                    head="schema_version: 1\nrecipe: r\nstages:\n") == [
        "r.yaml:5:13: stages.c.kind: a compile stage builds per target, but the recipe lists no targets"]


def test_command_placeholders_must_be_declared(tmp_path: Path) -> None:
    assert problems(tmp_path, "  c: {kind: command, argv: [x, '{inputs.src}', '{params}'], outputs: [o]}\n") == [
        "r.yaml:5:32: stages.c.argv[1]: placeholder {inputs.src} names nothing declared under inputs",
        "r.yaml:5:48: stages.c.argv[2]: placeholder {params} needs a name, e.g. {params.NAME}"]


def test_all_problems_at_once_exit_2_no_traceback(tmp_path: Path, cli: CLI) -> None:
    write(tmp_path, "r.yaml", HEAD + "  e: {kind: export, onnx: nope.onnx, colour: red}\n  q: {kind: quantize, model: x}\n")
    code, out, err = cli("run", "r.yaml")
    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == "qnnbuild: 3 problems in the recipe"
    assert "Traceback" not in err
    code, _, err = cli("status", "missing.yaml")
    assert (code, err) == (2, "missing.yaml:1:1: cannot read recipe: No such file or directory\n"
                              "qnnbuild: 1 problem in the recipe\n")


def test_debug_shows_the_traceback(tmp_path: Path, cli: CLI) -> None:
    write(tmp_path, "r.yaml", HEAD + "  q: {kind: quantize, model: x}\n")
    with pytest.raises(RecipeError):
        cli("run", "r.yaml", "--debug")


def test_thousands_of_problems_print_a_bounded_list(tmp_path: Path, cli: CLI) -> None:
    """20,000 problems: the first 50 of the file, in its order, and a last line saying the check stopped."""
    stages = "".join(f"  s{i}: {{kind: export, onnx: missing{i}.onnx, bogus: 1}}\n" for i in range(10000))
    write(tmp_path, "big.yaml", f"schema_version: 1\nrecipe: big\nstages:\n{stages}")
    code, out, err = cli("run", "big.yaml")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 52
    assert lines[0].startswith("big.yaml:4:")
    assert [int(line.split(":")[1]) for line in lines[:50]] == sorted(int(line.split(":")[1]) for line in lines[:50])
    assert lines[50].endswith("… stopped after the first 50 problems; fix these and run again")
    assert lines[51] == "qnnbuild: 51 problems in the recipe"
    assert len(err) < 15_000  # 52 lines, however many problems the file has
    code, out, err = cli("run", "big.yaml", "--json")
    assert code == 2
    problems = json.loads(out)["problems"]
    assert len(problems) == 51
    assert problems[0]["file"] == "big.yaml" and problems[0]["line"] == 4
    assert [p["path"] for p in problems if p["line"] == 4] == ["stages.s0.bogus"]  # file checks wait for these
