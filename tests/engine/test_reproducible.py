"""Two clean builds of one recipe, in two folders, agree on every key and every output byte, and
`verify --rebuild` holds: keyed outputs carry no wall-clock figures (validate's samples/s, a TF conversion's
seconds), which would otherwise change every key downstream of them between two machines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE, make_conv_model, run_process

VALIDATE = TINY_RECIPE + "  validate: {kind: validate, context: context, reference: export, quantized: quantize}\n"


def _build_twice(tmp_path: Path, make: object, recipe: str) -> tuple[dict[str, object], dict[str, object]]:
    locks = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        make(folder)  # type: ignore[operator]
        (folder / "r.yaml").write_text(recipe)
        proc = run_process(["run", "r.yaml"], folder)
        assert proc.returncode == 0, proc.stderr
        lock = json.loads(next((folder / "artifacts").glob("*/qnnbuild.lock")).read_text())
        locks.append({i: (e["key"], e["outputs"]) for i, e in lock["instances"].items()})
    return locks[0], locks[1]


def _assert_equal_and_verified(tmp_path: Path, a: dict[str, object], b: dict[str, object]) -> None:
    assert a == b
    proc = run_process(["verify", "r.yaml", "--rebuild"], tmp_path / "a")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DIFFERENT" not in proc.stdout


def test_recipe_with_validate_reproduces_in_two_folders(tmp_path: Path) -> None:
    a, b = _build_twice(tmp_path, lambda f: make_conv_model(f / "model.onnx"), VALIDATE)
    assert "validate[SM8650]" in a
    _assert_equal_and_verified(tmp_path, a, b)


@pytest.mark.slow
def test_tf_source_reproduces_in_two_folders(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from tests.stages.test_tf_sources import keras_cnn

    (tmp_path / "src").mkdir()
    keras_cnn(tmp_path / "src")
    recipe = """\
schema_version: 1
recipe: tf
targets: [SM8650]
stages:
  export: {kind: export, keras: cnn.keras}
  quantize: {kind: quantize, model: export}
  compile: {kind: compile, model: quantize}
"""
    a, b = _build_twice(tmp_path, lambda f: shutil.copy(tmp_path / "src" / "cnn.keras", f), recipe)
    _assert_equal_and_verified(tmp_path, a, b)
