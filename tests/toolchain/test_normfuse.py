"""Normalizations written as basic ops fuse into one op that computes the same thing, and a chain whose
intermediates are used elsewhere is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.toolchain.graph import rewrites

WIDTH = 8
X = np.random.default_rng(0).normal(0, 3, (2, 4, WIDTH)).astype(np.float32)
X[0, 0, 5] = 25_000.0  # a SmolLM2-like outlier


def _const(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], extra: tuple[str, ...] = ()) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ["y", *extra]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, WIDTH])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {"x": X})]


def _rms(x: str, out: str, *, reciprocal: bool = False) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [helper.make_node("Pow", [x, "two"], ["sq"], name="pow"),
             helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"], name="add"),
             helper.make_node("Sqrt", ["mse"], ["rms"], name="sqrt")]
    if reciprocal:
        nodes += [helper.make_node("Div", ["one", "rms"], ["inv"], name="inv"),
                  helper.make_node("Mul", [x, "inv"], ["n"], name="scale")]
    else:
        nodes.append(helper.make_node("Div", [x, "rms"], ["n"], name="div"))
    nodes.append(helper.make_node("Mul", ["gamma", "n"], [out], name="gamma"))
    inits = [_const("two", 2.0), _const("eps", 1e-5), _const("one", 1.0),
             _const("gamma", np.linspace(0.5, 1.5, WIDTH))]
    return nodes, inits


@pytest.mark.parametrize("reciprocal", [False, True])
def test_an_rmsnorm_becomes_one_rmsnormalization(reciprocal: bool) -> None:
    model = _model(*_rms("x", "y", reciprocal=reciprocal))
    before = _run(model)[0]
    fused, applied = rewrites.after_folding(model, -100.0)
    assert applied == [{"rewrite": "fused-norm", "nodes": ["pow_RMSNorm"]}]
    assert [n.op_type for n in fused.graph.node] == ["RMSNormalization"]
    assert fused.opset_import[0].version == 23
    np.testing.assert_allclose(_run(fused)[0], before, rtol=1e-5, atol=1e-5)


def test_a_layernorm_of_basic_ops_becomes_layernormalization() -> None:
    nodes, inits = _rms("d", "scaled")
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], name="center_mean", axes=[-1], keepdims=1),
             helper.make_node("Sub", ["x", "mu"], ["d"], name="center"),
             *nodes, helper.make_node("Add", ["scaled", "beta"], ["y"], name="beta")]
    model = _model(nodes, [*inits, _const("beta", np.linspace(-1, 1, WIDTH))])
    before = _run(model)[0]
    fused, applied = rewrites.after_folding(model, -100.0)
    assert applied == [{"rewrite": "fused-norm", "nodes": ["center_mean_LayerNorm"]}]
    assert [n.op_type for n in fused.graph.node] == ["LayerNormalization"]
    assert fused.opset_import[0].version == 17  # LayerNormalization needs no newer opset
    np.testing.assert_allclose(_run(fused)[0], before, rtol=1e-4, atol=1e-4)


def test_a_chain_whose_square_is_used_elsewhere_is_left_alone() -> None:
    model = _model(*_rms("x", "y"), extra=("sq",))  # x² is also a graph output
    fused, applied = rewrites.after_folding(model, -100.0)
    assert applied == []
    assert "RMSNormalization" not in {n.op_type for n in fused.graph.node}
