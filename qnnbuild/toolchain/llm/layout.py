"""The one module that knows how an LLM's folders are laid out, from export to the deliverable.

An LLM travels as two graphs in one folder: the prefill graph where any model's graph stands (`model.onnx`,
`model.qdq.onnx`, ...) and the decode graph under `decode/` with the same file name; `llm.json` beside them
describes both (layers, context length, bos and eos ids) and is what marks a folder as an LLM's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

INFO = "llm.json"
DECODE = "decode"


def is_llm(folder: Path) -> bool:
    return (folder / INFO).is_file()


def info(folder: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((folder / INFO).read_text())
    return found


def write_info(folder: Path, value: dict[str, Any]) -> None:
    (folder / INFO).write_text(json.dumps(value, indent=1) + "\n")


def carry_info(source: Path, dest: Path) -> None:
    shutil.copyfile(source / INFO, dest / INFO)


def graphs(folder: Path, name: str = "model.onnx") -> dict[str, Path]:
    """graph → its file: the prefill graph at the top of the folder, the decode graph under decode/."""
    return {"prefill": folder / name, "decode": folder / DECODE / name}


def tokenizer(folder: Path) -> Path:
    """The tokenizer export carried along (the deliverable's too)."""
    return folder / "preprocessing" / "tokenizer.json"
