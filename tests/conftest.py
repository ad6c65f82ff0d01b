"""Shared fixtures: tiny real models built inline, recipe trees, and the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.cli import main

TORCH_FACTORY = """\
import torch

from helpers import width


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, width(), 3)
"""
WIDTH_HELPER = """\
from pathlib import Path


def width() -> int:
    return int((Path(__file__).parent / "width.txt").read_text())
"""


def write_torch_factory(folder: Path, width: int = 4) -> None:
    """`torch: "factory:build"`: a factory importing a helper module of the project, which reads `width.txt`:
    files no recipe list names, which a build must find and key by itself."""
    (folder / "factory.py").write_text(TORCH_FACTORY)
    (folder / "helpers.py").write_text(WIDTH_HELPER)
    (folder / "width.txt").write_text(f"{width}\n")


def make_conv_model(path: Path, *, seed: int = 0, input_name: str = "input", dynamic_batch: bool = False,
                    extra_nodes: list[onnx.NodeProto] | None = None) -> Path:
    """Two 3×3 convolutions with a ReLU between them: builds and compiles for HTP in well under a second."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    nodes = [helper.make_node("Conv", [input_name, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["output"], pads=[1, 1, 1, 1], name="conv2")]
    batch: int | str = "N" if dynamic_batch else 1
    graph = helper.make_graph(nodes + (extra_nodes or []), "tiny",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 16, 16])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def make_lstm_model(path: Path, *, seq: int = 16, features: int = 8, hidden: int = 16) -> Path:
    """One LSTM and a ReLU: HTP finalize refuses the LSTM for SM8350 (v68) and builds it for SM8650 (v75)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, features)) * 0.3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32), "R"),
             numpy_helper.from_array(np.zeros((1, 8 * hidden), np.float32), "B")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=hidden, name="lstm1"),
             helper.make_node("Relu", ["y"], ["out"], name="relu1")]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, 1, features])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [seq, 1, 1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


TINY_RECIPE = """\
schema_version: 1
recipe: tiny
targets: [SM8650]
stages:
  export:   {kind: export, onnx: model.onnx}
  quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 4, seed: 0}}, activations: uint8, weights: uint8}
  convert:  {kind: convert, model: quantize}
  compile:  {kind: compile, model: quantize, after: [convert], optimization_level: 3}
  context:  {kind: context-binary, compiled: compile}
"""


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """The issue's minimal recipe, exactly as written, beside a small fp32 ONNX model."""
    make_conv_model(tmp_path / "model.onnx")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CLI:
    """Run `qnnbuild ARGS` in-process from the test's folder; returns (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def paused(folder: Path, point: str, args: list[str], *, stdout: int = subprocess.DEVNULL, timeout_s: float = 120,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], Path, int]:
    """`qnnbuild ARGS` stopped at a named checkpoint (faults.py): returns it, its pause file and the pid that
    paused (the stage worker's, for `stage:running`). Removing the pause file lets it go on."""
    flag = folder / "paused"
    env = {**os.environ, **(env or {}), "QNNBUILD_PAUSE_AT": point, "QNNBUILD_PAUSE_FILE": str(flag)}
    proc = subprocess.Popen([sys.executable, "-m", "qnnbuild", *args], cwd=folder, text=True, env=env,
                            stderr=subprocess.PIPE, stdout=stdout, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not (flag.is_file() and flag.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "never reached " + point
        time.sleep(0.05)
    return proc, flag, int(flag.read_text())


def run_process(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`qnnbuild ARGS` as a separate process, for what only a real process shows (stdout purity, exit codes)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qnnbuild", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, check=False)
