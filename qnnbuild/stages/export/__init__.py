"""`export`: a torch factory, an ONNX file, a Hugging Face folder, a GGUF checkpoint or a TensorFlow source → a
clean fp32 `model.onnx` with fixed shapes, plus `io.json`, `names.json`, `rewrites.json` (`conversion.json` for TF
sources, and `preprocessing/` with the tokenizer files of a Hugging Face folder or GGUF, which the deliverable
carries).

The work is the toolchain's (torchexport, hfexport, ggufsource, tfconvert, onnxclean); this file declares the
stage and writes its outputs, export/llm.py a causal LM's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import PREPROCESSING, Params, StageKind, StageRun
from qnnbuild.stages.export.llm import export_llm
from qnnbuild.toolchain.llm.export import SCHEMA as LLM_SCHEMA
from qnnbuild.toolchain.sources.hfexport import TASKS as HF_TASKS

FACTORY = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
SHAPE = {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "integer", "minimum": 1}}
DTYPES = ["float32", "float16", "int64", "int32", "uint8", "bool"]
INPUT = {"oneOf": [SHAPE, {"type": "object", "additionalProperties": False, "required": ["shape"],
                           "properties": {"shape": SHAPE, "dtype": {"enum": DTYPES, "default": "float32"}}}]}


def shapes_of(inputs: dict[str, Any]) -> dict[str, list[int]]:
    """`inputs:` entries are a shape, or {shape, dtype} (token ids: int64): the shapes by name."""
    return {name: list(spec["shape"] if isinstance(spec, dict) else spec) for name, spec in inputs.items()}


MASK_VALUE = -100.0  # see the `finite-mask` rewrite (toolchain/graph/rewrites.py)
SOURCES = ("torch", "onnx", "hf", "gguf", "keras", "saved_model", "tflite")
TORCH_SOURCES = ("torch", "hf", "gguf")
LLM_SOURCES = ("hf", "gguf")
TF_SOURCES = ("keras", "saved_model", "tflite")


def _files(params: Params) -> dict[str, str]:
    files: dict[str, str] = {k: params[k] for k in ("onnx", "hf", "gguf", "checkpoint", *TF_SOURCES) if k in params}
    files.update({f"sources.{i}": s for i, s in enumerate(params.get("sources", []))})
    return files


def _source_checks(params: Params, given: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
    """What each kind of source needs beside it."""
    hf, torch, gguf = "hf" in params, "torch" in params, "gguf" in params
    rules: list[tuple[bool, tuple[str | int, ...], str]] = [
        (hf and "task" not in params, ("task",), "a Hugging Face folder needs its task, e.g. task: feature-extraction"),
        (not (hf or gguf) and "task" in params, ("task",), "task goes with an hf: folder or a gguf: file"),
        (gguf and ("llm" not in params or params.get("task") != "causal-lm"), ("gguf",),
         "a gguf: file is a causal LM: give task: causal-lm and llm: {context_length, prefill}"),
        ("llm" in params and (not (hf or gguf) or params.get("task") != "causal-lm"), ("llm",),
         "llm goes with an hf: folder or a gguf: file, and task: causal-lm"),
        ("llm" in params and params["llm"].get("prefill", 0) > params["llm"].get("context_length", 0), ("llm",),
         "llm: prefill is longer than context_length"),
        ("llm" in params and bool(params.get("inputs")), ("inputs",),
         "an llm export takes its shapes from llm: {context_length, prefill}; drop inputs"),
        (hf and "llm" not in params and not params.get("inputs"), ("inputs",), "an hf export needs the input "
         "shapes, e.g. inputs: {input_ids: [1, 128], attention_mask: [1, 128]} (batch and sequence length; "
         "dtypes come from the model)"),
        ("layout" in params and not set(given) & set(TF_SOURCES), ("layout",),
         "layout goes with a TensorFlow source (keras, saved_model, tflite)"),
        (torch and not params.get("inputs"), ("inputs",),
         "a torch export needs the input shapes, e.g. inputs: {input: [1, 3, 224, 224]}"),
        ("exporter" in params and (not (torch or hf) or "llm" in params), ("exporter",),
         "exporter chooses torch's ONNX exporter for a torch: factory or an hf: folder (an llm export has its own)"),
        (params.get("exporter") == "dynamo" and params.get("opset", 17) < 18, ("opset",),
         "the dynamo exporter writes opset 18 or later: set opset: 18"),
        (not torch and "checkpoint" in params, ("checkpoint",),
         "checkpoint goes with a torch factory, not an ONNX file"),
    ]
    return [(path, message) for broken, path, message in rules if broken][:1]


def _checks(params: Params) -> list[tuple[tuple[str | int, ...], str]]:
    given = [k for k in SOURCES if k in params]
    if len(given) != 1:
        return [((), "give exactly one source: torch: \"module:callable\", onnx: model.onnx, hf: folder, "
                     "gguf: model.gguf, keras: model.keras, saved_model: folder or tflite: model.tflite"
                 + (f" (got {', '.join(given)})" if given else ""))]
    return _source_checks(params, given)


def _tf_export(ctx: StageRun, dest: Path) -> dict[str, list[int]]:
    """Keras / SavedModel / TFLite → ONNX by tf2onnx, then the conversion measured against the original;
    returns the fixed input shapes by ONNX input name (tf2onnx keeps a dynamic batch dynamic)."""
    import time

    from qnnbuild.toolchain.sources import tfconvert

    kind = next(k for k in TF_SOURCES if k in ctx.params)
    nchw = ctx.params.get("layout") == "nchw"
    started = time.monotonic()
    given = shapes_of(ctx.params.get("inputs", {}))
    converted = tfconvert.convert(kind, ctx.files[kind], given, nchw, ctx.params["opset"], dest)
    found = tfconvert.fidelity(converted, dest, nchw)
    seconds = round(time.monotonic() - started, 2)
    report = {"source": kind, "converter": converted.converter, **found}  # keyed: no wall-clock figure
    (ctx.out / "conversion.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    ctx.timings({"conversion_seconds": seconds})
    worst = min(found["fidelity_sqnr_db"].values())
    ctx.say(f"{kind} → ONNX by {converted.converter}: fidelity {worst:.1f} dB (worst output), {seconds:.1f} s")
    if worst < ctx.params["min_fidelity_db"]:
        raise StageFailed(f"the converted model is not faithful to the {kind} original: "
                          + ", ".join(f"{n} {v:.1f} dB" for n, v in found["fidelity_sqnr_db"].items())
                          + f" < required {ctx.params['min_fidelity_db']} dB")
    shapes: dict[str, list[int]] = found["shapes"]
    return shapes


def _write(cleaned: Any, folder: Path, external: bool | None = None) -> None:
    """`external`: the weights in model.onnx.data (None: when large; an LLM's always, so its whole path is the
    one a model over 2 GB takes)."""
    from qnnbuild.toolchain.graph import onnxfile

    folder.mkdir(exist_ok=True)
    onnxfile.save(cleaned.model, folder / "model.onnx", external=external)
    (folder / "io.json").write_text(json.dumps(cleaned.io, indent=1) + "\n")
    (folder / "rewrites.json").write_text(json.dumps(cleaned.rewrites, indent=1) + "\n")
    # short tensor name → the name in the source model: reports and `overrides:` speak the user's names
    (folder / "names.json").write_text(json.dumps(cleaned.names, indent=1, sort_keys=True) + "\n")


def _expects(params: Params, files: dict[str, Path]) -> list[Path]:
    """An ONNX source's external data files, named in the file itself (read without the weights)."""
    from qnnbuild.toolchain.graph import onnxfile

    if "onnx" not in params:
        return []
    try:
        return onnxfile.data_files(files["onnx"])
    except Exception:  # an unreadable file: the stage says why when it runs
        return []


