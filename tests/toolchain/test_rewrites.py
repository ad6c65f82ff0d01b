"""The graph rewrites on hand-made graphs: each keeps what the model computes and removes what QNN or the
quantizer cannot take."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.toolchain.graph import rewrites


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


X = np.array([[-3, -1, 0], [1, 2, 90]], np.float32)


def test_infinite_bounds_become_identity() -> None:
    inits = [numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf"),
             numpy_helper.from_array(np.array(np.inf, np.float32), "pinf"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    model = _model([helper.make_node("Max", ["ninf", "x"], ["a"], name="max_inf"),
                    helper.make_node("Min", ["a", "pinf"], ["b"], name="min_inf"),
                    helper.make_node("Max", ["b", "one"], ["y"], name="max_one")], inits)
    before = _run(model, X)
    applied = rewrites.before_folding(model)
    assert applied == [{"rewrite": "infinite-bound", "nodes": ["max_inf", "min_inf"]}]
    assert [n.op_type for n in model.graph.node] == ["Identity", "Identity", "Max"]
    np.testing.assert_array_equal(_run(model, X), before)


def test_constant_nodes_and_computed_clip() -> None:
    scale = helper.make_tensor("v", TensorProto.FLOAT, [], [80.0])
    model = _model([helper.make_node("Constant", [], ["c"], value=scale, name="const"),
                    helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0, name="rmax"),
                    helper.make_node("Sub", ["m", "c"], ["low"], name="sub"),
                    helper.make_node("Clip", ["x", "low"], ["y"], name="clip")], [])
    before = _run(model, X)
    applied = rewrites.before_folding(model)
    assert [a["rewrite"] for a in applied] == ["constant-to-initializer", "clip-computed-bounds"]
    assert "Clip" not in {n.op_type for n in model.graph.node} and "c" in {i.name for i in model.graph.initializer}
    np.testing.assert_array_equal(_run(model, X), before)


def test_reciprocal_becomes_div_by_an_explicit_one() -> None:
    model = _model([helper.make_node("Abs", ["x"], ["a"], name="abs"),
                    helper.make_node("Reciprocal", ["a"], ["y"], name="recip")], [])
    x = X + 0.5
    before = _run(model, x)
    assert rewrites.before_folding(model) == [{"rewrite": "reciprocal-to-div", "nodes": ["recip"]}]
    assert [n.op_type for n in model.graph.node] == ["Abs", "Div"]
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_softmax_nan_guard_goes() -> None:
    """Where(IsNaN(p), 0, p) after a Softmax of finite scores is p (the dynamo exporter's guard)."""
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    model = _model([helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=-1),
                    helper.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
                    helper.make_node("Where", ["nan", "zero", "p"], ["y"], name="guard")], inits)
    before = _run(model, X)
    assert rewrites.softmax_nan_guards(model) == ["guard"]
    assert [n.op_type for n in model.graph.node] == ["Softmax", "Identity"]
    np.testing.assert_array_equal(_run(model, X), before)


def test_the_build_time_check_fails_a_rewrite_that_changes_the_model() -> None:
    """An exact rewrite must keep every output bit for bit; an inexact one must stay above the SQNR floor."""
    import pytest

    from qnnbuild.errors import StageFailed
    from qnnbuild.toolchain.graph.rewritecheck import RewriteCheck

    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    model = _model([helper.make_node("Mul", ["x", "two"], ["y"], name="mul")], inits)
    check = RewriteCheck(model)
    step: dict = {"rewrite": "constant-indices", "nodes": ["mul"]}
    check(model, step)
    assert step["check"] == {"exact": True, "max_abs_error": 0.0, "sqnr_db_against_source": "inf"}
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(2.0001, np.float32), "two"))
    with pytest.raises(StageFailed, match="constant-indices rewrite changed what the model computes"):
        check(model, {"rewrite": "constant-indices", "nodes": ["mul"]})
    fused: dict = {"rewrite": "fused-norm", "nodes": ["mul"]}
    check(model, fused)  # 2.0001 against 2: SQNR 86 dB, above the floor
    assert 80 < fused["check"]["sqnr_db_against_source"] < 90
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(2.1, np.float32), "two"))
    with pytest.raises(StageFailed, match=r"SQNR 26\.0 dB < 60 dB"):
        check(model, {"rewrite": "fused-norm", "nodes": ["mul"]})
