"""A tiny Llama trained on real English that ships with Python: the standard library's docstrings.

No small decoder LLM with real weights ships in a package, so qnnbuild trains one in seconds on the CPU: 2 layers,
128 wide, grouped KV heads, a byte-level BPE tokenizer of 512 trained on the same text, saved with transformers'
save_pretrained into a Hugging Face folder that an `hf:` export with `llm:` builds (recipes/tinyllama.yaml).
Held-out perplexity comes out near 130 against 512 for guessing: small, but it means something.

    python -m qnnbuild.zoo.tinyllama recipes/models/tinyllama
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from qnnbuild.toolchain.sources.hfexport import import_transformers

MODULES = ("argparse", "collections", "csv", "datetime", "email", "functools", "http.client", "json", "logging",
           "os", "pathlib", "random", "shutil", "string", "subprocess", "tarfile", "textwrap", "threading",
           "unittest", "urllib.request", "zipfile")


def _docstrings(name: str) -> list[str]:
    module = importlib.import_module(name)
    members = [obj for _, obj in sorted(vars(module).items())
               if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == name]
    return [inspect.getdoc(module) or "", *(inspect.getdoc(obj) or "" for obj in members)]


def stdlib_sentences(count: int, skip: int = 0) -> list[str]:
    """`count` distinct English sentences of 6-30 words from the standard library's docstrings, in a fixed
    order, from the `skip`-th on (about 640 in Python 3.11)."""
    seen: set[str] = set()
    found: list[str] = []
    for name in MODULES:
        for doc in _docstrings(name):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = sentence.split()
                if (6 <= len(words) <= 30 and sentence[0].isupper() and sentence.endswith(".")
                        and ">>>" not in sentence and sentence not in seen):
                    seen.add(sentence)
                    found.append(sentence)
    chosen = found[skip:skip + count]
    if len(chosen) != count:
        raise ValueError(f"only {len(found)} sentences in the standard library's docstrings")
    return chosen


def bpe_tokenizer(lines: list[str], vocab: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on `lines` (GPT-2's scheme, with <s> and </s>), as transformers'
    PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = import_transformers().PreTrainedTokenizerFast
    return fast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")  # noqa: S106


def train(folder: Path, lines: list[str], *, steps: int = 300, seq: int = 32, seed: int = 0) -> dict[str, float]:
    """A tiny Llama (2 layers, 128 wide, grouped KV heads) trained on `lines` for `steps` steps on the CPU and
    saved with save_pretrained into `folder`, with its tokenizer; returns the training loss before and after (so
    perplexity on held-out text means something)."""
    import torch

    transformers = import_transformers()
    tokenizer = bpe_tokenizer(lines)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    ids = [t for line in lines for t in [1, *tokenizer.encode(line, add_special_tokens=False), 2]]
    chunks = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = chunks[torch.randint(len(chunks), (16,), generator=generator)]
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"loss_first": losses[0], "loss_last": sum(losses[-20:]) / 20}


HELD_OUT = 200  # sentences never trained on: recipes/text/sentences.txt holds them
TRAIN_COUNT = 400


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m qnnbuild.zoo.tinyllama FOLDER", file=sys.stderr)
        return 2
    lines = stdlib_sentences(TRAIN_COUNT, skip=HELD_OUT)  # the first HELD_OUT are recipes/text/sentences.txt
    losses = train(Path(args[0]), lines, steps=200)
    print(f"wrote {args[0]}: training loss {losses['loss_first']:.2f} → {losses['loss_last']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
