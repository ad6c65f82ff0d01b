"""Peak memory of calibration on MobileNetV2 (224×224): 16 vs 512 samples.

qnnbuild's quantize stage loads one sample at a time and feeds onnxruntime's calibrator in strides of at
most 16 samples; onnxruntime's own default keeps every sample's intermediate tensors until the end. Both
are measured as the peak RSS of a fresh process doing only the quantization. The unstrided baseline is
measured at smaller counts (at 512 samples it would need on the order of 10 GB).
Run: python benchmarks/calibration_memory.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = """
import resource, sys, numpy as np
from onnxruntime.quantization import quantize
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
n = int(sys.argv[2])
class Reader:
    def __init__(self):
        self.i = 0
    def get_next(self):
        if self.i >= n:
            return None
        self.i += 1
        return {"input": np.random.default_rng([0, self.i]).standard_normal((1, 3, 224, 224)).astype("float32")}
from onnxruntime.quantization import CalibrationMethod
method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[sys.argv[4]]
cfg = get_qnn_qdq_config(sys.argv[1], Reader(), per_channel=True, calibrate_method=method)
quantize(sys.argv[1], sys.argv[3], cfg)
print("peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB")
"""

RECIPE = """schema_version: 1
recipe: cal
stages:
  export: {{kind: export, torch: "qnnbuild.zoo.mobilenet:mobilenet_v2", inputs: {{input: [1, 3, 224, 224]}}}}
  quantize: {{kind: quantize, model: export, per_channel: true, method: {method},
             calibration: {{synthetic: {{count: {n}, seed: 0}}}}}}
"""


def qnnbuild_peak(root: Path, n: int, method: str) -> tuple[float, float]:
    (root / "r.yaml").write_text(RECIPE.format(n=n, method=method))
    subprocess.run([sys.executable, "-m", "qnnbuild", "run", "r.yaml", "--only", "export"], cwd=root, check=True,
                   capture_output=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qnnbuild", "run", "r.yaml"], cwd=root, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    log = (root / "artifacts/cal/quantize/.qnnbuild/stage.log").read_text()
    return float(re.findall(r"peak RSS (\d+) MB", log)[-1]), seconds


def baseline_peak(root: Path, n: int, method: str) -> tuple[float, float]:
    model = root / "artifacts/cal/export/model.onnx"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BASELINE, str(model), str(n), str(root / f"base{n}.onnx"), method],
                          check=True, capture_output=True, text=True)
    return float(re.findall(r"peak RSS ([\d.]+) MB", done.stdout)[-1]), time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("MobileNetV2 224×224, u8/u8 per-channel, synthetic samples; peak RSS of the quantizing process")
        for method in ("minmax", "percentile"):
            ours = {n: qnnbuild_peak(root, n, method) for n in (16, 512)}
            base = {n: baseline_peak(root, n, method) for n in (16, 64)}
            for n, (mb, s) in ours.items():
                print(f"{method:<10} qnnbuild (strided)              {n:4d} samples: {mb:7.0f} MB  {s:6.1f} s")
            for n, (mb, s) in base.items():
                print(f"{method:<10} onnxruntime default (unstrided) {n:4d} samples: {mb:7.0f} MB  {s:6.1f} s")
            print(f"{method:<10} growth: qnnbuild 16 → 512 samples ×{ours[512][0] / ours[16][0]:.2f}; onnxruntime "
                  f"16 → 64 samples ×{base[64][0] / base[16][0]:.2f} "
                  f"(+{(base[64][0] - base[16][0]) / 48:.1f} MB per sample)")


if __name__ == "__main__":
    main()
