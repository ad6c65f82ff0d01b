"""The package layout is the architecture: these import rules keep it so.

- the engine never imports onnx, onnxruntime, QNN, torch or tensorflow (it knows the stage table and the
  target table, nothing more);
- a stage imports only `stages/base`, the toolchain and the errors (never the engine or the commands);
- the toolchain imports neither the engine, the stages nor the commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qnnbuild"
HEAVY = ("onnx", "onnxruntime", "onnxruntime_qnn", "torch", "tensorflow", "tf2onnx", "aimet_onnx")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (deferred imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "qnnbuild":
                found.update(f"qnnbuild.{a.name}" for a in node.names)
    return found


def files(wing: str) -> list[Path]:
    return sorted((PACKAGE / wing).glob("*.py"))


@pytest.mark.parametrize("path", files("engine"), ids=lambda p: p.name)
def test_engine_never_imports_the_toolchain_libraries(path: Path) -> None:
    heavy = sorted(m for m in imports(path) if m.split(".")[0] in HEAVY)
    assert not heavy, f"engine/{path.name} imports {heavy}"
    wrong = sorted(m for m in imports(path) if m.startswith("qnnbuild.toolchain.") and m != "qnnbuild.toolchain.runtime.targets")
    assert not wrong, f"engine/{path.name} imports toolchain code beyond the target table: {wrong}"


@pytest.mark.parametrize("path", [p for p in files("stages") if p.name != "__init__.py"], ids=lambda p: p.name)
def test_stages_import_only_base_toolchain_and_errors(path: Path) -> None:
    allowed = ("qnnbuild.stages.base", "qnnbuild.toolchain", "qnnbuild.errors")
    ours = {m for m in imports(path) if m.startswith("qnnbuild")}
    wrong = sorted(m for m in ours if not m.startswith(allowed))
    assert not wrong, f"stages/{path.name} imports {wrong}"


@pytest.mark.parametrize("path", files("toolchain"), ids=lambda p: p.name)
def test_toolchain_stands_alone(path: Path) -> None:
    wrong = sorted(m for m in imports(path) if m.startswith(("qnnbuild.engine", "qnnbuild.stages", "qnnbuild.commands")))
    assert not wrong, f"toolchain/{path.name} imports {wrong}"


def test_the_package_has_four_wings_and_no_loose_modules() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "engine/build/console.py", "errors.py"]
    assert {"engine", "toolchain", "stages", "commands"} <= {p.name for p in PACKAGE.iterdir() if p.is_dir()}


def test_engine_modules_load_no_toolchain_library_even_indirectly() -> None:
    """The per-file rule above misses an engine module importing a qnnbuild module that imports onnx at its
    top: import every engine module (and the stage table it reads) in a fresh process and look."""
    import subprocess
    import sys

    modules = [f"qnnbuild.engine.{p.stem}" for p in files("engine") if p.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
