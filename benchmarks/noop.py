"""No-op build time: qnnbuild against an equivalent doit dodo.py over the same files.

A 5-stage chain of command stages reads a 50 MB input. Both tools build once; then we time
  (1) a no-op run (nothing changed), and
  (2) the first run after `touch`ing the 50 MB input (content unchanged: both must re-hash it once, and
      nothing may rebuild).
and (3) a no-op of the minimal 5-instance QNN recipe (export → quantize → convert → compile → context for one
target) over a 15 kB ONNX model, against a doit chain of 5 tasks over the same file.
Prints medians and the ratio qnnbuild / doit (target: ≤ 1.0). Run: python benchmarks/noop.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

STEP = "import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"


def setup(root: Path) -> None:
    (root / "step.py").write_text(STEP)
    with (root / "data.bin").open("wb") as fh:
        fh.write(os.urandom(50 * 2**20))
    stages = []
    for i, name in enumerate("abcde"):
        src = "{inputs.src}" if i == 0 else "{uses.up}/" + "abcde"[i - 1] + ".out"
        feed = "inputs: {src: data.bin, step: step.py}" if i == 0 else \
            f"inputs: {{step: step.py}}, uses: {{up: {'abcde'[i - 1]}}}"
        stages.append(f"  {name}: {{kind: command, argv: [{sys.executable}, '{{inputs.step}}', '{src}', "
                      f"'{{out.{name}.out}}'], {feed}, outputs: [{name}.out]}}")
    (root / "r.yaml").write_text("schema_version: 1\nrecipe: bench\nstages:\n" + "\n".join(stages) + "\n")
    write_dodo(root, list("abcde"), "data.bin")


def write_dodo(root: Path, chain: list[str], first: str) -> None:
    """doit's equivalent: tasks copying `first` down `chain`, each depending on the last one's output."""
    (root / "dodo.py").write_text(textwrap.dedent(f"""\
        DOIT_CONFIG = {{"dep_file": "doit-db", "verbosity": 0}}
        CHAIN = {chain!r}
        def task_step():
            for i, name in enumerate(CHAIN):
                src = {first!r} if i == 0 else f"doit-out/{{CHAIN[i - 1]}}.out"
                yield {{"name": name, "file_dep": [src, "step.py"], "targets": [f"doit-out/{{name}}.out"],
                       "actions": ["mkdir -p doit-out",
                                   [{sys.executable!r}, "step.py", src, f"doit-out/{{name}}.out"]]}}
        """))


TINY = """\
schema_version: 1
recipe: tiny
targets: [SM8650]
stages:
  export:   {kind: export, onnx: model.onnx}
  quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 4, seed: 0}}}
  convert:  {kind: convert, model: quantize}
  compile:  {kind: compile, model: quantize, after: [convert]}
  context:  {kind: context-binary, compiled: compile}
"""


def setup_tiny(root: Path) -> None:
    """The minimal real recipe over a small conv model, and doit's five chained tasks over the same model."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import make_conv_model

    make_conv_model(root / "model.onnx")
    (root / "step.py").write_text(STEP)
    (root / "r.yaml").write_text(TINY)
    write_dodo(root, ["export", "quantize", "convert", "compile", "context"], "model.onnx")


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    qnnbuild = [sys.executable, "-m", "qnnbuild", "run", "r.yaml"]
    doit = [sys.executable, "-m", "doit", "-f", "dodo.py"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(root)
        for cmd in (qnnbuild, doit):
            subprocess.run(cmd, cwd=root, check=True, capture_output=True)
            subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        results: dict[str, dict[str, float]] = {}
        for label, touch in (("no-op", False), ("after touch of the 50 MB input", True)):
            figures: dict[str, list[float]] = {"qnnbuild": [], "doit": []}
            for _ in range(args.repeat):
                for name, cmd in (("qnnbuild", qnnbuild), ("doit", doit)):
                    if touch:
                        os.utime(root / "data.bin")
                    figures[name].append(timed(cmd, root))
            results[label] = {k: statistics.median(v) for k, v in figures.items()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup_tiny(root)
        for cmd in (qnnbuild, doit):
            subprocess.run(cmd, cwd=root, check=True, capture_output=True)
            subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        figures = {"qnnbuild": [], "doit": []}
        for _ in range(args.repeat):
            for name, cmd in (("qnnbuild", qnnbuild), ("doit", doit)):
                figures[name].append(timed(cmd, root))
        results["no-op, minimal QNN recipe (15 kB)"] = {k: statistics.median(v) for k, v in figures.items()}
    print(f"5-stage chains, median of {args.repeat} runs each")
    for label, med in results.items():
        ratio = med["qnnbuild"] / med["doit"]
        print(f"{label:<36} qnnbuild {med['qnnbuild'] * 1000:7.1f} ms   doit {med['doit'] * 1000:7.1f} ms   "
              f"ratio {ratio:.2f} {'(target ≤ 1.0: met)' if ratio <= 1.0 else '(target ≤ 1.0: MISSED)'}")


if __name__ == "__main__":
    main()
