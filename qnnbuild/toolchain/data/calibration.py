"""Sample sources for calibration and validation: synthetic, a folder of .npy/.npz, a folder of images.

A source is indexable and loads one sample at a time, so memory does not grow with the number of samples
(onnxruntime's collectors are fed in strides; see the quantize stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.data.textdata import SCHEMA as TEXT_SCHEMA

RANGES_HELP = ("input name → [low, high]: uniform values in that range (integers inclusive). Default: a "
               "standard normal for float inputs, 0..255 for integer inputs (bytes, pixels, small vocabularies)")

LABELS_HELP = "CSV `file,label` (file relative to dir, label a class index), one row per sample file"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
    "properties": {
        "synthetic": {"type": "object", "additionalProperties": False,
                      "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 16},
                                     "seed": {"type": "integer", "default": 0},
                                     "ranges": {"type": "object", "description": RANGES_HELP,
                                                "additionalProperties": {"type": "array", "items": {"type": "number"},
                                                                         "minItems": 2, "maxItems": 2}}}},
        "text": TEXT_SCHEMA,
        "npy": {"type": "object", "additionalProperties": False, "required": ["dir"],
                "properties": {"dir": {"type": "string"}, "count": {"type": "integer", "minimum": 1},
                               "labels": {"type": "string", "description": LABELS_HELP}}},
        "images": {"type": "object", "additionalProperties": False, "required": ["dir"],
                   "properties": {
                       "dir": {"type": "string"},
                       "count": {"type": "integer", "minimum": 1},
                       "labels": {"type": "string", "description": LABELS_HELP + "; without it, one subfolder "
                                  "per class (ImageFolder: class index = sorted folder name)"},
                       "resize": {"type": "integer", "minimum": 1,
                                  "description": "shorter side before the center crop (default: crop size)"},
                       "mean": {"type": "array", "items": {"type": "number"}, "default": [0.485, 0.456, 0.406]},
                       "std": {"type": "array", "items": {"type": "number"}, "default": [0.229, 0.224, 0.225]},
                       "scale": {"type": "number", "default": 0.00392156862745098,
                                 "description": "pixel multiplier before mean/std (1/255)"},
                       "layout": {"enum": ["NCHW", "NHWC"], "default": "NCHW"},
                       "channels": {"enum": ["RGB", "BGR"], "default": "RGB"},
                   }},
    },
}


def files_of(calibration: dict[str, Any], prefix: str) -> dict[str, str]:
    """The folder (and labels file) a calibration spec reads, as file inputs (their content enters the key)."""
    if "text" in calibration:
        return {f"{prefix}.text.{k}": calibration["text"][k] for k in ("file", "tokenizer") if k in calibration["text"]}
    for kind in ("npy", "images"):
        if kind in calibration:
            found = {f"{prefix}.{kind}.dir": calibration[kind]["dir"]}
            if "labels" in calibration[kind]:
                found[f"{prefix}.{kind}.labels"] = calibration[kind]["labels"]
            return found
    return {}


class Source(Protocol):
    """What every data source gives: sample i as {input name: array}, and labels when it has them."""

    labels: list[int] | None
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def samples_for(spec: dict[str, Any], files: dict[str, Path], model_folder: Path, prefix: str = "") -> Source:
    """The samples a stage's calibration/data `spec` describes, shaped for the model's inputs (its io.json);
    `prefix` picks the spec's own file inputs (see files_of) when a stage has several specs."""
    import json

    io = json.loads((model_folder / "io.json").read_text())
    mine = {name: p for name, p in files.items() if name.startswith(prefix)}
    if "text" in spec:
        from qnnbuild.toolchain.data.textdata import TextSamples

        text = next(p for n, p in mine.items() if n.endswith(".text.file"))
        carried = model_folder / "preprocessing" / "tokenizer.json"  # an hf: source's (stages.base.PREPROCESSING)
        tokenizer = next((p for n, p in mine.items() if n.endswith(".text.tokenizer")), carried)
        if not tokenizer.is_file():
            raise StageFailed("text data needs a tokenizer: give text: {tokenizer: tokenizer.json} (the model's "
                              "source is not an hf: folder, which would carry one)")
        return TextSamples(spec["text"], io["inputs"], text, tokenizer)
    folder = next((p for name, p in mine.items() if name.endswith(".dir")), None)
    labels = next((p for name, p in mine.items() if name.endswith(".labels")), None)
    from qnnbuild.toolchain.data.samples import Samples

    return Samples(spec, io["inputs"], folder, labels)
