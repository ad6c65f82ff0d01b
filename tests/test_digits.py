"""A small CNN trained here on real labelled data (the handwritten digits that scikit-learn's wheel ships,
read from the wheel without installing it), validated with top-1 accuracy of fp32, QDQ on the CPU and the
context on the HTP emulator; a max_accuracy_drop that cannot hold fails the build with both figures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_process
from tests.wheels import wheel_files

WHEEL = "scikit-learn==1.9.1"
MEMBER = "sklearn/datasets/data/digits.csv.gz"


def digits() -> tuple[np.ndarray, np.ndarray]:
    """1797 images of 8×8 pixels (0..16) and their labels."""
    path = wheel_files([WHEEL], {"digits": MEMBER})["digits"]
    rows = np.loadtxt(gzip.decompress(path.read_bytes()).decode().splitlines(), delimiter=",")
    return rows[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32) / 16.0, rows[:, -1].astype(np.int64)


def train(images: np.ndarray, labels: np.ndarray, path: Path) -> float:
    """A two-convolution CNN, a few seconds of Adam on the CPU; exported to ONNX; returns its train accuracy."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 16, 10))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
        torch.onnx.export(model, (x[:1],), str(path), input_names=["digit"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    return accuracy


RECIPE = """\
schema_version: 1
recipe: digits
targets: [SM8650]
stages:
  export: {kind: export, onnx: digits.onnx}
  quantize: {kind: quantize, model: export, calibration: {npy: {dir: train, count: 64}}, per_channel: true}
  compile: {kind: compile, model: quantize}
  context: {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, quantized: quantize, max_accuracy_drop: %s,
             data: {npy: {dir: test, labels: test.csv}}}
"""


@pytest.mark.slow
def test_digits_accuracy_three_ways_and_the_drop_gate(tmp_path: Path) -> None:
    images, labels = digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    train_idx, test_idx = order[:1400], order[1400:1600]
    assert train(images[train_idx], labels[train_idx], tmp_path / "digits.onnx") > 0.95
    for name, idx in (("train", train_idx[:64]), ("test", test_idx)):
        (tmp_path / name).mkdir()
        for i in idx:
            np.save(tmp_path / name / f"{i:04d}.npy", images[i : i + 1])
    (tmp_path / "test.csv").write_text("file,label\n" + "".join(f"{i:04d}.npy,{labels[i]}\n" for i in test_idx))
    (tmp_path / "r.yaml").write_text(RECIPE % 3)
    proc = run_process(["run", "r.yaml"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "artifacts/digits/validate/SM8650/metrics.json").read_text())
    acc = metrics["top1_accuracy"]
    assert acc["fp32"] > 90 and acc["fp32"] - acc["htp"] <= 3 and set(acc) == {"fp32", "qdq_cpu", "htp"}
    assert metrics["top5_accuracy"]["htp"] >= acc["htp"]
    timings = json.loads((tmp_path / "artifacts/digits/validate/SM8650/.qnnbuild/timings.json").read_text())
    print(f"digits top-1: {acc}; samples/s {timings['samples_per_second']}")
    # calibrated on the wrong data (pixels near 0), the same gate cannot hold: both figures in the failure
    bad = (RECIPE % 3).replace("{npy: {dir: train, count: 64}}", "{synthetic: {count: 2, ranges: {digit: [0, 0.05]}}}")
    (tmp_path / "r.yaml").write_text(bad)
    proc = run_process(["run", "r.yaml"], tmp_path)
    assert proc.returncode == 1
    assert f"% on HTP against {acc['fp32']:.2f}% fp32: a drop of" in proc.stderr and "> allowed 3" in proc.stderr
