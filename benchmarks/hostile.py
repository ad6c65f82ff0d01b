"""How fast a hostile recipe is answered: a 900 kB recipe with ~36,000 problems (12,000 stages, each with an
unknown reference, a bad enum and an unknown key) against a one-line bad recipe, both as a user runs them
(`qnnbuild run`, a fresh process). Goal: under 2 s for any recipe up to the size limit.

    python benchmarks/hostile.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def big_recipe(path: Path, size: int = 900_000) -> int:
    lines = ["schema_version: 1", "recipe: big", "stages:"]
    while sum(len(line) + 1 for line in lines) < size:
        i = len(lines) - 3
        lines.append(f"  s{i}: {{kind: quantize, model: nowhere{i}, activations: int9, bogus: 1}}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 3


def answer_seconds(folder: Path, name: str, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", name], cwd=folder, capture_output=True,
                              text=True, check=False)
        times.append(time.perf_counter() - started)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stages = big_recipe(folder / "big.yaml")
        (folder / "small.yaml").write_text("schema_version: 1\nrecipe: x\nstages: {a: {kind: nope}}\n")
        small = answer_seconds(folder, "small.yaml")
        big = answer_seconds(folder, "big.yaml")
    size = (900_000) / 1e3
    print(f"one-line bad recipe:               {small:6.2f} s (median of 3)")
    print(f"{size:.0f} kB recipe, {stages} bad stages: {big:6.2f} s (median of 3)  ratio {big / small:.2f}  "
          f"goal < 2 s: {'met' if big < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
