"""An LLM's parts compiled on Dask workers: 2 workers against 1, and the deliverable against a serial build.

compile's `parts: K` makes each part's compile its own stage instance (compile.part<k>[T]), so a cluster builds
them side by side. This script builds a random Llama (default 24 layers × 1024, intermediate 4096, vocab 128,256:
~0.5 B parameters, the issue's size) at w4a16 with `parts: 2` three ways from the same quantize output: serially
here (`-j 1`), on a local Dask cluster of 1 worker and of 2 (`--scheduler local:N`, a folder as the shared cache).
Printed: the wall time of each run that compiles the parts (splits, part compiles and the join; cluster start-up
and cache fetches included), the ratio 2 workers / 1 (the issue's goal: ≤ 0.6 for the ~0.5 B model), and whether
the three deliverables are byte for byte equal.

Run: python benchmarks/parts_parallel.py [--shape 24:1024:4096:128256] [--parts 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_memory import random_llama  # run as a script: benchmarks/ is on sys.path

RECIPE = """schema_version: 1
recipe: parts
targets: [SM8650]
stages:
  export: {{kind: export, hf: {folder}, task: causal-lm, llm: {{context_length: 64, prefill: 16}}}}
  quantize: {{kind: quantize, model: export, precision: w4a16, block_size: 32, keep_8bit: [lm_head],
             calibration: {{text: {{file: text.txt, count: 4}}}}}}
  compile: {{kind: compile, model: quantize, parts: {parts}}}
  context: {{kind: context-binary, compiled: compile}}
"""


def qnnbuild(root: Path, *args: str) -> dict[str, dict[str, object]]:
    proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", "parts.yaml", "--json", *args], cwd=root,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"qnnbuild run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return {s["id"]: s for s in json.loads(proc.stdout)["stages"]}


def deliverable(root: Path, artifacts: str) -> dict[str, str]:
    """The deliverable's files by their sha256 (the files themselves are GBs)."""
    import hashlib

    folder = root / artifacts / "parts/context/SM8650"
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".qnnbuild" not in p.parts}


def build(root: Path, artifacts: str, *args: str) -> tuple[float, dict[str, str]]:
    """(seconds of a run that takes export and quantize from a copy of the seeded cache and compiles every part
    (cluster start-up and the cache fetch included), the deliverable that follows). The copy goes afterwards:
    a 0.5 B model's cache holds GBs of fp32 graphs."""
    cache = root / f"cache-{artifacts}"
    shutil.copytree(root / "cache0", cache)
    started = time.perf_counter()
    qnnbuild(root, "--artifacts", artifacts, "--cache", str(cache), "--only", "compile", *args)
    seconds = time.perf_counter() - started
    qnnbuild(root, "--artifacts", artifacts, "--cache", str(cache))  # the context stage: the deliverable
    found = deliverable(root, artifacts)
    shutil.rmtree(cache)
    shutil.rmtree(root / artifacts)
    return seconds, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="24:1024:4096:128256", help="LAYERS:HIDDEN:INTER:VOCAB")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "qnnbuild-parts-parallel"))
    args = parser.parse_args()
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    from qnnbuild.zoo.tinyllama import stdlib_sentences

    layers, hidden, inter, vocab = (int(v) for v in args.shape.split(":"))
    params = random_llama(root / "llama", layers, hidden, inter, vocab)
    (root / "text.txt").write_text("\n".join(stdlib_sentences(4)) + "\n")
    (root / "parts.yaml").write_text(RECIPE.format(folder=root / "llama", parts=args.parts))
    qnnbuild(root, "--artifacts", "base", "--cache", str(root / "cache0"), "--only", "quantize")
    walls, outputs = {}, []
    for what, artifacts, flags in (("serial (-j 1)", "serial", ("-j", "1")),
                                   ("Dask, 1 worker(s)", "dask1", ("--scheduler", "local:1")),
                                   ("Dask, 2 worker(s)", "dask2", ("--scheduler", "local:2"))):
        walls[what], found = build(root, artifacts, *flags)
        outputs.append(found)
    same = outputs[0] == outputs[1] == outputs[2]
    print(f"\nrandom Llama {args.shape}: {params / 1e6:.0f} M parameters, w4a16, parts: {args.parts}")
    for what, seconds in walls.items():
        print(f"  compile wall {what:<20} {seconds:8.1f} s")
    ratio = walls["Dask, 2 worker(s)"] / walls["Dask, 1 worker(s)"]
    print(f"  2 workers / 1 worker: {ratio:.2f}x (goal ≤ 0.6x)")
    print(f"  deliverables byte-identical (serial, 1 worker, 2 workers): {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
