"""AIMET techniques in quantize (the aimet extra, which the test extra installs), confirmed on the HTP emulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import CLI, write
from tests.stages.test_quantize import outlier_model

pytest.importorskip("aimet_onnx")

RECIPE = """\
schema_version: 1
recipe: t
targets: [SM8650]
stages:
  export: {kind: export, onnx: m.onnx}
  plain: {kind: quantize, model: export, calibration: {synthetic: {count: 8}}}
  aimet: {kind: quantize, model: export, calibration: {synthetic: {count: 8}}, technique: %s}
  c_plain: {kind: compile, model: plain}
  c_aimet: {kind: compile, model: aimet}
  x_plain: {kind: context-binary, compiled: c_plain}
  x_aimet: {kind: context-binary, compiled: c_aimet}
  v_plain: {kind: validate, context: x_plain, reference: export, quantized: plain}
  v_aimet: {kind: validate, context: x_aimet, reference: export, quantized: aimet}
"""


def htp_sqnr(tmp_path: Path, stage: str) -> float:
    metrics = json.loads((tmp_path / f"artifacts/t/{stage}/SM8650/metrics.json").read_text())
    return float(metrics["sqnr_db"]["output"]["htp"])


@pytest.mark.parametrize("technique", ["cle", "[cle, adaround]"])
def test_aimet_improves_the_outlier_model_on_htp(tmp_path: Path, cli: CLI, technique: str) -> None:
    outlier_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", RECIPE % technique)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    plain, aimet = htp_sqnr(tmp_path, "v_plain"), htp_sqnr(tmp_path, "v_aimet")
    assert plain < 15 and aimet > plain + 15, (plain, aimet)  # measured: 12.2 dB → 36.0 (cle), 36.7 (+adaround)
    stats = json.loads((tmp_path / "artifacts/t/aimet/calibration.json").read_text())
    assert stats["cle_fidelity_db"] > 100


def test_cle_refuses_a_relu6_network_it_would_change() -> None:
    """AIMET's CLE turns ReLU6 into ReLU (when the Clip's min is a Constant node; qnnbuild's export makes bounds
    initializers, which AIMET then leaves alone, and does not equalize across). With activations above 6 the
    equalized model computes something else: the guard measures it and refuses."""
    from qnnbuild.errors import StageFailed
    from qnnbuild.toolchain.quant import aimet

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 3).astype(np.float32)
    w2 = (rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(0, np.float32))),
             helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(6, np.float32))),
             helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["output"], pads=[1, 1, 1, 1], name="conv2")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"), numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    equalized, fidelity = aimet.equalize(model, samples)
    assert "Clip" not in {n.op_type for n in equalized.graph.node} and fidelity < aimet.MIN_FIDELITY_DB
    with pytest.raises(StageFailed, match="cross-layer equalization changed what the model computes"):
        aimet.check_equalized(fidelity, model)


def test_adaround_and_seqmse_report_layers_done(tmp_path: Path) -> None:
    """Progress for AIMET's techniques: layers optimized of the weighted layers, then samples calibrated."""
    import onnx

    from qnnbuild.toolchain.quant import aimet
    from qnnbuild.toolchain.quant.spec import QuantSpec

    outlier_model(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    samples = [{model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    calls: list[tuple[int, int, str, str]] = []
    aimet.simulate(model, samples, QuantSpec(weights="uint8", activations="uint8", adaround_iterations=5),
                   ["seqmse", "adaround"], lambda done, total, unit, phase: calls.append((done, total, unit, phase)))
    layers = sum(n.op_type == "Conv" for n in model.graph.node)
    for phase in ("seqmse", "adaround"):
        seen = [(d, t) for d, t, u, p in calls if p == phase and u == "layers"]
        assert seen[0] == (0, layers) and seen[-1] == (layers, layers), calls
    assert calls[-1] == (4, 4, "samples", "AIMET calibration")
