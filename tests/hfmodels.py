"""Real English and small Hugging Face model folders for the transformer tests.

The sentences are the standard library's docstrings (real English that ships with Python, qnnbuild.zoo.tinyllama);
the folders hold random-weight models of real architectures (BERT, ViT, Whisper), written by transformers' own
save_pretrained, with a tokenizer trained here on the same sentences; the trained tiny Llama is the zoo's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qnnbuild.toolchain.sources.hfexport import import_transformers
from qnnbuild.zoo.tinyllama import stdlib_sentences  # noqa: F401 - re-exported for the tests
from qnnbuild.zoo.tinyllama import train as trained_llama  # noqa: F401 - re-exported for the tests


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




def qwen2_folder(folder: Path, lines: list[str]) -> Path:
    """A random-weight Qwen2-style causal LM (grouped KV heads, biases in the attention projections, made
    non-zero) with a byte-level BPE tokenizer trained on `lines`."""
    import torch

    from qnnbuild.zoo.tinyllama import bpe_tokenizer

    transformers = import_transformers()
    tokenizer = bpe_tokenizer(lines)
    config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def with_outliers(source: Path, folder: Path, *, scale: float = 20.0, outlier: float = 25_000.0) -> Path:
    """The causal LM in `source` with a residual stream like SmolLM2-135M's: every residual write scaled by
    `scale` (ordinary values reach ~100; RMSNorm makes this the same model) and the BOS token carrying `outlier` in
    one channel through every layer (SmolLM2's reaches ~25,000)."""
    import shutil

    import torch

    model = import_transformers().AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.model.embed_tokens.weight *= scale
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight *= scale
            layer.mlp.down_proj.weight *= scale
        model.model.embed_tokens.weight[model.config.bos_token_id, 5] = outlier
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, folder / name)
    return folder
