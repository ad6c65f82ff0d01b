"""Quantization techniques on MobileNetV2 (recipes/mobilenet.yaml's model), confirmed on the HTP emulator.

Builds one recipe per variant for SM8650 in one run (export is shared): onnxruntime's PTQ as the baseline,
AIMET's CLE, SeqMSE and AdaRound (if asked: minutes), and auto_precision towards a goal. Prints, per variant,
the output SQNR against fp32 on the HTP emulator and of the QDQ model on the CPU, the quantize stage's wall
time and peak RSS, and the auto_precision trajectory. Run: python benchmarks/accuracy.py [--adaround]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "ptq": "",
    "cle": ", technique: cle",
    "seqmse": ", technique: seqmse",
    "amp30": ", auto_precision: {min_sqnr_db: 30, max_promoted: 12}",
}


def recipe(name: str, extra: str) -> str:
    return f"""\
schema_version: 1
recipe: {name}
targets: [SM8650]
stages:
  export: {{kind: export, torch: "qnnbuild.zoo.mobilenet:mobilenet_v2", inputs: {{input: [1, 3, 224, 224]}},
           outputs: [logits]}}
  quantize: {{kind: quantize, model: export, calibration: {{synthetic: {{count: 16}}}}, per_channel: true{extra}}}
  compile: {{kind: compile, model: quantize}}
  context: {{kind: context-binary, compiled: compile}}
  validate: {{kind: validate, context: context, reference: export, quantized: quantize,
             data: {{synthetic: {{count: 8, seed: 1000}}}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaround", action="store_true", help="also cle + adaround (slow)")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if args.adaround:
        variants["cle_adaround"] = ", technique: [cle, adaround]"
    with tempfile.TemporaryDirectory(prefix="qnnbuild-accuracy-") as name:
        tmp = Path(name)
        files = []
        for variant, extra in variants.items():
            (tmp / f"{variant}.yaml").write_text(recipe(variant, extra))
            files.append(f"{variant}.yaml")
        proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", *files, "--json"], cwd=tmp,
                              capture_output=True, text=True, check=False)
        out = json.loads(proc.stdout)
        print(f"{'variant':<14} {'SQNR HTP':>9} {'SQNR QDQ-CPU':>13} {'quantize s':>11} {'peak RSS MB':>12}")
        for entry in out["recipes"]:
            variant = entry["recipe"]
            stages = {s["id"]: s for s in entry["stages"]}
            quantize = stages["quantize"]
            log = (tmp / "artifacts" / variant / "quantize" / ".qnnbuild" / "stage.log")
            text = log.read_text() if log.is_file() else ""
            rss = re.findall(r"peak RSS (\d+) MB", text)
            metrics_file = tmp / "artifacts" / variant / "validate" / "SM8650" / "metrics.json"
            if not metrics_file.is_file():
                print(f"{variant:<14} failed: {quantize.get('status')}")
                continue
            sqnr = json.loads(metrics_file.read_text())["sqnr_db"]["logits"]
            print(f"{variant:<14} {sqnr['htp']:>8.2f}  {sqnr['qdq_cpu']:>12.2f} {quantize['seconds']:>11.1f} "
                  f"{rss[-1] if rss else '?':>12}")
            precision = tmp / "artifacts" / variant / "quantize" / "precision.json"
            if precision.is_file():
                found = json.loads(precision.read_text())
                print(f"  auto_precision steps [promoted, dB]: {found['steps']}; promoted {found['promoted']}")
        if proc.returncode:
            print(proc.stderr[-2000:])


if __name__ == "__main__":
    main()
