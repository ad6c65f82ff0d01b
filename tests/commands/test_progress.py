"""Progress inside long stages: counts and an ETA redrawn in place on a terminal (driven in tmux, as a person sees
it), plain lines at most every pulse in a log, nothing on stdout with --json."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qnnbuild.engine.build.console import Console, describe
from qnnbuild.engine.build.result import Result
from tests.conftest import TINY_RECIPE, run_process

VALIDATE = ("  validate: {kind: validate, context: context, reference: export, quantized: quantize, "
            "data: {synthetic: {count: 50, seed: 1}}, workers: 1}\n")


def convs(path: Path) -> Path:
    """Six 3x3 convolutions of 32 channels on 96x96: ~0.3 s a sample on the HTP emulator, so 50 take a while."""
    rng = np.random.default_rng(0)
    nodes, inits, x, channels = [], [], "input", 3
    for i in range(6):
        inits.append(numpy_helper.from_array((rng.standard_normal((32, channels, 3, 3)) * 0.2).astype(np.float32),
                                             f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, channels = f"r{i}", 32
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 96, 96])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 32, 96, 96])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_describe_gives_counts_and_an_eta() -> None:
    now = time.time()
    assert describe({"done": 10, "total": 50, "unit": "samples", "since": now - 20}, 25) \
        == "10/50 samples (20%), ETA 80 s, 25 s"
    assert describe({"phase": "finalizing the HTP graph for SM8650"}, 3) == \
        "finalizing the HTP graph for SM8650, 3 s"
    assert describe({}, 12) == "still running, 12 s"


def test_plain_output_gives_a_line_per_pulse_with_counts(tmp_path: Path) -> None:
    progress = tmp_path / "p.json"
    progress.write_text(json.dumps({"done": 3, "total": 8, "unit": "samples", "since": time.time() - 3}))
    stream = io.StringIO()
    console = Console(stream, pulse_seconds=0.2, live=False)
    console.started("validate[SM8650]", progress)
    time.sleep(0.5)
    console.ended(Result("validate[SM8650]", "validate", "SM8650", "ran", 0.5, "k", [], None, {}, {}))
    console.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "  … validate[SM8650]               running"
    assert any(re.search(r"… validate\[SM8650\] +3/8 samples \(38%\), ETA \d+ s, 0 s", line) for line in lines)
    assert lines[-1].startswith("  ✓ validate[SM8650]") and "ran" in lines[-1]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux drives the terminal")
def test_a_terminal_shows_validate_counting_its_50_samples(tmp_path: Path) -> None:
    convs(tmp_path / "model.onnx")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE + VALIDATE)
    session = f"qnnbuild-{tmp_path.name}"
    path = os.environ.get("PYTHONPATH", "")  # the tmux server keeps the environment it started with
    command = (f"cd {tmp_path} && PYTHONPATH={path} {sys.executable} -m qnnbuild run tiny.yaml; "
               "echo exit=$? > done.txt; sleep 120")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "30", command], check=True)
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (tmp_path / "done.txt").is_file():
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                    check=False).stdout
            seen.update(re.findall(r"validate\[SM8650\] +━*[╸╺]?━* *(\d+)/50 samples \(\d+%\)", screen))
            time.sleep(0.2)
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                check=False).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert (tmp_path / "done.txt").read_text().strip() == "exit=0"
    counts = sorted(int(c) for c in seen)
    assert len(counts) >= 3 and counts[0] < 50, counts  # counted up in place, several distinct counts seen
    assert re.search(r"✓ validate\[SM8650\] +ran", screen) and "/50 samples" not in screen  # the bar is gone


def test_json_mode_keeps_progress_off_stdout(tmp_path: Path) -> None:
    convs(tmp_path / "model.onnx")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE + VALIDATE.replace("count: 50", "count: 4"))
    proc = run_process(["run", "tiny.yaml", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["stages"]  # stdout is the JSON object alone
    assert "validate[SM8650]" in proc.stderr
