"""infer feeds each input in the deliverable's own dtype: int32/int64 ids and unquantized uint8 bytes as
integers (they used to be cast to float32, or fail with KeyError 'scale'), with a clear error for values the
dtype cannot hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.commands.infer import Deployed
from qnnbuild.errors import UsageError
from tests.conftest import run_process

WEIGHTS = np.arange(32, dtype=np.float32).reshape(8, 4) / 100


def integer_input_model(path: Path, dtype: int) -> None:
    nodes = [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("MatMul", ["f", "w"], ["out"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", dtype, [1, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(WEIGHTS, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_integer_inputs_are_fed_as_integers(tmp_path: Path) -> None:
    recipe = "schema_version: 1\nrecipe: ints\ntargets: [SM8650]\nstages:\n"
    for name, dtype in (("i32", TensorProto.INT32), ("u8", TensorProto.UINT8)):
        integer_input_model(tmp_path / f"{name}.onnx", dtype)
        recipe += (f"  {name}: {{kind: export, onnx: {name}.onnx}}\n  {name}_q: {{kind: quantize, model: {name}}}\n"
                   f"  {name}_c: {{kind: compile, model: {name}_q}}\n"
                   f"  {name}_x: {{kind: context-binary, compiled: {name}_c}}\n")
    (tmp_path / "r.yaml").write_text(recipe)
    proc = run_process(["run", "r.yaml"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    ids = np.arange(1, 9).reshape(1, 8)
    expected = ids.astype(np.float32) @ WEIGHTS
    for name in ("i32_x", "u8_x"):
        deployed = Deployed(tmp_path / "artifacts/ints" / name / "SM8650")
        out = deployed.run({"ids": ids})["out"]
        assert np.allclose(out, expected, atol=0.5), (name, out, expected)
        with pytest.raises(UsageError, match="got float64 values with fractions"):
            deployed.run({"ids": ids + 0.5})
        too_big = 300 if name == "u8_x" else 2**40
        with pytest.raises(UsageError, match=rf"got values 2\.\.{too_big}"):
            deployed.run({"ids": np.concatenate([ids[:, 1:], [[too_big]]], axis=1)})


def test_a_build_that_no_longer_matches_its_recipe_is_run_with_a_warning(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """infer and qnnbuild.load() run the deliverable as built, but say when the recipe (or an input) changed
    since: not silently an old model."""
    import qnnbuild
    from tests.conftest import TINY_RECIPE, make_conv_model, write

    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "tiny.yaml", TINY_RECIPE)
    assert run_process(["run", "tiny.yaml"], tmp_path).returncode == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    args = ["infer", "tiny.yaml", "--target", "SM8650", "--input", "x.npy"]
    proc = run_process(args, tmp_path)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    write(tmp_path, "tiny.yaml", TINY_RECIPE.replace("seed: 0", "seed: 1"))  # quantize's key moves
    proc = run_process(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "qnnbuild: warning:" in proc.stderr and "out of date: quantize" in proc.stderr
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="out of date: quantize"):
        qnnbuild.load("tiny.yaml", "SM8650")
