"""Issue 17's goals side by side in one run, on the tiny Llama of recipes/tinyllama.yaml (SM8650), fp32 the
baseline:

- perplexity on 8 held-out sentences (fp32 / QDQ on the CPU / HTP emulator) and teacher-forced token agreement
  with fp32, at w8a16 and at w4a16 with MatMul weights per tensor (onnxruntime's own choice), per channel and block-wise
  (block 64 and 32, QNN's LPBQ); goals: w8a16 ≤ 1.05 × fp32 and agreement ≥ 90 %, w4a16 ≤ 1.25 × fp32, HTP
  within 2 % of the QDQ model on the CPU;
- editing only the LM head's precision (keep_8bit: [lm_head]) rebuilds no export;
- a fresh clone with the shared cache warm builds nothing;
- the weight-shared binary against one non-shared graph's binary (goal ≤ 1.15 ×), for the tiny Llama and for a
  wider random one (4 layers, 512 wide) whose weights, not its graph structure, make up the binary.

    python benchmarks/llm_goals.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRECISION_LINE = "    precision: w8a16                          # w4a16 with keep_8bit: [lm_head] for 4-bit weights"
VARIANTS = {"w8a16": ["precision: w8a16"], "w4a16_per_tensor": ["precision: w4a16", "per_channel: false"],
            "w4a16": ["precision: w4a16"], "w4a16_block64": ["precision: w4a16", "block_size: 64"],
            "w4a16_block32": ["precision: w4a16", "block_size: 32"]}
EDITED = "w4a16_block32"


def qnnbuild(folder: Path, *args: str) -> list[dict[str, Any]]:
    """`qnnbuild run ARGS --json` in `folder`; every stage instance of every recipe it built."""
    proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", *args, "--json"], cwd=folder,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"qnnbuild run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    return [s for r in out.get("recipes", [out]) for s in r["stages"]]


def variant(text: str, name: str, settings: list[str]) -> str:
    return text.replace("recipe: tinyllama", f"recipe: {name}").replace(
        PRECISION_LINE, "\n".join(f"    {s}" for s in settings))


def row(folder: Path, name: str, label: str) -> tuple[str, dict[str, float]]:
    out = folder / f"artifacts/{name}/validate/SM8650"
    m = json.loads((out / "metrics.json").read_text())
    speed = json.loads((out / ".qnnbuild/timings.json").read_text())["decode_tokens_per_second"]["htp"]
    ppl, agree = m["perplexity"], m["token_agreement"]
    figures = {"ratio": ppl["htp"] / ppl["fp32"], "agreement": agree["htp"], "htp_vs_cpu": ppl["htp"] / ppl["qdq_cpu"]}
    return (f"| {label} | {ppl['fp32']:.2f} / {ppl['qdq_cpu']:.2f} / {ppl['htp']:.2f} | {figures['ratio']:.3f} | "
            f"{agree['htp']:.1%} ({agree['qdq_cpu']:.1%}) | {figures['htp_vs_cpu'] - 1:+.2%} | {speed:.1f} |"), figures


def shared_ratio(folder: Path, name: str) -> str:
    spec = json.loads((folder / f"artifacts/{name}/context/SM8650/io_spec.json").read_text())["weight_shared"]
    return f"{spec['bytes'] / 1e3:,.0f} kB, {spec['size_ratio']:.2f} x the prefill graph's own binary"


def wide_llama(folder: Path, tokenizer_from: Path) -> None:
    """A random Llama, 4 layers 512 wide (13 M parameters), with the tiny one's tokenizer."""
    import torch

    from qnnbuild.toolchain.sources.hfexport import import_transformers  # hides a torchvision that cannot load

    transformers = import_transformers()
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_from / name).is_file():
            shutil.copyfile(tokenizer_from / name, folder / name)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, clone, cache = Path(tmp) / "ci", Path(tmp) / "clone", Path(tmp) / "cache"
        shutil.copytree(ROOT / "recipes", folder / "recipes", ignore=shutil.ignore_patterns("models"))
        subprocess.run([sys.executable, "-m", "qnnbuild.zoo.tinyllama", "recipes/models/tinyllama"], cwd=folder,
                       check=True, capture_output=True)
        wide_llama(folder / "recipes/models/wide", folder / "recipes/models/tinyllama")
        text = (folder / "recipes/tinyllama.yaml").read_text().replace("targets: [SM8650, SM8750]", "targets: [SM8650]")
        for name, settings in VARIANTS.items():
            (folder / f"recipes/{name}.yaml").write_text(variant(text, name, settings))
        recipes = [f"recipes/{n}.yaml" for n in VARIANTS]
        qnnbuild(folder, *recipes, "--cache", cache.as_uri())
        rows = {name: row(folder, name, name.replace("_", " ")) for name in VARIANTS}

        edited = variant(text, EDITED, [*VARIANTS[EDITED], "keep_8bit: [lm_head]"])
        (folder / f"recipes/{EDITED}.yaml").write_text(edited)
        rebuilt = qnnbuild(folder, f"recipes/{EDITED}.yaml", "--cache", cache.as_uri())
        statuses = {s["id"]: s["status"] for s in rebuilt}
        rows["keep"] = row(folder, EDITED, "w4a16 block32, keep_8bit: [lm_head]")

        shutil.copytree(folder / "recipes", clone / "recipes")
        warm = qnnbuild(clone, *recipes, "--cache", cache.as_uri())
        built = [s["id"] for s in warm if s["status"] == "ran"]

        wide = text.replace("recipe: tinyllama", "recipe: wide").replace("hf: models/tinyllama", "hf: models/wide")
        (folder / "recipes/wide.yaml").write_text(wide.split("  validate:")[0])
        qnnbuild(folder, "recipes/wide.yaml")

        print("tiny Llama (2 layers, 128 wide), context 64, prefill 16, KV cache 8-bit, SM8650 emulator, 8 held-out "
              "sentences, fp32 the baseline\n")
        print("| build | perplexity fp32 / QDQ-CPU / HTP | HTP / fp32 | token agreement HTP (QDQ-CPU) | "
              "HTP against QDQ-CPU | HTP decode tokens/s |")
        print("|---|---|---|---|---|---|")
        for line, _ in rows.values():
            print(line)
        goals = {"w8a16 perplexity <= 1.05 x fp32": rows["w8a16"][1]["ratio"] <= 1.05,
                 "w8a16 token agreement >= 90 %": rows["w8a16"][1]["agreement"] >= 0.9,
                 "every w4a16 perplexity <= 1.25 x fp32": all(f["ratio"] <= 1.25 for n, (_, f) in rows.items()
                                                               if n != "w8a16"),
                 "HTP within 2 % of QDQ-CPU everywhere": all(abs(f["htp_vs_cpu"] - 1) <= 0.02
                                                             for _, f in rows.values()),
                 "editing the LM head's precision rebuilds no export": statuses.get("export") == "cached",
                 "a fresh clone with a warm shared cache builds nothing": not built}
        print(f"\nafter editing only keep_8bit: {', '.join(f'{k} {v}' for k, v in statuses.items())}")
        print(f"fresh clone, warm shared cache: {len(built)} of {len(warm)} stage instances built")
        print(f"weight-shared binary, tiny Llama w8a16: {shared_ratio(folder, 'w8a16')}")
        print(f"weight-shared binary, tiny Llama w4a16 block32: {shared_ratio(folder, EDITED)}")
        print(f"weight-shared binary, random Llama 4 x 512 w8a16: {shared_ratio(folder, 'wide')}")
        print()
        for goal, met in goals.items():
            print(f"{'met    ' if met else 'NOT MET'}  {goal}")


if __name__ == "__main__":
    main()
