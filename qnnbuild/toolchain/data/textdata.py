"""Text as data: one sample per line of a file, tokenized with a `tokenizer.json` (Hugging Face `tokenizers`),
padded or truncated to the model's sequence length, fed by input name (input_ids, attention_mask,
token_type_ids) in the model's own dtypes.

Without a `tokenizer:`, the one an `hf:` export carries (`preprocessing/tokenizer.json` in the model's folder)
is used. Lines are taken from `skip` on, so one file can calibrate on its first lines and validate on later ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["file"],
    "properties": {
        "file": {"type": "string", "description": "UTF-8 text, one sample per non-empty line"},
        "tokenizer": {"type": "string", "description": "a tokenizer.json (Hugging Face tokenizers); default: the "
                      "one an hf: export source carries"},
        "max_length": {"type": "integer", "minimum": 1, "description": "tokens kept per line (at most the model's "
                       "sequence length, its default); the rest is padding"},
        "count": {"type": "integer", "minimum": 1},
        "skip": {"type": "integer", "minimum": 0, "default": 0, "description": "lines to skip first"},
    },
}
FEEDS = ("input_ids", "attention_mask", "token_type_ids")


def lines_of(text: Path, spec: dict[str, Any]) -> list[str]:
    """The spec's samples: the file's non-empty lines, stripped, from `skip` on, at most `count`."""
    lines = [ln.strip() for ln in text.read_text(encoding="utf-8").splitlines() if ln.strip()]
    lines = lines[spec.get("skip", 0):]
    return lines[: spec.get("count", len(lines))]


def _padding(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's own padding: tokenizers' enable_padding otherwise pads with id 0, which is RoBERTa's and
    MPNet's <s>, not their <pad> (1). From tokenizer.json's padding section, else the vocabulary's pad token."""
    own = tokenizer.padding
    if own:
        return {k: own[k] for k in ("pad_id", "pad_type_id", "pad_token", "direction")}
    for token in ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return {"pad_id": found, "pad_token": token}
    return {}


class TextSamples:
    """Sample i: the tokenized line, as {input name: array}; labels are not a text source's."""

    labels: list[int] | None = None
    classes: list[str] = []  # noqa: RUF012 - read-only, like Samples.classes

    def __init__(self, spec: dict[str, Any], inputs: list[dict[str, Any]], text: Path, tokenizer: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise StageFailed("text data needs the transformers extra: pip install 'qnnbuild[transformers]'") from None
        self.inputs = {i["name"]: i for i in inputs}
        unknown = sorted(set(self.inputs) - set(FEEDS))
        if unknown or "input_ids" not in self.inputs:
            raise StageFailed(f"text data feeds {', '.join(FEEDS)}; the model takes {', '.join(self.inputs)}")
        length = int(self.inputs["input_ids"]["shape"][-1])
        if spec.get("max_length", length) > length:
            raise StageFailed(f"text max_length {spec['max_length']} is longer than the model's sequence ({length})")
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(spec.get("max_length", length))
        self.tokenizer.enable_padding(length=length, **_padding(self.tokenizer))
        self.lines = lines_of(text, spec)
        if not self.lines:
            raise StageFailed(f"{text.name}: no lines of text (after skipping {spec.get('skip', 0)})")
        self.count = len(self.lines)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np

        encoding = self.tokenizer.encode(self.lines[index])
        values = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
                  "token_type_ids": encoding.type_ids}
        return {name: np.asarray(values[name], dtype=spec["dtype"]).reshape(spec["shape"])
                for name, spec in self.inputs.items()}


def token_lines(text: Path, tokenizer: Path, spec: dict[str, Any], bos: int | None) -> list[list[int]]:
    """The text spec's lines as token ids, each starting with the model's bos token (as in training)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.no_truncation()
    ids = [tok.encode(line).ids for line in lines_of(text, spec)]
    return [([bos] if bos is not None and (not i or i[0] != bos) else []) + i for i in ids]
