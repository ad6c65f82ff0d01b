"""A Hugging Face model folder (config.json, safetensors, tokenizer files) → an ONNX file at fixed shapes, and
its tokenizer files for the deliverable.

Loaded offline with `transformers` (never a hub download, never `trust_remote_code`), exported by torch's
TorchScript exporter (or its dynamo exporter, `exporter: dynamo`) with eager attention: the graph then holds
plain MatMul/Softmax attention, whose additive mask the `finite-mask` rewrite makes quantizable and whose MatMuls
the 16-bit rules find. Optimum's exporters
were the first choice, but optimum-onnx 0.1 pins transformers < 4.58 and exports dynamic shapes and growing KV
caches, where qnnbuild needs the recipe's fixed shapes: this module is the part of that job that fits here.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.sources.torchexport import to_onnx

# task → (transformers Auto class, the output exported)
TASKS: dict[str, tuple[str, str]] = {
    "feature-extraction": ("AutoModel", "last_hidden_state"),
    "image-classification": ("AutoModelForImageClassification", "logits"),
    "sequence-classification": ("AutoModelForSequenceClassification", "logits"),
    "masked-lm": ("AutoModelForMaskedLM", "logits"),
    "causal-lm": ("AutoModelForCausalLM", "logits"),
}
# what an application needs beside the model to prepare its inputs; tokenizer.json is written when missing
PREPROCESSING = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "preprocessor_config.json",
                 "generation_config.json", "chat_template.jinja")
INTEGER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "decoder_input_ids")


def input_dtype(name: str, spec: Any) -> str:
    """The dtype an input is traced with: the recipe's `{shape, dtype}`, else the model's convention (token
    ids, masks and positions are int64; pixel_values, input_features and input_values float32)."""
    if isinstance(spec, dict) and "dtype" in spec:
        return str(spec["dtype"])
    return "int64" if name in INTEGER_INPUTS or name.endswith(("_ids", "_mask")) else "float32"


def import_transformers() -> Any:
    """transformers, imported offline. A torchvision that cannot load beside this torch (PyPI's torchvision
    beside torch 2.13.0+cpu: 'operator torchvision::nms does not exist') makes transformers fail to import
    every model class; exporting needs no torchvision, so a broken one is hidden from transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if "torchvision" not in sys.modules:
        try:
            importlib.import_module("torchvision")
        except Exception:
            _hide("torchvision")
    try:
        transformers = importlib.import_module("transformers")
    except ImportError:
        raise StageFailed("hf: needs the transformers extra: pip install 'qnnbuild[transformers]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _hide(package: str) -> None:
    """Make `package` look absent: importlib's find_spec gives None for a None entry in sys.modules. A
    transformers imported earlier has cached that the package exists: those answers are cleared."""
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        del sys.modules[name]
    sys.modules[package] = None  # type: ignore[assignment]
    utils = sys.modules.get("transformers.utils.import_utils")
    for name in dir(utils) if utils else []:
        cached = getattr(utils, name)
        if package in name and hasattr(cached, "cache_clear"):
            cached.cache_clear()


def load(folder: Path, task: str) -> Any:
    """The model of `folder` for `task`, in eval mode, with eager attention; the encoder alone for an
    encoder-decoder model asked for its features (Whisper, T5)."""
    transformers = import_transformers()
    if not (folder / "config.json").is_file():
        raise StageFailed(f"hf: {folder} has no config.json: not a Hugging Face model folder")
    auto = getattr(transformers, TASKS[task][0])
    try:
        model = auto.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise StageFailed(f"hf: transformers cannot load {folder.name} for {task}: {first}") from None
    if task == "feature-extraction" and getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return model.eval()


def export(params: dict[str, Any], folder: Path, dest: Path, say: Callable[[str], None]) -> None:
    """Export the folder's model for `params["task"]` at the recipe's input shapes to `dest`."""
    import torch

    task = params["task"]
    model = load(folder, task)
    names = list(params["inputs"])
    output = TASKS[task][1]
    extra = {"use_cache": False} if task == "causal-lm" else {}

    class Fixed(torch.nn.Module):
        """Positional inputs in the recipe's order, bound to forward() by name; one named output."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True)), **extra, return_dict=True)[output]

    args = tuple(torch.zeros(*(spec["shape"] if isinstance(spec, dict) else spec),
                             dtype=getattr(torch, input_dtype(name, spec))) for name, spec in params["inputs"].items())
    exporter = params.get("exporter", "torchscript")
    say(f"transformers {type(model).__name__} ({task}) → torch.onnx.export ({exporter} exporter), "
        f"opset {params['opset']}")
    to_onnx(Fixed(), args, dest, names=names, outputs=[output], opset=params["opset"], exporter=exporter,
            what=f"hf: exporting {type(model).__name__}")


def preprocessing_files(folder: Path, dest: Path, say: Callable[[str], None]) -> list[str]:
    """Copy what an application needs to prepare the model's inputs (tokenizer, image processor config) into
    `dest`; a tokenizer given only as vocab.txt / sentencepiece gets its tokenizer.json written by the fast
    tokenizer, so text data and applications read one file."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = [name for name in PREPROCESSING if (folder / name).is_file()]
    for name in copied:
        shutil.copyfile(folder / name, dest / name)
    has_tokenizer = any(n in copied for n in ("tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model"))
    if has_tokenizer and "tokenizer.json" not in copied:
        transformers = import_transformers()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
        tokenizer.backend_tokenizer.save(str(dest / "tokenizer.json"))
        copied.append("tokenizer.json")
        say("tokenizer.json written from the folder's tokenizer files")
    return sorted(copied)
