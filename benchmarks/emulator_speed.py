"""What bounds validation speed for a transformer on the HTP emulator: all-MiniLM-L6-v2 (recipes/minilm.yaml,
w8a16, SM8650) built at sequence 32 and 64, then its deliverable opened once and run on the emulator; prints the
session load time, seconds per sample, the CPU the run used (process CPU time / wall time: 200 % is both cores of
this machine) and, for comparison, the fp32 model on onnxruntime's CPU.

    python benchmarks/emulator_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers: the model wheel


def _timed(run: Any, runs: int) -> tuple[float, float]:
    """(seconds per run, CPU used in % of one core) over `runs` runs after one warm-up run."""
    run()
    before, started = os.times(), time.perf_counter()
    for _ in range(runs):
        run()
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return wall / runs, 100 * cpu / wall


def _project(folder: Path) -> list[int]:
    from tests.wheels import minilm_l6_folder

    model = minilm_l6_folder()
    shutil.copytree(ROOT / "recipes", folder / "recipes", ignore=shutil.ignore_patterns("models"))
    (folder / "recipes/models").mkdir()
    (folder / "recipes/models/all-MiniLM-L6-v2").symlink_to(model)
    text = (folder / "recipes/minilm.yaml").read_text()
    lengths = [32, 64]
    for seq in lengths:
        (folder / f"recipes/minilm{seq}.yaml").write_text(
            text.replace("recipe: minilm", f"recipe: minilm{seq}").replace("[1, 64]", f"[1, {seq}]"))
    subprocess.run([sys.executable, "-m", "qnnbuild", "run", *(f"recipes/minilm{s}.yaml" for s in lengths),
                    "--only", "context"], cwd=folder, check=True, capture_output=True)
    return lengths


def main() -> None:
    import numpy as np

    from qnnbuild.toolchain.runtime import qnn

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lengths = _project(folder)
        print(f"all-MiniLM-L6-v2 w8a16 SM8650, {runs} runs after a warm-up, batch 1, on {os.cpu_count()} cores")
        for seq in lengths:
            art = folder / f"artifacts/minilm{seq}"
            started = time.perf_counter()
            htp = qnn.deliverable_session(art / "context/SM8650")
            load = time.perf_counter() - started
            feeds = {i.name: np.ones([1, seq], np.int64) for i in htp.get_inputs()}
            per_sample, cpu = _timed(lambda s=htp, f=feeds: s.run(None, f), runs)
            fp32 = qnn.cpu_session(str(art / "export/model.onnx"))
            cpu_per_sample, _ = _timed(lambda s=fp32, f=feeds: s.run(None, f), runs * 20)
            print(f"seq {seq}: HTP emulator {per_sample:.2f} s/sample ({1 / per_sample:.2f} samples/s) at {cpu:.0f} % "
                  f"CPU, session load {load:.2f} s; fp32 on the CPU {1 / cpu_per_sample:.0f} samples/s "
                  f"(HTP emulation {per_sample / cpu_per_sample:.0f}x slower)")


if __name__ == "__main__":
    main()
