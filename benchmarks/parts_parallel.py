"""An LLM's parts compiled on Dask workers: 2 workers against 1, and the deliverable against a serial build.

compile's `parts: K` makes each part's compile its own stage instance (compile.part<k>[T]), so a cluster builds
them side by side. This script builds a random Llama (default 24 layers × 1024, intermediate 4096, vocab 128,256:
~0.5 B parameters, the issue's size) at w4a16 with `parts: 2` three ways from the same quantize output: serially
here (`-j 1`), on a local Dask cluster of 1 worker and of 2 (`--scheduler local:N`, a folder as the shared cache).
Printed, each way: the span of the compile instances (from the first split's start to the join's end, read from
the progress lines) and the whole run's wall time (cluster start-up, the check of the cached export and quantize
entries and cache fetches included); the ratios 2 workers / 1 (the issue's goal: ≤ 0.6 for the ~0.5 B model);
whether the three deliverables are byte for byte equal.

Run: python benchmarks/parts_parallel.py [--shape 24:1024:4096:128256] [--parts 2] [--rounds N] [--reuse]
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
from statistics import median

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


def qnnbuild(root: Path, *args: str) -> float:
    """Run qnnbuild; returns the seconds from the first compile instance's start (`compile.split1`) to the end
    of the join (`compile[...]`), read from its progress lines as they come (0 when none ran)."""
    proc = subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "parts.yaml", *args], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = last = 0.0
    tail: list[str] = []
    began = time.perf_counter()
    for line in proc.stderr:
        tail = [*tail[-40:], line]
        if "✓" in line or ("running" in line and "still running" not in line):
            print(f"    {time.perf_counter() - began:7.1f} s  {line.strip()}", flush=True)  # the timeline
        if "compile.split" in line and "running" in line and not first:
            first = time.perf_counter()
        if "✓ compile[" in line:
            last = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(f"qnnbuild run {' '.join(args)} failed:\n{''.join(tail)}")
    return last - first if first and last else 0.0


def deliverable(root: Path, artifacts: str) -> dict[str, str]:
    """The deliverable's files by their sha256 (the files themselves are GBs)."""
    import hashlib

    folder = root / artifacts / "parts/context/SM8650"
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".qnnbuild" not in p.parts}


def build(root: Path, artifacts: str, *args: str, compare: bool = True) -> tuple[float, float, dict[str, str]]:
    """(seconds of the compile instances, from the first split's start to the join's end; seconds of the whole
    run, cluster start-up, cached-entry checks and cache fetches included; the deliverable that follows, when
    `compare`), on a copy of the seeded cache, removed afterwards: a 0.5 B model's cache holds GBs of fp32
    graphs."""
    cache = root / f"cache-{artifacts}"
    # hard links to the entries (a build reads them and writes new ones beside them; `deps/` lists are rewritten
    # in place, so they are copied), then everything written so far on disk: a 6 GB copy whose write-back ran
    # into the timed build slowed the parallel compiles most
    shutil.copytree(root / "cache0", cache, copy_function=lambda src, dst: shutil.copyfile(src, dst)
                    if Path(src).parent.name == "deps" else os.link(src, dst))
    os.sync()
    started = time.perf_counter()
    span = qnnbuild(root, "--artifacts", artifacts, "--cache", str(cache), "--only", "compile", *args)
    whole = time.perf_counter() - started
    found = {}
    if compare:
        qnnbuild(root, "--artifacts", artifacts, "--cache", str(cache))  # the context stage: the deliverable
        found = deliverable(root, artifacts)
    shutil.rmtree(cache)
    shutil.rmtree(root / artifacts)
    return span, whole, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="24:1024:4096:128256", help="LAYERS:HIDDEN:INTER:VOCAB")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "qnnbuild-parts-parallel"))
    parser.add_argument("--rounds", type=int, default=1, help="build each way this many times, interleaved "
                        "(medians are printed; the deliverables are compared in the first round)")
    parser.add_argument("--reuse", action="store_true", help="keep the workdir's seeded cache (export and quantize "
                        "of the same shape)")
    args = parser.parse_args()
    root = Path(args.workdir)
    from qnnbuild.zoo.tinyllama import stdlib_sentences

    layers, hidden, inter, vocab = (int(v) for v in args.shape.split(":"))
    seeded = args.reuse and (root / "cache0").is_dir()
    if not seeded:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    params = random_llama(root / "llama", layers, hidden, inter, vocab)  # made unless it is there
    if not seeded:
        (root / "text.txt").write_text("\n".join(stdlib_sentences(4)) + "\n")
        (root / "parts.yaml").write_text(RECIPE.format(folder=root / "llama", parts=args.parts))
        qnnbuild(root, "--artifacts", "base", "--cache", str(root / "cache0"), "--only", "quantize")
    spans: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    outputs = []
    for round_ in range(args.rounds):  # the ways interleaved, so a busy spell of a shared machine hits them alike
        for what, artifacts, flags in WAYS:
            span, wall, found = build(root, artifacts, *flags, compare=round_ == 0)
            spans.setdefault(what, []).append(span)
            walls.setdefault(what, []).append(wall)
            if round_ == 0:
                outputs.append(found)
    same = outputs[0] == outputs[1] == outputs[2]
    print(f"\nrandom Llama {args.shape}: {params / 1e6:.0f} M parameters, w4a16, parts: {args.parts}, "
          f"{args.rounds} round(s): medians, each round's figures after them")
    print(f"  {'':<18}{'compile instances':>20}{'whole run':>12}")
    for what, times in spans.items():
        rounds = "" if args.rounds == 1 else "   (" + ", ".join(f"{s:.1f}" for s in times) + " s)"
        print(f"  {what:<18}{median(times):>18.1f} s{median(walls[what]):>10.1f} s{rounds}")
    two, one = spans["Dask, 2 workers"], spans["Dask, 1 worker"]
    each = ", ".join(f"{a / b:.2f}" for a, b in zip(two, one, strict=True))
    print(f"  2 workers / 1 worker: compile instances {median(two) / median(one):.2f}x (goal ≤ 0.6x; each round: "
          f"{each}), whole run {median(walls['Dask, 2 workers']) / median(walls['Dask, 1 worker']):.2f}x; "
          f"2 workers / serial: {median(two) / median(spans['serial (-j 1)']):.2f}x")
    print(f"  deliverables byte-identical (serial, 1 worker, 2 workers): {same}")
    return 0 if same else 1


WAYS = (("serial (-j 1)", "serial", ("-j", "1")), ("Dask, 1 worker", "dask1", ("--scheduler", "local:1")),
        ("Dask, 2 workers", "dask2", ("--scheduler", "local:2")))


if __name__ == "__main__":
    raise SystemExit(main())
