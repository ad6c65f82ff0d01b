from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import CLI, TINY_RECIPE, make_conv_model, make_lstm_model, run_process, write


def test_op_report_of_a_supported_model(tiny_project: Path, cli: CLI) -> None:
    code, _, err = cli("run", "tiny.yaml", "--only", "convert")
    assert code == 0, err
    report = json.loads((tiny_project / "artifacts/tiny/convert/op_report.json").read_text())
    assert report["refused"] == []
    assert report["histogram"]["Conv2d"] == 2
    assert report["float_ops"] == []
    dlc = (tiny_project / "artifacts/tiny/convert/model.dlc").read_bytes()
    assert len(dlc) > 1000 and dlc.startswith(b"PK")
    # QNN stamps the wall-clock time into the DLC; qnnbuild pins it so rebuilds are byte-identical
    stamps = re.findall(rb'"timestamp": "([^"]*)"', dlc)
    assert stamps and set(stamps) == {b"1980-01-01 00:00:00 UTC"}
    graph = json.loads((tiny_project / "artifacts/tiny/convert/model_net.json").read_text())
    assert "nodes" in graph["graph"]


def test_unsupported_op_fails_convert_naming_the_node(tmp_path: Path) -> None:
    # conv output [1, 4, 16, 16] → 64 square 4×4 matrices → Det, which QNN does not implement
    det = [helper.make_node("Reshape", ["output", "shape"], ["square"], name="reshape_sq"),
           helper.make_node("Det", ["square"], ["det"], name="det1")]
    model = onnx.load(str(make_conv_model(tmp_path / "model.onnx", extra_nodes=det)))
    model.graph.initializer.append(numpy_helper.from_array(np.array([64, 4, 4], np.int64), "shape"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("det", TensorProto.FLOAT, [64]))
    onnx.save(model, str(tmp_path / "model.onnx"))
    write(tmp_path, "tiny.yaml", TINY_RECIPE)
    proc = run_process(["run", "tiny.yaml"], tmp_path)
    assert proc.returncode == 1
    assert "✗ convert" in proc.stderr
    assert ("QNN cannot take the model for SM8650: 1 node(s): det1 (Det): Operators of type `Det` are not "
            "supported by QNN EP.") in proc.stderr
    assert "- compile[SM8650]                skipped" in proc.stderr
    assert "log: artifacts/tiny/logs/convert.log" in proc.stderr
    assert "Traceback" not in proc.stderr


LSTM_RECIPE = """\
schema_version: 1
recipe: lstm
targets: [{targets}]
stages:
  export:   {{kind: export, onnx: lstm.onnx}}
  quantize: {{kind: quantize, model: export, calibration: {{synthetic: {{count: 2, seed: 0}}}}}}
  convert:  {{kind: convert, model: quantize}}
  compile:  {{kind: compile, model: quantize{after}}}
  context:  {{kind: context-binary, compiled: compile}}
"""


def test_convert_judges_the_recipe_targets(tmp_path: Path, cli: CLI) -> None:
    """HTP finalize refuses an LSTM for SM8350 only: convert says which target, never a bare 1002."""
    make_lstm_model(tmp_path / "lstm.onnx")
    write(tmp_path, "old.yaml", LSTM_RECIPE.format(targets="SM8350", after=", after: [convert]"))
    code, _, err = cli("run", "old.yaml")
    assert code == 1
    assert ("✗ convert" in err and "QNN cannot take the model for SM8350: 1 node(s): lstm1 (LSTM): could not create "
            "op q::QNN_LSTM_FAIL") in err
    assert "1002" not in err

    write(tmp_path, "new.yaml", LSTM_RECIPE.format(targets="SM8650", after=", after: [convert]"))
    code, _, err = cli("run", "new.yaml")
    assert code == 0, err
    report = json.loads((tmp_path / "artifacts/lstm/convert/op_report.json").read_text())
    assert report["refused"] == [] and report["targets"] == ["SM8650"]
    assert report["histogram"]["Lstm"] >= 1


def test_compile_failure_names_the_op_and_qnns_reason(tmp_path: Path, cli: CLI) -> None:
    make_lstm_model(tmp_path / "lstm.onnx")
    write(tmp_path, "r.yaml", LSTM_RECIPE.format(targets="SM8350, SM8650", after=""))
    code, _, err = cli("run", "r.yaml", "--only", "compile")
    assert code == 1
    assert "HTP compile for SM8350 failed: lstm1 (LSTM): could not create op q::QNN_LSTM_FAIL" in err
    assert "QNN_COMMON_ERROR_MEM_ALLOC" not in err and "1002" not in err
    assert "✓ compile[SM8650]" in err
