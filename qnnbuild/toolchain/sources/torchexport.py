"""A torch factory (`package.module:callable`) → an ONNX file, and the factory's own source files.

The exporter is the recipe's choice (`exporter:`) and part of the key: one that fails says so and names the
other, never swapped for it silently (the dynamo exporter writes another opset and other bytes).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed


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


def load_factory(spec: str, root: Path) -> object:
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


def _example(torch: Any, spec: Any) -> Any:
    """An example input for tracing: zeros of the shape, in the dtype the recipe gives (float32 by default;
    token ids are int64)."""
    shape, dtype = (spec["shape"], spec.get("dtype", "float32")) if isinstance(spec, dict) else (spec, "float32")
    return torch.zeros(*shape, dtype=getattr(torch, dtype))


def to_onnx(model: Any, args: tuple[Any, ...], dest: Path, *, names: list[str], outputs: list[str] | None,
            opset: int, exporter: str, what: str) -> None:
    """`model` on `args` → `dest` by torch's `exporter` (torchscript | dynamo), one protobuf; a failure names
    `what` failed and the other exporter, never swapped for it behind the key's back."""
    import torch

    dynamo = exporter == "dynamo"
    with torch.no_grad():
        try:
            program = torch.onnx.export(model, args, None if dynamo else str(dest), input_names=names,
                                        output_names=outputs, opset_version=opset, dynamo=dynamo,
                                        do_constant_folding=True)
        except Exception as exc:  # the exporters raise anything from torch._dynamo and torch.jit to TypeError
            other = "torchscript" if dynamo else "dynamo"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise StageFailed(f"{what} ({exporter} exporter) failed: {first}; exporter: {other} may export this "
                              "model") from None
    if dynamo:
        if program is None:
            raise StageFailed(f"{what} (dynamo exporter) returned nothing")
        program.save(str(dest), external_data=False)


def export(params: dict[str, Any], root: Path, checkpoint: Path | None, dest: Path,
           say: Callable[[str], None]) -> list[Path]:
    """Export the factory's model to `dest`; returns the source files of the modules it imported from outside
    the installed distributions (its own module and helpers: they enter the key)."""
    import torch

    before = set(sys.modules)
    model = load_factory(params["torch"], root)()  # type: ignore[operator]
    if not isinstance(model, torch.nn.Module):
        raise StageFailed(f"torch: {params['torch']} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    model.eval()
    names = list(params["inputs"])  # the recipe's order: forward() binds its arguments in it
    args = tuple(_example(torch, spec) for spec in params["inputs"].values())
    outputs = params.get("outputs") or None
    say(f"torch.onnx.export {params['torch']} ({params['exporter']} exporter, opset {params['opset']})")
    to_onnx(model, args, dest, names=names, outputs=outputs, opset=params["opset"], exporter=params["exporter"],
            what="torch.onnx.export")
    return own_module_files(before)  # after the export: a factory may import lazily when called
