"""Key sensitivity, by mutation, for every stage kind: each parameter its schema declares is changed (within the
schema) and the key must change, unless the kind declares it unkeyed, and then the outputs' bytes must not
change (built twice here); each declared input file is rewritten and the key must change. A parameter added to
a kind's schema that this table cannot mutate fails the test: give it a case in MUTATIONS.

Simple parameters (enums, booleans, bounded numbers) are mutated from the schema itself; the rest by the table.
Keys are computed as a run computes them (Session.keying), without building, so every kind and parameter
costs microseconds; profile, declared not reproducible, is only ever compared by key here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import make_conv_model, run_process

RECIPE = """\
schema_version: 1
recipe: keys
targets: [SM8650]
stages:
  export:   {kind: export, onnx: model.onnx}
  other:    {kind: export, onnx: other.onnx}
  quantize: {kind: quantize, model: export, calibration: {npy: {dir: data, count: 2}}}
  convert:  {kind: convert, model: quantize}
  compile:  {kind: compile, model: quantize}
  parts:    {kind: compile, model: quantize, parts: 2}
  context:  {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, quantized: quantize, data: {npy: {dir: data}}}
  layers:   {kind: layer-error, model: quantize, reference: export, data: {npy: {dir: data, count: 2}}}
  profile:  {kind: profile, context: context, model: quantize, runs: 2, warmup: 1}
  notes:    {kind: command, argv: [cp, "{inputs.text}", "{out.copy.txt}"], inputs: {text: notes.txt},
             outputs: [copy.txt]}
