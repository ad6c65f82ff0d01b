"""Files, lines and import arrows per wing, import circles, the longest functions and the files over 250 lines.

    python benchmarks/layout_figures.py [qnnbuild]      # this checkout
    git worktree add /tmp/old 05b50cf && python benchmarks/layout_figures.py /tmp/old/qnnbuild   # another commit

An arrow is one module importing another, wherever the import stands (deferred imports count); a circle is a
group of modules that reach each other through arrows (a strongly connected component of more than one).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

import networkx as nx


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            t = target
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path) -> tuple[dict[str, Path], nx.DiGraph]:
    paths = {module_name(root, p): p for p in root.rglob("*.py")}
    known = set(paths)
    graph = nx.DiGraph()
    for name, path in paths.items():
        graph.add_node(name)
        for target in imports_of(path, name, known):
            if paths[target].name == "__init__.py" and not paths[target].read_text().strip(" \n\"'"):
                continue
            graph.add_edge(name, target)
    return paths, graph


def wings(paths: dict[str, Path], graph: nx.DiGraph) -> None:
    def wing(m: str) -> str:
        return m.split(".")[1] if m.count(".") >= 2 or (paths[m].name == "__init__.py" and m.count(".") == 1) \
            else "(root)"

    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for name, path in paths.items():
        stats[wing(name)][0] += 1
        stats[wing(name)][1] += len(path.read_text().splitlines())
    for a, b in graph.edges:
        if wing(a) == wing(b):
            stats[wing(a)][2] += 1
    print(f"{'wing':<12}{'files':>6}{'lines':>7}{'arrows inside':>15}")
    for w, (f, n, e) in sorted(stats.items()):
        print(f"{w:<12}{f:>6}{n:>7}{e:>15}")
    print(f"{'total':<12}{sum(s[0] for s in stats.values()):>6}{sum(s[1] for s in stats.values()):>7}"
          f"{graph.number_of_edges():>15} (all arrows)")
    sub: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, path in paths.items():
        parts = name.split(".")
        if len(parts) >= 4 or (len(parts) == 3 and path.name == "__init__.py"):
            sub[".".join(parts[1:3])][0] += 1
            sub[".".join(parts[1:3])][1] += len(path.read_text().splitlines())
    if sub:
        print("sub-wings (files/lines):", ", ".join(f"{w} {f}/{n}" for w, (f, n) in sorted(sub.items())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="qnnbuild")
    args = ap.parse_args()
    paths, graph = import_graph(Path(args.root).resolve())
    wings(paths, graph)
    cycles = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    print(f"import circles (strongly connected groups): {len(cycles)}")
    for c in cycles:
        print("  ", " ↔ ".join(sorted(c)))
    funcs = []
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                funcs.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    print("longest functions:", ", ".join(f"{n} ({k} lines)" for k, n in sorted(funcs, reverse=True)[:5]))
    big = sorted(((len(p.read_text().splitlines()), n) for n, p in paths.items()), reverse=True)
    print("files over 250 lines:", ", ".join(f"{n} ({k})" for k, n in big if k > 250) or "none")


if __name__ == "__main__":
    main()
