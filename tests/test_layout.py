"""The package layout is the architecture: one table of what each sub-wing may import, and no import circles.

Every import counts, wherever it stands: at the top, inside a function, under `TYPE_CHECKING`. A deferred
import still ties two modules together; deferring it only hides the circle from Python, not from a reader.
The rules, floor by floor (a wing imports only from the floors its row names):

- `common/` is the ground floor: the standard library and `errors` only;
- `engine/` never imports onnx, onnxruntime or torch; its sub-wings import one way:
  recipe → keys → store → workers → build (a later one may import an earlier one, never back);
- `toolchain/` imports neither the engine, the stages nor the commands, and takes typed values; its sub-wings
  import one way: runtime → graph → data → sources / quant → llm;
- a stage imports `stages/base`, the toolchain, `common` and the errors;
- nothing in the package imports from the package root (`qnnbuild/__init__.py` only re-exports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qnnbuild"
HEAVY = ("onnx", "onnxruntime", "onnxruntime_qnn", "torch", "tensorflow", "tf2onnx", "aimet_onnx", "onnxruntime_genai")

ENGINE_BASE = ("errors", "common", "stages", "toolchain.runtime.targets")
TOOLCHAIN_BASE = ("errors", "common")
# wing → the wings (prefixes of qnnbuild module names) its modules may import; its own wing is always allowed
RULES: dict[str, tuple[str, ...]] = {
    "errors": (),
    "common": ("errors",),
    "engine": (),  # the wing's own __init__; every engine module lives in a sub-wing
    "toolchain": (),
    "engine.recipe": ENGINE_BASE,
    "engine.keys": (*ENGINE_BASE, "engine.recipe"),
    "engine.store": (*ENGINE_BASE, "engine.recipe", "engine.keys"),
    "engine.workers": (*ENGINE_BASE, "engine.recipe", "engine.keys", "engine.store"),
    "engine.build": (*ENGINE_BASE, "engine.recipe", "engine.keys", "engine.store", "engine.workers"),
    "toolchain.runtime": TOOLCHAIN_BASE,
    "toolchain.graph": (*TOOLCHAIN_BASE, "toolchain.runtime"),
    "toolchain.data": (*TOOLCHAIN_BASE, "toolchain.runtime", "toolchain.graph"),
    "toolchain.sources": (*TOOLCHAIN_BASE, "toolchain.runtime", "toolchain.graph", "toolchain.data"),
    "toolchain.quant": (*TOOLCHAIN_BASE, "toolchain.runtime", "toolchain.graph", "toolchain.data"),
    "toolchain.llm": (*TOOLCHAIN_BASE, "toolchain.runtime", "toolchain.graph", "toolchain.data",
                      "toolchain.sources", "toolchain.quant"),
    "stages": ("errors", "common", "toolchain"),
    "zoo": ("errors", "common", "toolchain.sources"),
    "commands": ("errors", "common", "engine", "stages", "toolchain", "zoo"),
    "cli": ("errors", "common", "commands", "engine.recipe.limits"),
    "__main__": ("cli",),
}
ROOT_REEXPORTS = ("common.version", "commands.infer")  # what `qnnbuild/__init__.py` may re-export


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The qnnbuild modules (names relative to the package; "" is its root) a file imports, at any depth."""
    known = modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}"[9:] in known else node.module
                     for a in node.names]
        else:
            continue
        found.update(n.removeprefix("qnnbuild").lstrip(".") for n in names if n.split(".")[0] == "qnnbuild")
    return found


def wing_of(module: str) -> str:
    """The longest row of RULES that names the module (a sub-wing before its wing)."""
    rows = [w for w in RULES if module == w or module.startswith(w + ".")]
    return max(rows, key=len) if rows else module


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for name, path in modules().items():
        g.add_node(name)
        for target in imports(path):
            if target != name:
                g.add_edge(name, target)
    return g


@pytest.mark.parametrize("name", sorted(m for m in modules() if m), ids=str)
def test_each_module_imports_only_what_its_wing_may(name: str) -> None:
    wing = wing_of(name)
    assert wing in RULES, f"{name} belongs to no wing of the table: add its row"
    allowed = (wing, *RULES[wing])
    wrong = sorted(t for t in imports(modules()[name])
                   if not any(t == a or t.startswith(a + ".") for a in allowed))
    assert not wrong, f"{name} ({wing}) imports {wrong}; {wing} may import {', '.join(RULES[wing]) or 'nothing'}"


def test_the_root_only_reexports_and_nothing_imports_it() -> None:
    assert imports(modules()[""]) <= set(ROOT_REEXPORTS)
    importers = sorted(n for n, p in modules().items() if n and "" in imports(p))
    assert not importers, f"{importers} import from the package root"


def test_no_import_circles() -> None:
    circles = [sorted(c) for c in nx.strongly_connected_components(graph()) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def test_the_table_itself_points_one_way() -> None:
    table = nx.DiGraph((w, a) for w, allowed in RULES.items() for a in allowed)
    table.remove_edges_from([(w, a) for w, a in list(table.edges) if w.startswith(a + ".")])
    assert nx.is_directed_acyclic_graph(table), list(nx.simple_cycles(table))


@pytest.mark.parametrize("name", sorted(m for m in modules() if m.startswith("engine")), ids=str)
def test_engine_never_imports_the_toolchain_libraries(name: str) -> None:
    tree = ast.parse(modules()[name].read_text())
    named = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    named |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    heavy = sorted(m for m in named if m.split(".")[0] in HEAVY)
    assert not heavy, f"{name} imports {heavy}"


def test_the_package_has_its_wings_and_no_loose_modules() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "errors.py"]
    assert {"common", "engine", "toolchain", "stages", "commands"} <= {p.name for p in PACKAGE.iterdir() if p.is_dir()}


def test_engine_modules_load_no_toolchain_library_even_indirectly() -> None:
    """The per-file rule above misses an engine module importing a qnnbuild module that imports onnx at its
    top: import every engine module (and the stage table it reads) in a fresh process and look."""
    names = [f"qnnbuild.{m}" for m in modules() if m.startswith("engine")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in names) +
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
