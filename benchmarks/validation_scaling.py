"""Validation spread over worker processes: samples/s of validate with 1 and 2 workers, each worker on one core
(the 1-worker run is pinned to one core as a whole; with 2, each shard process pins itself to its own), on
MobileNetV2 a8w8 for SM8650, whose HTP emulation dominates a sample's time. Goal: ≥ 1.8x with 2 workers.
With --dask, the same validate again on a Dask cluster started here (a scheduler and two `dask worker`
processes with their nannies and one thread each, each pinned to its own core, a file:// shared cache): its
shards run as Dask tasks.

    python benchmarks/validation_scaling.py [--samples 16] [--dask]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def built_to_context(folder: Path, samples: int) -> None:
    """The shipped MobileNetV2 recipe in `folder`, for SM8650 alone with `samples` validation samples, built up
    to its context binary (validate is what the benchmarks then time)."""
    shutil.copytree(ROOT / "recipes", folder / "recipes", ignore=shutil.ignore_patterns("models"))
    recipe = folder / "recipes/mobilenet.yaml"
    recipe.write_text(recipe.read_text().replace("targets: [SM8650, SM8750]", "targets: [SM8650]").replace(
        "data: {synthetic: {count: 8, seed: 1000}}", f"data: {{synthetic: {{count: {samples}, seed: 1000}}}}"))
    subprocess.run([sys.executable, "-m", "qnnbuild", "run", "recipes/mobilenet.yaml", "--only", "context"],
                   cwd=folder, check=True, capture_output=True)


def start(folder: Path, workers: int, cores: set[int]) -> subprocess.Popen[str]:
    """validate again with `workers`, the whole run limited to `cores`."""
    recipe = folder / "recipes/mobilenet.yaml"
    text = recipe.read_text().replace("    workers: 1\n", "").replace("    workers: 2\n", "")
    recipe.write_text(text[: text.index("    data:")] + f"    workers: {workers}\n" + text[text.index("    data:"):])
    return subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "recipes/mobilenet.yaml", "--only", "validate",
                             "--force", "validate"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))  # noqa: PLW1509


def timings(folder: Path, *procs: subprocess.Popen[str]) -> dict[str, float]:
    for proc in procs:
        if proc.wait():
            sys.exit(proc.stderr.read()[-3000:] if proc.stderr else "validate failed")
    out = folder / "artifacts/mobilenet_v2/validate/SM8650"
    return dict(json.loads((out / ".qnnbuild/timings.json").read_text()))


def validate(folder: Path, workers: int, cores: set[int]) -> dict[str, float]:
    return timings(folder, start(folder, workers, cores))


def on_dask(folder: Path, cores: list[int]) -> dict[str, float]:
    """validate with --scheduler on two single-thread workers, one per core; the timings it recorded."""
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dask = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(1)
    for core in cores[:2]:
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host",
                                       "127.0.0.1", "--local-directory", str(folder / f"w{core}")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      preexec_fn=lambda c=core: os.sched_setaffinity(0, {c})))  # noqa: PLW1509
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:  # both workers up before the shard count is taken
            client.wait_for_workers(2, timeout=120)
        recipe = folder / "recipes/mobilenet.yaml"
        recipe.write_text(recipe.read_text().replace("    workers: 1\n", "").replace("    workers: 2\n", ""))
        proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", "recipes/mobilenet.yaml", "--only",
                               "validate", "--force", "validate", "--scheduler", address, "--cache",
                               (folder / "cache").as_uri()], cwd=folder, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        return timings(folder)
    finally:
        for proc_ in reversed(procs):
            proc_.terminate()
            proc_.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--dask", action="store_true", help="also validate on a 2-worker Dask cluster")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("needs two cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        built_to_context(folder, args.samples)
        one = validate(folder, 1, {cores[0]})
        metrics_one = (folder / "artifacts/mobilenet_v2/validate/SM8650/metrics.json").read_bytes()
        two = validate(folder, 2, set(cores[:2]))
        same = metrics_one == (folder / "artifacts/mobilenet_v2/validate/SM8650/metrics.json").read_bytes()
        twin = Path(tmp) / "twin"  # the machine's own ceiling: two whole single-worker runs side by side
        shutil.copytree(folder, twin / folder.name, symlinks=True)
        first, second = start(folder, 1, {cores[0]}), start(twin / folder.name, 1, {cores[1]})
        pair = [timings(folder, first), timings(twin / folder.name, second)]
        dask = on_dask(folder, cores) if args.dask else None
        same_dask = dask is None or metrics_one == (folder / "artifacts/mobilenet_v2/validate/SM8650/"
                                                              "metrics.json").read_bytes()
    speedup = two["samples_per_second_wall"] / one["samples_per_second_wall"]
    print(f"MobileNetV2 a8w8, SM8650 emulator, {args.samples} samples (fp32 and QDQ on the CPU beside HTP)\n")
    print("| workers | wall s | samples/s | per-shard s | speed-up | per-worker efficiency |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 (one core) | {one['wall_seconds']:.1f} | {one['samples_per_second_wall']:.2f} | "
          f"{one['shard_seconds']} | 1.00x | 100 % |")
    print(f"| 2 (a core each) | {two['wall_seconds']:.1f} | {two['samples_per_second_wall']:.2f} | "
          f"{two['shard_seconds']} | {speedup:.2f}x | {speedup / 2:.0%} |")
    ceiling = sum(t["samples_per_second_wall"] for t in pair) / one["samples_per_second_wall"]
    print(f"| 2 separate runs (a core each, the machine's ceiling) | {max(t['wall_seconds'] for t in pair):.1f} | "
          f"{sum(t['samples_per_second_wall'] for t in pair):.2f} | | {ceiling:.2f}x | {ceiling / 2:.0%} |")
    if dask is not None:
        fast = dask["samples_per_second_wall"] / one["samples_per_second_wall"]
        print(f"| 2 Dask workers (a thread and a core each) | {dask['wall_seconds']:.1f} | "
              f"{dask['samples_per_second_wall']:.2f} | {dask['shard_seconds']} | {fast:.2f}x | {fast / 2:.0%} |")
        print(f"\nmetrics.json identical on Dask: {same_dask}")
    print(f"\nmetrics.json identical with 1 and 2 workers: {same}")
    print(f"{'met    ' if speedup >= 1.8 else 'NOT MET'}  2 workers >= 1.8x one")


if __name__ == "__main__":
    main()
