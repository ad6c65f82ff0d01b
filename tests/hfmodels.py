"""Real English and small Hugging Face model folders for the transformer tests.

The sentences are the standard library's docstrings (real English that ships with Python); the folders hold
random-weight models of real architectures (BERT, ViT, Whisper), written by transformers' own save_pretrained,
with a tokenizer trained here on the same sentences.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

from qnnbuild.toolchain.hfexport import import_transformers

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
    assert len(chosen) == count, f"only {len(found)} sentences in the standard library's docstrings"
    return chosen


def wordpiece_tokenizer(lines: list[str], vocab: int = 500) -> Any:
    """A BERT-style tokenizer (lower case, WordPiece, [CLS] … [SEP]) trained on `lines`, as transformers'
    PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    PreTrainedTokenizerFast = import_transformers().PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # noqa: S106 - a token, not a password
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",  # noqa: S106
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")  # noqa: S106


def bert_folder(folder: Path, lines: list[str], *, layers: int = 2, hidden: int = 64) -> Path:
    """A random-weight BERT encoder with a tokenizer trained on `lines`."""
    import torch

    transformers = import_transformers()
    BertConfig, BertModel = transformers.BertConfig, transformers.BertModel

    tokenizer = wordpiece_tokenizer(lines)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=hidden * 4, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def vit_folder(folder: Path, *, size: int = 64) -> Path:
    """A random-weight ViT classifier (DeiT-tiny's width, fewer layers, 64×64 images) with its image
    processor config."""
    import torch

    transformers = import_transformers()
    ViTConfig, ViTForImageClassification = transformers.ViTConfig, transformers.ViTForImageClassification

    config = ViTConfig(image_size=size, patch_size=16, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                       intermediate_size=768, num_labels=10)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    processor = {"do_resize": True, "size": {"height": size, "width": size}, "image_mean": [0.5, 0.5, 0.5],
                 "image_std": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=1) + "\n")
    return folder


def whisper_folder(folder: Path, *, frames: int = 200) -> Path:
    """A random-weight Whisper model, tiny's width and depth (384, 4 layers), over `frames` mel frames."""
    import torch

    transformers = import_transformers()
    WhisperConfig, WhisperModel = transformers.WhisperConfig, transformers.WhisperModel

    config = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, decoder_layers=1,
                           decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80,
                           max_source_positions=frames // 2, max_target_positions=32, vocab_size=100,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(folder)
    return folder


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


def trained_llama(folder: Path, lines: list[str], *, steps: int = 300, seq: int = 32, seed: int = 0) -> dict[str, float]:
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
        losses.append(float(loss))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"loss_first": losses[0], "loss_last": sum(losses[-20:]) / 20}
