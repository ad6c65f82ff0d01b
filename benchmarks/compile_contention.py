"""Two QNN compiles side by side against each alone: what a second worker can give on this machine.

The parts benchmark (parts_parallel.py) compares 2 Dask workers with 1; its compile phase cannot beat the
longer of two part compiles run at the same time. This script takes the quantized graphs that benchmark seeds
(`<workdir>/base/parts/quantize`), writes the prefill graph of part 1 and part 2 (as the llm-part stage splits
them), and compiles them for SM8650 in fresh processes: part 1 alone, part 2 alone, both side by side, for
`--rounds` rounds. Printed per process: wall and CPU seconds (user + system, from the child's rusage). The ratio
`longer side-by-side compile / (part 1 alone + part 2 alone)` is the best "2 workers / 1 worker" the compile
phase can reach here: 0.5 if two processes run as fast as one, more when they slow each other down.

Run: python benchmarks/parts_parallel.py (once, to seed), then python benchmarks/compile_contention.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

COMPILE = """
import sys
from pathlib import Path
from qnnbuild.stages.compile import _finalize, provider_options
from qnnbuild.toolchain.runtime.targets import resolve
target = resolve("SM8650").as_dict()
options = provider_options({"optimization_level": 3, "performance_mode": "default", "vtcm_mb": None, "fp16": False},
                           target)
_finalize(Path(sys.argv[1]), Path(sys.argv[2]), options, target)
"""


def write_parts(quantized: Path, dest: Path) -> list[Path]:
    """Part 1 and part 2 of the prefill graph, each with its own weights file, as llm-part writes them."""
    import onnx

    from qnnbuild.toolchain.graph import onnxfile
    from qnnbuild.toolchain.llm import parts

    found = []
    for k in (0, 1):
        out = dest / f"part{k + 1}" / "model.qdq.onnx"
        if not out.is_file():
            whole = onnx.load(str(quantized), load_external_data=False)
            part = parts.split(whole, 2, quantized.parent, only=k)[0]
            onnxfile.load_data(part, quantized.parent)
            out.parent.mkdir(parents=True, exist_ok=True)
            onnxfile.save(part, out, external=True)
        found.append(out)
    return found


def start(model: Path, scratch: Path) -> tuple[subprocess.Popen[bytes], float]:
    out = Path(tempfile.mkdtemp(dir=scratch))
    proc = subprocess.Popen([sys.executable, "-c", COMPILE, str(model), str(out / "ctx")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, time.perf_counter()


def finish(proc: subprocess.Popen[bytes], began: float) -> tuple[float, float]:
    """(wall, CPU) seconds of one compile process."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"a compile failed (exit {proc.returncode})")
    return time.perf_counter() - began, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "qnnbuild-parts-parallel"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.workdir)
    quantized = root / "base/parts/quantize/model.qdq.onnx"
    if not quantized.is_file():
        raise SystemExit(f"{quantized} is missing: run benchmarks/parts_parallel.py first")
    models = write_parts(quantized, root / "contention")
    alone: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    beside: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="qnnbuild-contention-") as tmp:
        for round_ in range(args.rounds):
            for k in (0, 1):
                alone[k].append(finish(*start(models[k], Path(tmp))))
            both = [start(models[k], Path(tmp)) for k in (0, 1)]
            for k, (proc, began) in enumerate(both):
                beside[k].append(finish(proc, began))
            ratio = max(beside[k][-1][0] for k in (0, 1)) / sum(alone[k][-1][0] for k in (0, 1))
            ratios.append(ratio)
            print(f"round {round_ + 1}: alone {alone[0][-1][0]:.1f} / {alone[1][-1][0]:.1f} s, side by side "
                  f"{beside[0][-1][0]:.1f} / {beside[1][-1][0]:.1f} s: {ratio:.2f}x", flush=True)
    print(f"\nprefill graph of each part of {quantized.parent}, SM8650, {args.rounds} round(s), medians:")
    for k in (0, 1):
        a, b = alone[k], beside[k]
        print(f"  part {k + 1}: alone {median(w for w, _ in a):.1f} s wall, {median(c for _, c in a):.1f} s CPU; "
              f"side by side {median(w for w, _ in b):.1f} s wall, {median(c for _, c in b):.1f} s CPU "
              f"({median(c for _, c in b) / median(c for _, c in a):.2f}x the CPU time)")
    print(f"  longer side-by-side compile / both alone: {median(ratios):.2f}x (each round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}); 0.5x would be two cores giving twice one core's work")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
