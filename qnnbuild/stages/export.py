"""`export`: a torch factory or an ONNX file → a clean fp32 `model.onnx` with fixed shapes, plus `io.json`.

Clean means what QNN and the quantizer need: every input shape concrete, every node named, graph inputs and
outputs without ':', ';' or '/', every other tensor renamed to a short fixed-width name (`names.json` maps them
back to the source's names), constants folded and Identity/Constant debris and BatchNorm folded away
(onnxruntime's basic graph optimizations, written offline), shapes inferred. Output bytes depend only on
the inputs: fixed file names, no metadata, no timestamps.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sys
import tempfile
from pathlib import Path

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageKind, StageRun

FACTORY = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
SHAPE = {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "integer", "minimum": 1}}


SOURCES = ("torch", "onnx", "keras", "saved_model", "tflite")
TF_SOURCES = ("keras", "saved_model", "tflite")
# tf2onnx's own names carry a process-wide counter (`Relu6_min__15`), and its duplicate-constant merge keeps one
# of several such names at random: not a source name, so names.json leaves them out (the short name stands)
GENERATED = re.compile(r"__\d+(:\d+)?$")


def _files(params: Params) -> dict[str, str]:
    files: dict[str, str] = {k: params[k] for k in ("onnx", "checkpoint", *TF_SOURCES) if k in params}
    files.update({f"sources.{i}": s for i, s in enumerate(params.get("sources", []))})
    return files


def _checks(params: Params) -> list[tuple[tuple[str | int, ...], str]]:
    given = [k for k in SOURCES if k in params]
    has_torch = "torch" in params
    if len(given) != 1:
        return [((), "give exactly one source: torch: \"module:callable\", onnx: model.onnx, keras: model.keras, "
                     "saved_model: folder or tflite: model.tflite" + (f" (got {', '.join(given)})" if given else ""))]
    if "layout" in params and not set(given) & set(TF_SOURCES):
        return [(("layout",), "layout goes with a TensorFlow source (keras, saved_model, tflite)")]
    if has_torch and not params.get("inputs"):
        return [(("inputs",), "a torch export needs the input shapes, e.g. inputs: {input: [1, 3, 224, 224]}")]
    if params.get("exporter") == "dynamo" and params.get("opset", 17) < 18:
        return [(("opset",), "the dynamo exporter writes opset 18 or later: set opset: 18")]
    if not has_torch and "checkpoint" in params:
        return [(("checkpoint",), "checkpoint goes with a torch factory, not an ONNX file")]
    return []


def _installed_roots() -> tuple[Path, ...]:
    """Where installed distributions and the standard library live: their versions, not their files, are
    what a key holds (the `tools` of a stage)."""
    import site
    import sysconfig

    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(Path(p).resolve() for p in paths)


def own_module_files(before: set[str]) -> list[Path]:
    """Source files of the modules imported since `before` that live outside the installed distributions: the
    factory's own module and the helpers it imports (from the recipe's folder or an editable checkout)."""
    installed = _installed_roots()
    found = []
    for name in sorted(set(sys.modules) - before):
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if path.is_file() and not any(path.is_relative_to(root) for root in installed):
            found.append(path)
    return found


def _load_factory(spec: str, root: Path) -> object:
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StageFailed(f"torch: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise StageFailed(f"torch: {module_name!r} has no callable {attr!r}")
    return factory


def _torch_export(ctx: StageRun, dest: Path) -> None:
    import torch

    params = ctx.params
    before = set(sys.modules)
    model = _load_factory(params["torch"], ctx.root)()  # type: ignore[operator]
    if not isinstance(model, torch.nn.Module):
        raise StageFailed(f"torch: {params['torch']} returned {type(model).__name__}, not a torch.nn.Module")
    if "checkpoint" in params:
        state = torch.load(ctx.files["checkpoint"], map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    model.eval()
    names = list(params["inputs"])
    args = tuple(torch.zeros(*shape) for shape in params["inputs"].values())
    outputs = params.get("outputs") or None
    dynamo = params["exporter"] == "dynamo"
    ctx.say(f"torch.onnx.export {params['torch']} ({params['exporter']} exporter, opset {params['opset']})")
    with torch.no_grad():
        try:
            program = torch.onnx.export(model, args, None if dynamo else str(dest), input_names=names,
                                        output_names=outputs, opset_version=params["opset"], dynamo=dynamo,
                                        do_constant_folding=True)
        except Exception as exc:  # the exporters raise anything from torch._dynamo to TypeError
            other = "torchscript" if dynamo else "dynamo"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise StageFailed(f"torch.onnx.export ({params['exporter']} exporter) failed: {first}; "
                              f"exporter: {other} may export this model") from None
        if dynamo:
            if program is None:
                raise StageFailed("torch.onnx.export (dynamo exporter) returned nothing")
            program.save(str(dest), external_data=False)
    ctx.read(own_module_files(before))  # after the export: a factory may import lazily when called


def _clean(ctx: StageRun, raw: Path, scratch: Path, shapes: dict[str, list[int]] | None = None) -> None:
    import onnx

    from qnnbuild.toolchain import onnxgraph, rewrites
    from qnnbuild.toolchain.qnn import ort

    model = onnx.load(str(raw))
    problems = onnxgraph.fix_input_shapes(model, shapes if shapes is not None else ctx.params.get("inputs", {}))
    if problems:
        raise StageFailed("; ".join(problems))
    renamed = onnxgraph.rename_tensors(model)
    if renamed:
        ctx.say(f"renamed {len(renamed)} tensors with unsafe names")
    onnxgraph.name_nodes(model)
    applied = rewrites.before_folding(model)
    del model.metadata_props[:]
    model.doc_string = ""
    model.graph.doc_string = ""
    fixed = scratch / "fixed.onnx"
    onnx.save(model, str(fixed))

    rt = ort()
    so = rt.SessionOptions()
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(scratch / "optimized.onnx")
    so.log_severity_level = 3
    # ConstantSharing merges equal small constants and keeps whichever name its hash map yields first: the
    # model bytes stay equal, but names.json (short name → source name) would differ from run to run
    rt.InferenceSession(str(fixed), so, providers=["CPUExecutionProvider"], disabled_optimizers=["ConstantSharing"])

    model, fused = rewrites.after_folding(onnx.load(str(scratch / "optimized.onnx")))
    applied += fused
    for step in applied:
        ctx.say(f"rewrite {step['rewrite']}: {', '.join(step['nodes'][:8])}")
    onnxgraph.name_nodes(model)
    source = {new: old for old, new in renamed.items()}
    short = onnxgraph.short_names(model)
    made_up = GENERATED if any(k in ctx.params for k in TF_SOURCES) else None
    names = {new: source.get(old, old) for new, old in short.items()
             if not (made_up and made_up.search(source.get(old, old)))}
    del model.metadata_props[:]
    model.producer_name, model.producer_version = "qnnbuild", ""
    model = onnxgraph.infer_shapes(model)
    debris = [n.name for n in model.graph.node if n.op_type in ("Constant", "Identity")]
    if debris:
        ctx.say(f"left in the graph: {', '.join(debris)}")
    onnx.checker.check_model(model)
    onnx.save(model, str(ctx.out / "model.onnx"))
    spec = onnxgraph.io_spec(model)
    for value in [*spec["inputs"], *spec["outputs"]]:
        if value["name"] in source:
            value["source_name"] = source[value["name"]]
    (ctx.out / "io.json").write_text(json.dumps({**spec, "nodes": len(model.graph.node)}, indent=1) + "\n")
    (ctx.out / "rewrites.json").write_text(json.dumps(applied, indent=1) + "\n")
    # short tensor name → the name in the source model: reports and `overrides:` speak the user's names
    (ctx.out / "names.json").write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")
    ctx.say(f"model.onnx: {len(model.graph.node)} nodes; inputs {spec['inputs']}")


def _tf_export(ctx: StageRun, dest: Path) -> dict[str, list[int]]:
    """Keras / SavedModel / TFLite → ONNX by tf2onnx, then the conversion measured against the original;
    returns the fixed input shapes by ONNX input name (tf2onnx keeps a dynamic batch dynamic)."""
    import time

    from qnnbuild.toolchain import tfconvert

    kind = next(k for k in TF_SOURCES if k in ctx.params)
    nchw = ctx.params.get("layout") == "nchw"
    started = time.monotonic()
    converted = tfconvert.convert(kind, ctx.files[kind], ctx.params.get("inputs", {}), nchw, ctx.params["opset"], dest)
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


def run(ctx: StageRun) -> None:
    # fixed relative names in a scratch folder: the exporters store file names inside the model
    with tempfile.TemporaryDirectory(prefix="qnnbuild-export-") as tmp, contextlib.chdir(tmp):
        scratch = Path(tmp)
        if "torch" in ctx.params:
            _torch_export(ctx, Path("exported.onnx"))
            raw = scratch / "exported.onnx"
        elif "onnx" in ctx.params:
            raw = ctx.files["onnx"]
        else:
            raw = scratch / "converted.onnx"
            shapes = _tf_export(ctx, raw)
        _clean(ctx, raw, scratch, shapes if "onnx" not in ctx.params and "torch" not in ctx.params else None)


KIND = StageKind(
    name="export",
    version=5,
    summary="a torch factory or an ONNX file → clean fp32 model.onnx with fixed input shapes",
    params={
        "torch": {"type": "string", "pattern": FACTORY, "x-message": "is not a torch factory: write "
                  "\"package.module:callable\"", "description": "\"package.module:callable\" returning "
                  "a torch.nn.Module; the module is searched in the recipe's folder first"},
        "checkpoint": {"type": "string", "description": "state_dict file loaded into the torch model"},
        "onnx": {"type": "string", "description": "an ONNX file (relative to the recipe)"},
        "keras": {"type": "string", "description": "a Keras model (.keras or .h5); the tensorflow extra"},
        "saved_model": {"type": "string", "description": "a TensorFlow SavedModel folder; the tensorflow extra"},
        "tflite": {"type": "string", "description": "a .tflite model with float inputs and outputs; the tensorflow "
                   "extra"},
        "layout": {"enum": ["original", "nchw"], "default": "original",
                   "description": "TF sources: nchw asks tf2onnx for channels-first inputs"},
        "min_fidelity_db": {"type": "number", "default": 60, "description": "TF sources: the converted ONNX "
                            "against the original on seeded random inputs (conversion.json); fails below"},
        "inputs": {"type": "object", "additionalProperties": SHAPE, "default": {},
                   "description": "input name → shape; fixes dynamic dimensions"},
        "outputs": {"type": "array", "items": {"type": "string"}, "description": "output names (torch)"},
        "opset": {"type": "integer", "minimum": 13, "maximum": 21, "default": 17},
        "exporter": {"enum": ["torchscript", "dynamo"], "default": "torchscript", "description": "torch's ONNX "
                     "exporter; one that fails is reported, never swapped for the other behind the key's back "
                     "(dynamo needs opset ≥ 18)"},
        "sources": {"type": "array", "items": {"type": "string"}, "default": [],
                    "description": "files the torch factory reads (its own .py files): their digests enter the key"},
    },
    files=_files,
    checks=_checks,
    tools=lambda params: ("onnx", "onnxruntime", *(("torch",) if "torch" in params else ()),
                          *(("tensorflow-cpu", "tf2onnx", "ai-edge-litert") if set(params) & set(TF_SOURCES) else ())),
    ordered=("inputs",),  # a torch factory's forward() takes its inputs in the recipe's order
    discovers=lambda params: "torch" in params,  # a factory's own modules; an ONNX file reads nothing else
    run=run,
)
