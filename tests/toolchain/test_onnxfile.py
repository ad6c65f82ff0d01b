"""ONNX files with their weights beside them (toolchain/graph/onnxfile.py): written, carried and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from qnnbuild.toolchain.graph import onnxfile  # noqa: E402


def matmul(weight: np.ndarray) -> object:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="m")], "g",
                              [helper.make_tensor_value_info("x", 1, [1, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", 1, [1, weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_large_graph_is_written_beside_its_data_and_carried_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    weight = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 100
    x = np.ones((1, 64), np.float32)
    small = tmp_path / "small.onnx"
    onnxfile.save(matmul(weight), small)
    assert not onnxfile.is_external(small) and not small.with_name("small.onnx.data").exists()

    monkeypatch.setattr(onnxfile, "LARGE", 1000)  # the rule is size: this weight (8 kB) now counts as large
    big = tmp_path / "a" / "model.onnx"
    big.parent.mkdir()
    monkeypatch.chdir(big.parent)  # onnx looks for an existing data file in the working directory: not a trap
    (big.parent / "model.onnx.data").write_bytes(b"left over")  # an earlier file is replaced, not appended to
    onnxfile.save(matmul(weight), big)
    assert onnxfile.data_files(big) == [big.parent / "model.onnx.data"]
    assert (big.parent / "model.onnx.data").stat().st_size == weight.nbytes
    assert onnxfile.weight_bytes(onnx.load(str(big), load_external_data=False)) == weight.nbytes

    copied = tmp_path / "c" / "other.onnx"
    onnxfile.place(big, copied)
    assert (copied.parent / "model.onnx.data").stat().st_nlink == 1  # onnx refuses a data file with a second link
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(str(copied)).graph.initializer[0]), weight)
    expected = x @ weight
    for path in (small, big, copied):
        np.testing.assert_allclose(run(path, x), expected, rtol=1e-6)


def test_weights_attached_one_at_a_time_then_a_part_read_alone(tmp_path: Path) -> None:
    """attach gives a graph exported without its parameters its weights (the LLM export); load_data reads a cut
    down graph's own weights and no others (an llm-part)."""
    weight = np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32)
    bias = np.full((1, 32), 0.5, np.float32)  # under SMALLEST: stays inside the .onnx
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="m"),
                               helper.make_node("Add", ["h", "b"], ["y"], name="a")], "g",
                              [helper.make_tensor_value_info(n, 1, s) for n, s in (("x", [1, 64]), ("w", [64, 32]),
                                                                                   ("b", [1, 32]))],
                              [helper.make_tensor_value_info("y", 1, [1, 32])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert onnxfile.attach(path, [("w", weight), ("b", bias), ("unused", weight)]) == ["x"]
    assert onnxfile.data_files(path) == [tmp_path / "model.onnx.data"]
    assert (tmp_path / "model.onnx.data").stat().st_size == weight.nbytes
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(run(path, x), x @ weight + bias, atol=1e-4)  # float sums in another order

    model = onnx.load(str(path), load_external_data=False)
    del model.graph.initializer[0]  # a part that reads only b
    onnxfile.load_data(model, tmp_path)
    assert [numpy_helper.to_array(i).tolist() for i in model.graph.initializer] == [bias.tolist()]
    model = onnx.load(str(path), load_external_data=False)
    onnxfile.load_data(model, tmp_path)
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)


def test_ranges_are_recorded_as_the_graph_runs_and_read_back_by_onnxruntime(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime.quantization.calibrate import load_tensors_data

    from qnnbuild.toolchain.quant import ranges

    monkeypatch.setattr(onnxfile, "LARGE", 1000)
    weight = np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32)
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    onnxfile.save(matmul(weight), path)  # the weights stay in model.onnx.data, where the session reads them
    session = ranges.RangeSession(path)
    xs = [np.full((1, 64), v, np.float32) for v in (0.5, -2.0)]
    outs = [session.run(None, {"x": x}) for x in xs]
    assert [len(o) for o in outs] == [1, 1]  # answers like a plain session: its own outputs only
    ys = np.concatenate([o[0] for o in outs])
    assert session.ranges == {"x": (-2.0, 0.5), "y": (float(ys.min()), float(ys.max()))}
    ranges.write_cache(session.ranges, tmp_path / "cache.json")
    read = load_tensors_data(tmp_path / "cache.json")
    assert float(read["y"].range_value[1]) == float(ys.max())