def run(ctx: StageRun) -> None:
    from qnnbuild.toolchain.graph import onnxclean, onnxfile

    # fixed relative names in a scratch folder: the exporters store file names inside the model
    with tempfile.TemporaryDirectory(prefix="qnnbuild-export-") as tmp, contextlib.chdir(tmp):
        scratch = Path(tmp)
        shapes = shapes_of(ctx.params.get("inputs", {}))
        if "llm" in ctx.params:
            export_llm(ctx.params, ctx.files, ctx.out, ctx.out / PREPROCESSING, scratch,
                       functools.partial(_write, external=True), ctx.say, lambda step: ctx.progress(phase=step))
            return
        if "torch" in ctx.params:
            from qnnbuild.toolchain.sources import torchexport

            raw = scratch / "exported.onnx"
            ctx.read(torchexport.export(ctx.params, ctx.root, ctx.files.get("checkpoint"), Path(raw.name), ctx.say))
        elif "hf" in ctx.params:
            from qnnbuild.toolchain.sources import hfexport

            raw = scratch / "exported.onnx"
            hfexport.export(ctx.params, ctx.files["hf"], Path(raw.name), ctx.say)
            hfexport.preprocessing_files(ctx.files["hf"], ctx.out / PREPROCESSING, ctx.say)
        elif "onnx" in ctx.params:
            raw = ctx.files["onnx"]
            ctx.read(onnxfile.data_files(raw))  # its weights' file: onnx's C++ loader reads it, unseen by Python
        else:
            raw = scratch / "converted.onnx"
            shapes = _tf_export(ctx, raw)
        tf_source = any(k in ctx.params for k in TF_SOURCES)
        cleaned = onnxclean.clean(raw, scratch, shapes, ctx.say, mask_value=ctx.params["mask_value"],
                                  made_up=onnxclean.TF2ONNX_MADE_UP if tf_source else None)
    _write(cleaned, ctx.out)


