"""`qnnbuild init MODEL`: a first recipe, commented, that `qnnbuild run` builds as written.

The inputs and their shapes come from the model (toolchain/sources/modelinfo.py); a dynamic dimension gets a stated
default and a comment saying to fix it. The data fits the inputs: text for token ids (a file of English sentences
from Python's own docstrings is written beside the recipe, to be replaced by the user's domain text), photographs
for image inputs when a folder of them sits beside the model, synthetic inputs otherwise, each with a comment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

from qnnbuild.errors import UsageError
from qnnbuild.toolchain.data.samples import IMAGE_SUFFIXES
from qnnbuild.toolchain.sources.modelinfo import Input, ModelInfo

SEQUENCE, SIDE, CONTEXT, PREFILL = 128, 224, 256, 32
TEXT_LINES = 200


def scalar(text: str) -> str:
    """`text` as a YAML scalar: as it is when plain, else quoted (JSON's strings are YAML's double-quoted ones),
    so a path with a space, a colon or a '#' reads back as written."""
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else json.dumps(text)


def recipe_name(stem: str) -> str:
    """A valid recipe name from a file's stem: what the schema refuses becomes '_' (m.fp32 → m_fp32)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:64]
    return name if name[:1].isalnum() else f"m{name}"[:64]


def _is_image(i: Input) -> bool:
    return len(i.shape) == 4 and i.dtype.startswith("float") and 3 in (i.shape[1], i.shape[3])


def _is_tokens(i: Input) -> bool:
    return i.dtype.startswith("int") and len(i.shape) == 2


def _fixed(i: Input) -> tuple[list[int], str]:
    """The shape with defaults for dynamic dimensions, and the comment that says which were set here."""
    shape, guessed = [], []
    for axis, dim in enumerate(i.shape):
        if dim is not None:
            shape.append(dim)
            continue
        value = 1 if axis == 0 else SEQUENCE if _is_tokens(i) else SIDE if len(i.shape) == 4 else 1
        shape.append(value)
        guessed.append(f"axis {axis} = {value}")
    note = f"  # dynamic in the model: {', '.join(guessed)} is a default, fix it to what you ship" if guessed else ""
    return shape, note


def _photos(model: Path) -> Path | None:
    """A folder of photographs beside the model (images/, calibration/, data/), if one holds any."""
    for name in ("images", "calibration", "data"):
        folder = model.parent / name
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            return folder
    return None


def _data(info: ModelInfo, model: Path, out: Path, text: Path | None) -> tuple[str, str, list[str]]:
    """(calibration, held-out data, comment lines) fitting the inputs."""
    if text is not None:
        name = scalar(os.path.relpath(text, out.parent))
        count, held = (16, 8) if info.task == "causal-lm" else (64, 16)
        return (f"{{text: {{file: {name}, count: {count}}}}}", f"{{text: {{file: {name}, skip: {TEXT_LINES - held}, "
                f"count: {held}}}}}", [f"# {name}: {TEXT_LINES} English sentences from Python's docstrings; replace "
                                       "them with text from your own domain"])
    image = next((i for i in info.inputs if _is_image(i)), None)
    photos = _photos(model) if image is not None else None
    if image is not None and photos is not None:
        layout = "NHWC" if image.shape[3] == 3 and image.shape[1] != 3 else "NCHW"
        spec = f"{{images: {{dir: {scalar(os.path.relpath(photos, out.parent))}, count: 64, layout: {layout}}}}}"
        return spec, spec, ["# the photos beside the model; validate on others than calibration when you can"]
    note = ["# synthetic inputs (a standard normal; integers 0..255): ranges real data will not have"]
    if image is not None:
        note = ["# synthetic inputs: no folder of photos (images/, calibration/ or data/) beside the model; put",
                "# 50-500 representative photos in one and write calibration: {images: {dir: FOLDER}}"]
    return "{synthetic: {count: 16, seed: 0}}", "{synthetic: {count: 8, seed: 1000}}", note


def _export(info: ModelInfo, model: Path, out: Path) -> list[str]:
    lines = ["  export:", "    kind: export", f"    {info.source}: {scalar(os.path.relpath(model, out.parent))}"]
    if info.task:
        lines.append(f"    task: {info.task}")
    if info.task == "causal-lm":
        context = min(CONTEXT, int(info.config.get("max_position_embeddings", CONTEXT)))
        return [*lines, f"    llm: {{context_length: {context}, prefill: {min(PREFILL, context)}}}   # the static "
                        "prefill and decode graphs an NPU runs"]
    if info.source in ("keras", "saved_model", "tflite") and all(None not in i.shape[1:] for i in info.inputs):
        return lines  # the converter fixes a dynamic batch to 1 and takes the rest from the model
    lines.append("    inputs:                   # read from the model")
    for i in info.inputs:
        shape, note = _fixed(i)
        lines.append(f"      {scalar(i.name)}: {shape}{note}")
    return lines


def recipe_text(info: ModelInfo, model: Path, out: Path, targets: list[str], precision: str,
                text: Path | None) -> str:
    calibration, held_out, data_note = _data(info, model, out, text)
    gate = "# max_perplexity_ratio: 1.05   # uncomment to fail the build when HTP's perplexity passes 1.05 x fp32's" \
        if info.task == "causal-lm" else \
        "# min_sqnr_db: 20   # uncomment to fail the build when an output's SQNR on HTP falls below (see metrics.json)"
    lines = [f"# A first recipe for {model.name} ({info.source}), written by `qnnbuild init`: edit freely, then",
             f"#   qnnbuild run {shlex.quote(out.name)}",
             "schema_version: 1",
             f"recipe: {recipe_name(out.stem)}",
             f"targets: [{', '.join(targets)}]   # Snapdragon parts: see `qnnbuild doctor`",
             "stages:", *_export(info, model, out),
             "  quantize:", "    kind: quantize", "    model: export",
             f"    precision: {precision}          # w8a8 for CNNs, w8a16 for transformers, w4a16 for LLM weights",
             *(f"    {line}" for line in data_note), f"    calibration: {calibration}",
             "  compile: {kind: compile, model: quantize}",
             "  context: {kind: context-binary, compiled: compile}   # the deliverable per target",
             "  validate:", "    kind: validate", "    context: context", "    reference: export",
             "    quantized: quantize", f"    data: {held_out}", f"    {gate}"]
    return "\n".join(lines) + "\n"


def _write_text(path: Path) -> None:
    from qnnbuild.zoo.tinyllama import stdlib_sentences

    path.write_text("\n".join(stdlib_sentences(TEXT_LINES)) + "\n")


def cmd_init(args: argparse.Namespace) -> int:
    from qnnbuild.toolchain.sources import modelinfo

    model = Path(args.model)
    if not model.exists():
        raise UsageError(f"{model}: no such file or folder")
    out = Path(args.output or f"{(model.stem if model.is_file() else model.name)}.yaml")
    if out.exists():
        raise UsageError(f"{out} exists; qnnbuild init never overwrites: give -o NEW.yaml")
    info = modelinfo.read(model.resolve())
    text = None
    if any(_is_tokens(i) for i in info.inputs) and info.source == "hf":
        text = out.parent / f"{out.stem}_text.txt"
        if text.exists():
            raise UsageError(f"{text} exists; qnnbuild init never overwrites: give -o NEW.yaml")
        _write_text(text)
    out.write_text(recipe_text(info, model.resolve(), out.resolve(), args.target or ["SM8650"], args.precision,
                               text.resolve() if text else None))
    print(f"wrote {out}" + (f" and {text}" if text else "") + f"; build it with: qnnbuild run {shlex.quote(str(out))}")
    return 0