"""

# (kind, parameter) → a value different from the base recipe's, valid for the schema
MUTATIONS: dict[tuple[str, str], Any] = {
    ("export", "torch"): "factory:build",
    ("export", "checkpoint"): "weights.pt",
    ("export", "onnx"): "other.onnx",
    ("export", "hf"): "hf-folder",
    ("export", "gguf"): "model.gguf",
    ("export", "keras"): "model.keras",
    ("export", "saved_model"): "saved",
    ("export", "tflite"): "model.tflite",
    ("export", "inputs"): {"input": [1, 3, 8, 8]},
    ("export", "outputs"): ["output"],
    ("export", "llm"): {"context_length": 64, "prefill": 16},
    ("export", "sources"): ["helpers.py"],
    ("quantize", "model"): "other",
    ("quantize", "calibration"): {"synthetic": {"count": 3, "seed": 1}},
    ("quantize", "keep_8bit"): ["lm_head"],
    ("quantize", "overrides"): {"input": {"type": "uint16"}},
    ("quantize", "encodings"): "encodings.json",
    ("quantize", "technique"): "cle",
    ("quantize", "auto_precision"): {"min_sqnr_db": 30},
    ("convert", "model"): "other",
    ("llm-part", "model"): "other",
    ("compile", "model"): "other",
    ("context-binary", "compiled"): "parts",
    ("validate", "context"): "parts",
    ("validate", "reference"): "other",
    ("validate", "quantized"): "other",
    ("validate", "data"): {"synthetic": {"count": 3, "seed": 7}},
    ("validate", "generate"): {"prompts": 1, "tokens": 4},
    ("layer-error", "model"): "other",
    ("layer-error", "reference"): "other",
    ("layer-error", "data"): {"synthetic": {"count": 3, "seed": 7}},
    ("profile", "context"): "parts",
    ("profile", "model"): "other",
    ("command", "argv"): ["cp", "{inputs.text}", "{out.other.txt}"],
    ("command", "inputs"): {"text": "other.onnx"},
    ("command", "uses"): {"model": "export"},
    ("command", "outputs"): ["copy.txt", "more.txt"],
    ("command", "params"): {"level": 2},
}


def auto(spec: dict[str, Any], current: Any) -> Any:
    """Another valid value of a simple parameter, read from its schema; None when it is not simple."""
    if "enum" in spec:
        return next((v for v in spec["enum"] if v != current), None)
    kind = spec.get("type")
    if kind == "boolean":
        return not current
    if kind in ("integer", "number"):
        low = spec.get("minimum", spec.get("exclusiveMinimum", 0))
        high = spec.get("maximum", spec.get("exclusiveMaximum", low + 1000))
        base = current if isinstance(current, (int, float)) and not isinstance(current, bool) else low
        step = 1 if kind == "integer" else 0.5
        value = base + step if base + step < high or (base + step == high and "maximum" in spec) else base - step
        return value if value > low or (value == low and "minimum" in spec) else None
    return None


def project(folder: Path) -> Path:
    make_conv_model(folder / "model.onnx")
    make_conv_model(folder / "other.onnx", seed=1)
    (folder / "data").mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        np.save(folder / "data" / f"{i}.npy", rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    (folder / "notes.txt").write_text("notes\n")
    (folder / "keys.yaml").write_text(RECIPE)
    return folder


def keying(folder: Path) -> tuple[Any, Any]:
    from qnnbuild.engine.build.session import Session
    from qnnbuild.engine.recipe.plancache import load_plan

    plan = load_plan(str(folder / "keys.yaml"), folder / "artifacts", cached=False)
    return plan, Session(plan, folder / "artifacts", readonly=True).keying


def key(keys: Any, inst: Any) -> str:
    from qnnbuild.engine.keys.document import key_of

    return key_of(keys.declared_document(inst, {name: "0" * 64 for name in inst.inputs}))


def test_every_parameter_of_every_kind_moves_the_key(tmp_path: Path) -> None:
    from qnnbuild.engine.recipe.schema import stage_schema
    from qnnbuild.stages import KINDS

    plan, keys = keying(project(tmp_path))
    seen_kinds = {inst.kind for inst in plan.instances}
    assert seen_kinds == set(KINDS), f"the base recipe has no instance of {set(KINDS) - seen_kinds}"
    uncovered, unmoved, tried = [], [], 0
    for kind_name in sorted(KINDS):
        kind = KINDS[kind_name]
        inst = next(i for i in plan.instances if i.kind == kind_name)
        base = key(keys, inst)
        for param, spec in stage_schema(kind_name)["properties"].items():
            if param in ("kind", "after"):
                continue
            value = MUTATIONS.get((kind_name, param), auto(spec, inst.params.get(param)))
            if value is None:
                uncovered.append(f"{kind_name}.{param}")
                continue
            tried += 1
            changed = key(keys, dataclasses.replace(inst, params={**inst.params, param: value}))
            if param in kind.unkeyed:
                assert changed == base, f"{kind_name}.{param} is declared unkeyed but moves the key"
            elif changed == base:
                unmoved.append(f"{kind_name}.{param}")
    assert not uncovered, f"parameters with no mutation (add them to MUTATIONS): {uncovered}"
    assert not unmoved, f"keyed parameters whose change leaves the key: {unmoved}"
    assert tried > 60


def test_every_declared_input_file_moves_the_key(tmp_path: Path) -> None:
    """Rewriting any file a stage declares (a model, a data folder's file, a command's input) changes its key."""
    folder = project(tmp_path)
    plan, keys = keying(folder)
    declared = [(inst, Path(path)) for inst in plan.instances for path in inst.files.values()]
    assert {inst.kind for inst, _ in declared} >= {"export", "quantize", "validate", "layer-error", "command"}
    for inst, path in declared:
        before = key(keys, inst)
        target = next(p for p in sorted(path.rglob("*")) if p.is_file()) if path.is_dir() else path
        original = target.read_bytes()
        target.write_bytes(original + b"\0")
        _, fresh = keying(folder)  # a new run: the stat cache sees the new size
        assert key(fresh, inst) != before, f"{inst.id}: rewriting {target.name} left its key"
        target.write_bytes(original)


@pytest.mark.parametrize("stage", ["validate", "layers"])
def test_an_unkeyed_parameter_never_changes_the_outputs(tmp_path: Path, stage: str) -> None:
    """`workers` is left out of the key: the same bytes in one process and in two shards."""
    folder = project(tmp_path)
    only = ["--only", stage]
    proc = run_process(["run", "keys.yaml", *only, "--json"], folder)
    assert proc.returncode == 0, proc.stderr
    outputs = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
    [target] = [i for i in outputs if i.split("[")[0] == stage]
    view = folder / "artifacts/keys" / stage / (target.split("[")[1].rstrip("]") if "[" in target else "")
    first = {p.name: p.read_bytes() for p in sorted(view.iterdir()) if p.is_file()}
    recipe = (folder / "keys.yaml").read_text()
    line = next(x for x in recipe.splitlines() if x.startswith(f"  {stage}:"))
    (folder / "keys.yaml").write_text(recipe.replace(line, line[:-1] + ", workers: 2}"))
    proc = run_process(["run", "keys.yaml", *only, "--force", stage, "--json"], folder)
    assert proc.returncode == 0, proc.stderr
    again = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
    assert again[target]["status"] == "ran" and again[target]["key"] == outputs[target]["key"]
    assert {p.name: p.read_bytes() for p in sorted(view.iterdir()) if p.is_file()} == first
