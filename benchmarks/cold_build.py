"""A cold build of an ONNX MobileNetV2 (export, quantize uint8 per channel on 16 samples, compile, context binary
for SM8650) against the floor measured in the same run: one plain Python process doing the same quantize and
context generation with onnxruntime directly, imports paid once. qnnbuild runs each stage in a fresh process
(QNN state leaks within one); with the fork server those processes are forked from one that has imported onnx,
onnxruntime and the quantizer, without it each starts a new interpreter (QNNBUILD_FORKSERVER=0). Goal: ≤ 1.25x.

    python benchmarks/cold_build.py [--repeat 3]
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
RECIPE = """\
schema_version: 1
recipe: cold
targets: [SM8650]
stages:
  export: {kind: export, onnx: mobilenet_v2.onnx}
  quantize: {kind: quantize, model: export, activations: uint8, weights: uint8, per_channel: true,
             calibration: {synthetic: {count: 16, seed: 0}}}
  compile: {kind: compile, model: quantize}
  context: {kind: context-binary, compiled: compile}
"""
FLOOR = """
import sys, numpy as np, onnxruntime as ort, onnxruntime_qnn
from onnxruntime.quantization import QuantType, quantize_static, CalibrationDataReader
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
rng = np.random.default_rng(0)
class Reader(CalibrationDataReader):
    def __init__(self):
        self.items = iter([{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
                           for _ in range(16)])
    def get_next(self): return next(self.items, None)
config = get_qnn_qdq_config("mobilenet_v2.onnx", Reader(), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QUInt8, per_channel=True)
quantize_static("mobilenet_v2.onnx", "qdq.onnx", config.calibration_data_reader, quant_format=config.quant_format,
                activation_type=config.activation_type, weight_type=config.weight_type,
                op_types_to_quantize=config.op_types_to_quantize, per_channel=config.per_channel,
                extra_options=config.extra_options)
ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
so = ort.SessionOptions()
for k, v in {"ep.context_enable": "1", "ep.context_file_path": "ctx.onnx", "ep.context_embed_mode": "0"}.items():
    so.add_session_config_entry(k, v)
devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
so.add_provider_for_devices(devices, {"backend_type": "htp", "soc_model": "57", "htp_arch": "75"})
ort.InferenceSession("qdq.onnx", so)
"""


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, check=False, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "recipes", folder / "recipes", ignore=shutil.ignore_patterns("models"))
        subprocess.run([sys.executable, "-m", "qnnbuild", "run", "recipes/mobilenet.yaml", "--only", "export"],
                       cwd=folder, check=True, capture_output=True, env=env)
        shutil.copyfile(folder / "artifacts/mobilenet_v2/export/model.onnx", folder / "mobilenet_v2.onnx")
        (folder / "cold.yaml").write_text(RECIPE)
        (folder / "floor.py").write_text(FLOOR)
        found: dict[str, list[float]] = {"floor": [], "forkserver": [], "interpreter": []}
        for _ in range(args.repeat):  # interleaved, so a noisy minute hits all three alike
            for name in ("ctx.onnx", "ctx_qnn.bin", "qdq.onnx"):
                (folder / name).unlink(missing_ok=True)
            found["floor"].append(timed([sys.executable, "floor.py"], folder, env))
            for name, flag in (("forkserver", "1"), ("interpreter", "0")):
                shutil.rmtree(folder / "artifacts", ignore_errors=True)
                found[name].append(timed([sys.executable, "-m", "qnnbuild", "run", "cold.yaml"], folder,
                                         {**env, "QNNBUILD_FORKSERVER": flag}))
    floor = statistics.median(found["floor"])
    print(f"ONNX MobileNetV2, uint8 per channel, 16 calibration samples, SM8650; median of {args.repeat}\n")
    print("| build | seconds (each run) | median | against the floor |")
    print("|---|---|---|---|")
    for name, label in (("floor", "one Python process, onnxruntime directly"),
                        ("forkserver", "qnnbuild cold, stage processes forked from the fork server"),
                        ("interpreter", "qnnbuild cold, a new interpreter per stage (QNNBUILD_FORKSERVER=0)")):
        runs = found[name]
        print(f"| {label} | {', '.join(f'{s:.1f}' for s in runs)} | {statistics.median(runs):.1f} | "
              f"{statistics.median(runs) / floor:.2f}x |")
    ratio = statistics.median(found["forkserver"]) / floor
    print(f"\n{'met    ' if ratio <= 1.25 else 'NOT MET'}  qnnbuild cold <= 1.25x the floor ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
