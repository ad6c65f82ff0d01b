"""HTP emulation speed with and without the glibc trim threshold a Dask nanny sets for its workers
(MALLOC_TRIM_THRESHOLD_=65536), which stage and shard processes on a nanny worker inherit. validate of
MobileNetV2 a8w8 on SM8650 in one process on one core, the two settings interleaved. Measured here: 1.12x and
1.03x the samples/s with it (medians of 3 and 5): no slowdown, so qnnbuild leaves the variable alone (a single
earlier observation of 13 % fewer samples/s with it did not reproduce).

    python benchmarks/malloc_trim.py [--samples 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from validation_scaling import built_to_context  # run as a script: benchmarks/ is on sys.path


def htp_rate(folder: Path, trim: str | None) -> float:
    """validate again, pinned to one core, with or without the threshold; HTP samples/s it recorded."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    if trim:
        env["MALLOC_TRIM_THRESHOLD_"] = trim
    core = min(os.sched_getaffinity(0))
    subprocess.run(["taskset", "-c", str(core), sys.executable, "-m", "qnnbuild", "run", "recipes/mobilenet.yaml",
                    "--only", "validate", "--force", "validate", "-j", "1"], cwd=folder, env=env, check=True,
                   capture_output=True)
    timings = folder / "artifacts/mobilenet_v2/validate/SM8650/.qnnbuild/timings.json"
    return float(json.loads(timings.read_text())["samples_per_second"]["htp"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        built_to_context(folder, args.samples)
        found: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.repeat):
            found["without"].append(htp_rate(folder, None))
            found["with"].append(htp_rate(folder, "65536"))
    without, with_trim = statistics.median(found["without"]), statistics.median(found["with"])
    print(f"MobileNetV2 a8w8, SM8650 emulator, {args.samples} samples, one core; median of {args.repeat}\n")
    print("| MALLOC_TRIM_THRESHOLD_ | HTP samples/s (each run) | median |")
    print("|---|---|---|")
    for name, label in (("without", "unset (glibc's default)"), ("with", "65536 (a Dask nanny's)")):
        print(f"| {label} | {', '.join(f'{r:.2f}' for r in found[name])} | {statistics.median(found[name]):.2f} |")
    print(f"\nwith the threshold: {with_trim / without:.2f}x the samples/s without it")


if __name__ == "__main__":
    main()
