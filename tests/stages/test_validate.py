"""validate on labelled data: top-1/top-5 accuracy of fp32, QDQ on the CPU and the context on HTP, the
three-way SQNR, and the accuracy-drop gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.conftest import CLI, write


def classifier(path: Path, channels: int, weights: np.ndarray) -> None:
    """Global average pool → Gemm: the class is the brightest channel (through `weights`)."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(weights.shape[0], np.float32), "b")]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [1, channels, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, weights.shape[0]])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


RECIPE = """\
schema_version: 1
recipe: cls
targets: [SM8650]
stages:
  export: {kind: export, onnx: cls.onnx}
  quantize: {kind: quantize, model: export, calibration: %(calibration)s}
  compile: {kind: compile, model: quantize}
  context: {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, quantized: quantize, data: %(data)s,
             max_accuracy_drop: 5}
"""


def test_labelled_npy_gives_three_accuracies(tmp_path: Path, cli: CLI) -> None:
    classifier(tmp_path / "cls.onnx", 6, np.eye(6) * 4)
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(24):
        label = i % 6
        x = rng.uniform(0, 0.5, (1, 6, 8, 8)).astype(np.float32)
        x[0, label] += 1.0
        (tmp_path / "data").mkdir(exist_ok=True)
        np.save(tmp_path / "data" / f"s{i:02d}.npy", x)
        rows.append(f"s{i:02d}.npy,{label}")
    write(tmp_path, "labels.csv", "\n".join(rows) + "\n")
    write(tmp_path, "r.yaml", RECIPE % {"calibration": "{npy: {dir: data, count: 12}}",
                                        "data": "{npy: {dir: data, labels: labels.csv}}"})
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    metrics = json.loads((tmp_path / "artifacts/cls/validate/SM8650/metrics.json").read_text())
    assert metrics["top1_accuracy"] == {"fp32": 100.0, "qdq_cpu": 100.0, "htp": 100.0}
    assert metrics["top5_accuracy"]["htp"] == 100.0
    assert set(metrics["sqnr_db"]["logits"]) == {"qdq_cpu", "htp"} and metrics["sqnr_db"]["logits"]["htp"] > 20
    assert "samples_per_second" not in metrics  # wall clock: in the entry's timings.json, not the keyed output
    timings = json.loads((tmp_path / "artifacts/cls/validate/SM8650/.qnnbuild/timings.json").read_text())
    assert set(timings["samples_per_second"]) == {"fp32", "qdq_cpu", "htp"}
    log = (tmp_path / "artifacts/cls/validate/SM8650/.qnnbuild/stage.log").read_text()
    assert "top1 accuracy: fp32 100.00%, qdq_cpu 100.00%, htp 100.00%" in log
    # a wrong label file is named with its line
    write(tmp_path, "labels.csv", "file,label\ns00.npy,cat\n")
    code, _, err = cli("run", "r.yaml")
    assert code == 1 and "labels.csv:2: expected `file,label` with an integer label" in err


def test_image_folder_layout_labels_by_sorted_folder_name(tmp_path: Path, cli: CLI) -> None:
    # classes sorted: blue=0, green=1, red=2; the model scores RGB channels in that order
    classifier(tmp_path / "cls.onnx", 3, np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]) * 4.0)
    colours = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
    for name, rgb in colours.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            shade = tuple(max(0, c - 30 * i) for c in rgb)
            Image.new("RGB", (8, 8), shade).save(tmp_path / "images" / name / f"{i}.png")
    write(tmp_path, "r.yaml", RECIPE % {"calibration": "{images: {dir: images}}",
                                        "data": "{images: {dir: images}}"})
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    metrics = json.loads((tmp_path / "artifacts/cls/validate/SM8650/metrics.json").read_text())
    assert metrics["top1_accuracy"] == {"fp32": 100.0, "qdq_cpu": 100.0, "htp": 100.0}
    assert "top5_accuracy" not in metrics  # 3 classes
    code, _, err = cli("report", "r.yaml")
    assert code == 0, err
    html = (tmp_path / "artifacts/cls/report.html").read_text()
    assert "Accuracy on labelled data" in html and "SQNR (QDQ, CPU)" in html


