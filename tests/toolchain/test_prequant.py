"""Pre-quantized weights (int8 initializers dequantized in the graph by DequantizeLinear per channel, or by
Cast and Mul) become the float weights they stand for: the model computes what it computed, with no
DequantizeLinear, Cast or Mul left, and the integer weights and scales gone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.toolchain.graph import prequant

RNG = np.random.default_rng(1)
Q = RNG.integers(-127, 128, (6, 4)).astype(np.int8)
SCALE = RNG.uniform(0.01, 0.1, 4).astype(np.float32)


def _model(form: str) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(Q, "w_q"), numpy_helper.from_array(SCALE, "w_scale")]
    if form == "cast-sub-mul":
        inits.append(numpy_helper.from_array(np.array(3.0, np.float32), "w_zp"))
        nodes = [helper.make_node("Cast", ["w_q"], ["w_f"], to=TensorProto.FLOAT, name="cast"),
                 helper.make_node("Sub", ["w_f", "w_zp"], ["w_c"], name="sub"),
                 helper.make_node("Mul", ["w_c", "w_scale"], ["w"], name="mul")]
    elif form == "dq":
        inits.append(numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"))
        nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1, name="dq")]
    else:
        nodes = [helper.make_node("Cast", ["w_q"], ["w_f"], to=TensorProto.FLOAT, name="cast"),
                 helper.make_node("Mul", ["w_f", "w_scale"], ["w"], name="mul")]
    nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("form", ["dq", "cast-mul", "cast-sub-mul"])
def test_pre_quantized_weights_become_floats(form: str) -> None:
    model = _model(form)
    x = RNG.standard_normal((2, 6)).astype(np.float32)

    def run() -> np.ndarray:  # unoptimized: onnxruntime would fuse DequantizeLinear → MatMul into an int8 MatMul
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"x": x})[0])

    before = run()
    assert prequant.dequantized_weights(model) == ["w"]
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert [i.name for i in model.graph.initializer] == ["w"]
    np.testing.assert_allclose(run(), before, rtol=1e-6, atol=1e-6)
    zero = 3.0 if form == "cast-sub-mul" else 0.0
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]),
                                  (Q.astype(np.float32) - zero) * SCALE)
