"""The "code" of a stage key: a digest of the stage kind's own module and every qnnbuild module it imports.

A stage's `version` is bumped by hand when its output changes; a forgotten bump would serve stale outputs
under an unchanged key. The digest closes that gap: editing `stages/quantize.py` or `toolchain/quant/quantizer.py`
changes quantize's key (and so everything downstream), while editing `stages/profile.py` changes no other
kind's key. Found by reading the imports (ast), never by importing. The closure and its digest are remembered
in one small file, trusted while no file of the package changed its size or mtime: a no-op run pays a stat per
file, which the plan cache pays already.
"""

from __future__ import annotations

import ast
from pathlib import Path

from qnnbuild.common.hashing import sha256_file, sha256_json
from qnnbuild.common.stamps import PACKAGE, StampCache, package_stamp_json


def _file_of(module: str) -> Path | None:
    """The source file of a qnnbuild module, by name (a package is its __init__.py)."""
    rel = Path(*module.split(".")[1:])
    for path in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """The qnnbuild modules a file imports, wherever the import stands (functions defer heavy imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("qnnbuild"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("qnnbuild"):
            base = str(node.module)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _file_of(f"{base}.{a.name}"))
    return found


def closure(module: str) -> list[Path]:
    """`module`'s file and those of every qnnbuild module it imports, transitively, in a stable order."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _file_of(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(sorted(_imports(path) - set(seen)))
    return sorted(set(seen.values()))


def closure_digest(module: str) -> str:
    """The digest of `module`'s closure, read from the files now."""
    return sha256_json([[p.relative_to(PACKAGE).as_posix(), sha256_file(p)] for p in closure(module)])


class CodeDigests:
    """module → digest of its closure, remembered in `file` while the package's files are unchanged."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.cache: StampCache | None = None  # loaded on first use: a run that keys nothing never stats the package

    def digest(self, module: str) -> str:
        if self.cache is None:
            self.cache = StampCache(self.file, package_stamp_json())
        if module not in self.cache.data:
            self.cache.put(module, closure_digest(module))
        return str(self.cache.data[module])

    def save(self) -> None:
        if self.cache is not None:
            self.cache.save()
