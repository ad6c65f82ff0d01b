"""A GGUF checkpoint (what llama.cpp and Ollama users hold) → a transformers causal LM in float32 and the
tokenizer files the deliverable carries, chat template included.

transformers reads GGUF itself (the `gguf` package) and dequantizes every tensor to the dtype asked for: the
build starts from the same float weights a Hugging Face folder would give, and quantizes them its own way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.sources.hfexport import import_transformers

NOISE = ("is_local", "local_files_only")  # where the tokenizer was loaded from, not what it is


def load(file: Path) -> Any:
    """The causal LM in `file`, dequantized to float32, in eval mode."""
    import torch

    transformers = import_transformers()
    try:
        import gguf  # noqa: F401 - transformers needs it; say which extra when it is missing
    except ImportError:
        raise StageFailed("gguf: needs the llm extra: pip install 'qnnbuild[llm]'") from None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name,
                                                                  dtype=torch.float32, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:  # an architecture transformers cannot read from GGUF, ...
        raise StageFailed(f"gguf: transformers cannot load {file.name}: {exc}") from None
    return model.eval()


def preprocessing_files(file: Path, dest: Path, say: Callable[[str], None]) -> list[str]:
    """tokenizer.json and tokenizer_config.json (with the chat template) of the GGUF's own tokenizer, in `dest`."""
    transformers = import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name,
                                                           local_files_only=True)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(dest))
    config_file = dest / "tokenizer_config.json"
    config = {k: v for k, v in json.loads(config_file.read_text()).items() if k not in NOISE}
    if tokenizer.chat_template:  # beside chat_template.jinja: onnxruntime-genai and older readers look here
        config["chat_template"] = tokenizer.chat_template
    config_file.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    written = sorted(p.name for p in dest.iterdir())
    say(f"tokenizer from {file.name}: {', '.join(written)}")
    return written
