"""GatherND and ScatterND with constant indices, rewritten, compute exactly what they computed: on random data,
for a full-index gather (the attention-mask broadcast the dynamo exporter leaves), a partial-index gather, a
run (a Slice), a permutation (a Gather), the whole tensor in order (a Reshape alone) and a scatter whose
indices repeat (the last write wins)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.toolchain.graph import constindex, onnxgraph

RNG = np.random.default_rng(0)


def _gathernd(shape: list[int], indices: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("GatherND", ["x", "idx"], ["y"], name="gnd")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(indices.astype(np.int64), "idx")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scatternd(shape: list[int], indices: np.ndarray, updates: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("ScatterND", ["x", "idx", "u"], ["y"], name="snd")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("u", TensorProto.FLOAT, updates)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(indices.astype(np.int64), "idx")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def _rewritten(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    before = _run(model, feeds)
    constindex.constant_indices(model, onnxgraph.static_shapes(model))
    return [n.op_type for n in model.graph.node], before, _run(model, feeds)


MASK = np.stack([np.zeros(64, np.int64), np.arange(64)], -1).reshape(1, 1, 1, 64, 2)
CASES = {
    "mask broadcast (full index, in order)": ([1, 64], MASK, ["Reshape", "Reshape"]),
    "partial index, a run": ([4, 3, 5], np.array([[1], [2]]), ["Reshape", "Slice", "Reshape"]),
    "permutation": ([3, 4], np.array([[2, 1], [0, 3], [-1, 0]]), ["Reshape", "Gather", "Reshape"]),
}


@pytest.mark.parametrize("case", CASES)
def test_gathernd_with_constant_indices(case: str) -> None:
    shape, indices, ops = CASES[case]
    x = RNG.standard_normal(shape).astype(np.float32)
    found, before, after = _rewritten(_gathernd(shape, indices), {"x": x})
    assert found == ops
    np.testing.assert_array_equal(after, before)


def test_scatternd_with_repeated_indices() -> None:
    shape, indices = [4, 3], np.array([[1], [3], [1]])
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32),
             "u": RNG.standard_normal([3, 3]).astype(np.float32)}
    found, before, after = _rewritten(_scatternd(shape, indices, [3, 3]), feeds)
    assert "ScatterND" not in found and "Gather" in found
    np.testing.assert_array_equal(after, before)
    assert not np.array_equal(after, feeds["x"])


def test_an_unknown_data_shape_is_left_alone() -> None:
    model = _gathernd(["n", 64], MASK)
    assert constindex.constant_indices(model, onnxgraph.static_shapes(model)) == []
    assert [n.op_type for n in model.graph.node] == ["GatherND"]