KIND = StageKind(
    name="export",
    version=7,
    summary="a torch factory, an ONNX file, a Hugging Face folder or a TF source → clean fp32 model.onnx with "
            "fixed input shapes",
    params={
        "torch": {"type": "string", "pattern": FACTORY, "x-message": "is not a torch factory: write "
                  "\"package.module:callable\"", "description": "\"package.module:callable\" returning "
                  "a torch.nn.Module; the module is searched in the recipe's folder first"},
        "checkpoint": {"type": "string", "description": "state_dict file loaded into the torch model"},
        "onnx": {"type": "string", "description": "an ONNX file (relative to the recipe)"},
        "hf": {"type": "string", "description": "a Hugging Face model folder (config.json, safetensors, tokenizer "
               "files), loaded offline; the transformers extra"},
        "gguf": {"type": "string", "description": "a GGUF checkpoint (llama.cpp, Ollama) of a causal LM, read and "
                 "dequantized by transformers, with its tokenizer and chat template; goes with llm:; the llm extra"},
        "task": {"enum": list(HF_TASKS), "description": "hf, gguf: what the model is exported for (feature-extraction: "
                 "last_hidden_state, of the encoder alone for an encoder-decoder model; the others: logits)"},
        "keras": {"type": "string", "description": "a Keras model (.keras or .h5); the tensorflow extra"},
        "saved_model": {"type": "string", "description": "a TensorFlow SavedModel folder; the tensorflow extra"},
        "tflite": {"type": "string", "description": "a .tflite model with float inputs and outputs; the tensorflow "
                   "extra"},
        "layout": {"enum": ["original", "nchw"], "default": "original",
                   "description": "TF sources: nchw asks tf2onnx for channels-first inputs"},
        "min_fidelity_db": {"type": "number", "default": 60, "description": "TF sources: the converted ONNX "
                            "against the original on seeded random inputs (conversion.json); fails below"},
        "inputs": {"type": "object", "additionalProperties": INPUT, "default": {},
                   "description": "input name → shape, or {shape, dtype} (token ids: dtype int64), in the "
                   "order a torch factory's forward() takes them; fixes dynamic dimensions"},
        "outputs": {"type": "array", "items": {"type": "string"}, "description": "output names (torch)"},
        "opset": {"type": "integer", "minimum": 13, "maximum": 21, "default": 17},
        "mask_value": {"type": "number", "maximum": -1, "minimum": -10000, "default": MASK_VALUE,
                       "description": "what an attention mask's huge negative constant (finfo.min, -inf) reaching a "
                       "Softmax becomes, so that the masked scores quantize (rewrites.json lists it)"},
        "llm": LLM_SCHEMA,
        "exporter": {"enum": ["torchscript", "dynamo"], "default": "torchscript", "description": "torch's ONNX "
                     "exporter; one that fails is reported, never swapped for the other behind the key's back "
                     "(dynamo needs opset ≥ 18)"},
        "sources": {"type": "array", "items": {"type": "string"}, "default": [],
                    "description": "files the torch factory reads (its own .py files): their digests enter the key"},
    },
    files=_files,
    checks=_checks,
    tools=lambda params: ("onnx", "onnxruntime", *(("torch",) if set(params) & set(TORCH_SOURCES) else ()),
                          *(("transformers", "tokenizers", "safetensors") if set(params) & set(LLM_SOURCES) else ()),
                          *(("gguf",) if "gguf" in params else ()),
                          *(("tensorflow-cpu", "tf2onnx", "ai-edge-litert") if set(params) & set(TF_SOURCES) else ())),
    ordered=("inputs",),  # a torch factory's forward() takes its inputs in the recipe's order
    # a factory's own modules and what they read; an ONNX file's external data
    discovers=lambda params: "torch" in params or "onnx" in params,
    expects=_expects,
    run=run,
)
