"""Team-scale figures: a shared cache on a real S3 server (SeaweedFS on 127.0.0.1) and a Dask LocalCluster.

  warm   MobileNetV2 (recipes/mobilenet.yaml) in a fresh clone against a warm shared cache, against the full
         local build that filled it (goal: ratio ≤ 0.1).
  zoo    3 recipes × 4 targets on `--scheduler local:2` against `local:1` (goal: wall ratio ≤ 0.6 on 2 cores),
         with 8-layer 64-channel conv stacks at 128×128 (seconds per stage) and with the 15 kB test model
         (where process start-up dominates and local:1 already keeps ~1.2 cores busy).
  noop   a no-op run of the minimal recipe with and without `--cache` (goal: equal within noise).

Every baseline is measured in the same run. Run: python benchmarks/team.py [warm] [zoo] [noop] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_RECIPE, make_conv_model  # noqa: E402
from tests.servers import SeaweedFS  # noqa: E402

TARGETS = "[SM8650, SM8750, SM8550, SM8450]"
JOBS: dict[int, list[str]] = {}


def qnnbuild(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qnnbuild", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"qnnbuild {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def warm(tmp: Path, server: SeaweedFS) -> None:
    url = server.bucket("warm") + "/team"
    ci, laptop = clone(tmp / "ci"), clone(tmp / "laptop")
    full = qnnbuild(["run", "recipes/mobilenet.yaml", "--cache", url], ci, server.env())
    restored = qnnbuild(["run", "recipes/mobilenet.yaml", "--cache", url, "--cache-mode", "read"], laptop,
                        server.env())
    print(f"warm: full local build {full:.1f} s; fresh clone from the warm cache {restored:.1f} s; "
          f"ratio {restored / full:.3f} (goal ≤ 0.1)")


def conv_stack(path: Path, seed: int, channels: int = 64, layers: int = 8, size: int = 128) -> None:
    """A plain stack of 3x3 Conv+Relu: a few seconds of calibration and HTP finalize per stage, so the
    figure measures the stages, not process start-up."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev, width = [], [], "input", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, width, 3, 3)) * (2 / (9 * width)) ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, width = f"r{i}", channels
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def zoo(tmp: Path, model: str) -> None:
    folder = tmp / f"zoo-{model}"
    folder.mkdir()
    names = []
    for i in range(3):
        if model == "tiny":
            make_conv_model(folder / f"m{i}.onnx", seed=i)
        else:
            conv_stack(folder / f"m{i}.onnx", seed=i)
        recipe = TINY_RECIPE.replace("recipe: tiny", f"recipe: z{i}").replace("model.onnx", f"m{i}.onnx")
        (folder / f"z{i}.yaml").write_text(recipe.replace("targets: [SM8650]", f"targets: {TARGETS}"))
        names.append(f"z{i}.yaml")
    walls = {}
    for workers in (1, 2):
        shutil.rmtree(folder / "artifacts", ignore_errors=True)
        cache = (tmp / f"zoo-{model}-cache-{workers}").as_uri()
        walls[workers] = qnnbuild(["run", *names, "--scheduler", f"local:{workers}", "--cache", cache,
                                   *JOBS.get(workers, [])], folder)
    print(f"zoo ({model} models): 3 recipes x 4 targets (33 instances): local:1 {walls[1]:.1f} s, "
          f"local:2 {walls[2]:.1f} s; "
          f"ratio {walls[2] / walls[1]:.2f} (goal ≤ 0.6)")


def noop(tmp: Path, server: SeaweedFS, repeat: int) -> None:
    folder = tmp / "noop"
    folder.mkdir()
    make_conv_model(folder / "model.onnx")
    (folder / "tiny.yaml").write_text(TINY_RECIPE)
    url = server.bucket("noop")
    qnnbuild(["run", "tiny.yaml", "--cache", url], folder, server.env())
    plain, cached = [], []
    for _ in range(repeat):
        plain.append(qnnbuild(["run", "tiny.yaml"], folder))
        cached.append(qnnbuild(["run", "tiny.yaml", "--cache", url], folder, server.env()))
    a, b = statistics.median(plain) * 1000, statistics.median(cached) * 1000
    print(f"noop: without a cache {a:.1f} ms, with --cache {b:.1f} ms (medians of {repeat}); ratio {b / a:.2f} "
          "(goal: 1.0 within noise)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["warm", "zoo", "noop"])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qnnbuild-team-") as name:
        tmp = Path(name)
        server = SeaweedFS(tmp / "seaweed").start()
        try:
            for case in args.cases:
                if case == "warm":
                    warm(tmp, server)
                elif case == "zoo":
                    zoo(tmp, "conv-stack")
                    zoo(tmp, "tiny")
                elif case == "noop":
                    noop(tmp, server, args.repeat)
                else:
                    raise SystemExit(f"unknown case {case!r}: warm, zoo or noop")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