def test_accuracy_gate_needs_labels(tmp_path: Path, cli: CLI) -> None:
    classifier(tmp_path / "cls.onnx", 6, np.eye(6) * 4)
    write(tmp_path, "r.yaml", RECIPE % {"calibration": "{synthetic: {count: 2}}",
                                        "data": "{synthetic: {count: 2}}"})
    code, _, err = cli("run", "r.yaml")
    assert code == 1 and "max_accuracy_drop needs labelled data" in err


def test_cosine_and_top1_agreement_gates_in_a_real_build(tmp_path: Path, cli: CLI) -> None:
    """min_cosine and min_top1_agreement fail the build naming the measured and the required figure."""
    classifier(tmp_path / "cls.onnx", 6, np.eye(6) * 4)
    gated = """\
schema_version: 1
recipe: cls
targets: [SM8650]
stages:
  export: {kind: export, onnx: cls.onnx}
  quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 4, seed: 0}}}
  compile: {kind: compile, model: quantize}
  context: {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, data: {synthetic: {count: 4, seed: 9}},
             min_cosine: %s, min_top1_agreement: %s}
"""
    write(tmp_path, "r.yaml", gated % (0.9, 0.5))
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    write(tmp_path, "r.yaml", gated % (1.0, 1.0))
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "accuracy on SM8650 below the recipe's thresholds: logits: cosine 0." in err
    assert "< required 1.0" in err


def test_validation_over_workers_gives_the_same_metrics(tmp_path: Path, cli: CLI,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """24 samples over 3 worker processes: metrics.json byte for byte the single process's; changing workers
    rebuilds nothing; a worker killed mid-shard costs a warning and a rerun of its shard, not the build."""
    classifier(tmp_path / "cls.onnx", 6, np.eye(6) * 4)
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    rows = ["file,label"]
    for i in range(24):
        np.save(tmp_path / "data" / f"s{i:02d}.npy", rng.uniform(0, 1, (1, 6, 8, 8)).astype(np.float32))
        rows.append(f"s{i:02d}.npy,{i % 6}")
    write(tmp_path, "labels.csv", "\n".join(rows) + "\n")
    recipe = RECIPE % {"calibration": "{npy: {dir: data, count: 12}}",
                       "data": "{npy: {dir: data, labels: labels.csv}}"}
    write(tmp_path, "r.yaml", recipe.replace("max_accuracy_drop: 5", "max_accuracy_drop: 100, workers: 1"))
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    out = tmp_path / "artifacts/cls/validate/SM8650"
    single = (out / "metrics.json").read_bytes()
    write(tmp_path, "r.yaml", recipe.replace("max_accuracy_drop: 5", "max_accuracy_drop: 100, workers: 3"))
    code, out_json, err = cli("run", "r.yaml", "--json")
    assert code == 0 and {s["id"]: s["status"] for s in json.loads(out_json)["stages"]}["validate[SM8650]"] == "cached"
    monkeypatch.setenv("QNNBUILD_KILL_AT", "shard@8")
    monkeypatch.setenv("QNNBUILD_KILL_ONCE", str(tmp_path / "killed-once"))
    code, _, err = cli("run", "r.yaml", "--force", "validate")
    assert code == 0, err
    assert (out / "metrics.json").read_bytes() == single
    timings = json.loads((out / ".qnnbuild/timings.json").read_text())
    assert timings["workers"] == 3 and len(timings["shard_seconds"]) == 3
    log = (out / ".qnnbuild/stage.log").read_text()
    assert (tmp_path / "killed-once").is_file() and "a validation worker died on samples 8-15" in log
