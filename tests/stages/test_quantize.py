from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from qnnbuild.stages.quantize import stride_for
from tests.conftest import CLI, make_conv_model, write


def recipe(tmp_path: Path, quantize: str) -> None:
    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "r.yaml", "schema_version: 1\nrecipe: q\nstages:\n  export: {kind: export, onnx: model.onnx}\n"
          f"  quantize: {{kind: quantize, model: export, {quantize}}}\n")


def built(tmp_path: Path, name: str) -> Path:
    return tmp_path / "artifacts/q/quantize" / name


def test_synthetic_u8_encodings_use_offset_minus_zero_point(tmp_path: Path, cli: CLI) -> None:
    recipe(tmp_path, "calibration: {synthetic: {count: 4, seed: 1}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    qdq = onnx.load(str(built(tmp_path, "model.qdq.onnx")))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    q_in = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    encs = json.loads(built(tmp_path, "encodings.json").read_text())
    [enc] = encs["activation_encodings"]["input"]
    assert enc["offset"] == -int(inits[q_in.input[2]])
    assert enc["scale"] == pytest.approx(float(inits[q_in.input[1]]))
    assert enc["bitwidth"] == 8 and enc["is_symmetric"] == "False"
    assert enc["min"] == pytest.approx(enc["scale"] * enc["offset"])
    assert set(encs["param_encodings"]) >= {"w1", "w2"}
    stats = json.loads(built(tmp_path, "calibration.json").read_text())
    assert (stats["samples"], stats["source"], stats["method"], stats["stride"]) == (4, "synthetic", "minmax", 4)


def test_a16_int8_symmetric_per_channel(tmp_path: Path, cli: CLI) -> None:
    recipe(tmp_path, "calibration: {synthetic: {count: 3}}, activations: uint16, weights: int8, per_channel: true, "
                     "symmetric: true, method: percentile")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    encs = json.loads(built(tmp_path, "encodings.json").read_text())
    assert encs["activation_encodings"]["input"][0]["bitwidth"] == 16
    w1 = encs["param_encodings"]["w1"]
    assert len(w1) == 8  # one encoding per output channel
    assert {e["offset"] for e in w1} == {-128} and {e["is_symmetric"] for e in w1} == {"True"}


def test_npy_folder_and_overrides(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "cal").mkdir()
    for i in range(5):
        np.save(tmp_path / "cal" / f"{i}.npy", np.random.default_rng(i).standard_normal((3, 16, 16)).astype("f4"))
    recipe(tmp_path, "calibration: {npy: {dir: cal}}, overrides: {r1: {type: uint16}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    encs = json.loads(built(tmp_path, "encodings.json").read_text())
    assert encs["activation_encodings"]["r1"][0]["bitwidth"] == 16
    assert encs["activation_encodings"]["input"][0]["bitwidth"] == 8
    assert json.loads(built(tmp_path, "calibration.json").read_text())["samples"] == 5


def test_image_folder(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "img").mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
    recipe(tmp_path, "calibration: {images: {dir: img, resize: 20}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    assert json.loads(built(tmp_path, "calibration.json").read_text())["source"] == "images"


def test_unknown_override_tensor_fails_the_stage(tmp_path: Path, cli: CLI) -> None:
    recipe(tmp_path, "calibration: {synthetic: {count: 2}}, overrides: {nope: {type: uint16}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "overrides name tensors the model does not have: nope" in err


def test_stride_divides_the_sample_count() -> None:
    assert [stride_for(n) for n in (1, 4, 16, 17, 512, 30)] == [1, 4, 16, 1, 16, 15]
