"""The tiny Llama of recipes/tinyllama.yaml at w8a16, w4a16 and w4a16 with keep_8bit: [lm_head], side by side in
one run on SM8650, fp32 as the baseline: perplexity on 8 held-out sentences (teacher forcing), greedy agreement
with fp32 (32 tokens after the first 8 of each), decode tokens/s on the HTP emulator.

    python benchmarks/llm_precision.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"w8a16": "precision: w8a16", "w4a16": "precision: w4a16",
            "w4a16_keep_lm_head": "precision: w4a16, keep_8bit: [lm_head]"}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "recipes", folder / "recipes", ignore=shutil.ignore_patterns("models"))
        subprocess.run([sys.executable, "-m", "qnnbuild.zoo.tinyllama", "recipes/models/tinyllama"], cwd=folder,
                       check=True, capture_output=True)
        text = (folder / "recipes/tinyllama.yaml").read_text().replace("targets: [SM8650, SM8750]", "targets: [SM8650]")
        for name, setting in VARIANTS.items():
            variant = text.replace("recipe: tinyllama", f"recipe: {name}").replace(
                "    precision: w8a16                          # w4a16 with keep_8bit: [lm_head] for 4-bit weights",
                f"    {setting.replace(', ', chr(10) + '    ')}")
            (folder / f"recipes/{name}.yaml").write_text(variant)
        proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", *(f"recipes/{n}.yaml" for n in VARIANTS)],
                              cwd=folder, capture_output=True, text=True, check=False)
        print("tiny Llama (2 layers, 128 wide), context 64, prefill 16, KV cache 8-bit, SM8650 emulator, "
              "8 held-out sentences\n")
        print("| build | perplexity fp32 / QDQ-CPU / HTP | HTP / fp32 | greedy agreement HTP (QDQ-CPU) | "
              "HTP decode tokens/s |")
        print("|---|---|---|---|---|")
        shared: dict[str, dict[str, float]] = {}
        for name in VARIANTS:
            out = folder / f"artifacts/{name}/validate/SM8650"
            if not (out / "metrics.json").is_file():
                print(f"| {name} | not built: {proc.stderr[-300:]} | | | |")
                continue
            m = json.loads((out / "metrics.json").read_text())
            speed = json.loads((out / ".qnnbuild/timings.json").read_text())["decode_tokens_per_second"]
            ppl, agree = m["perplexity"], m["greedy_agreement"]
            spec = json.loads((folder / f"artifacts/{name}/context/SM8650/io_spec.json").read_text())
            shared[name] = spec.get("weight_shared", {})
            print(f"| {name} | {ppl['fp32']:.2f} / {ppl['qdq_cpu']:.2f} / {ppl['htp']:.2f} | "
                  f"{ppl['htp'] / ppl['fp32']:.3f} | {agree['htp']:.1%} ({agree['qdq_cpu']:.1%}) | "
                  f"{speed['htp']:.1f} |")
        for name, found in shared.items():
            if found:
                print(f"{name}: weight-shared binary {found['bytes'] / 1e3:.0f} kB, {found['size_ratio']:.2f}x the "
                      "prefill graph's own binary (not run here)")


if __name__ == "__main__":
    main()

