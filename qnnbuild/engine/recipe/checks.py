"""Recipe file → validated, frozen `Recipe`.

Three passes, each collecting every problem it finds before giving up: YAML (yamlsrc), the JSON Schema
(schema), then what a schema cannot say (references, cycles, targets, files, per-kind checks).
Nothing downstream sees raw YAML.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from qnnbuild.engine.recipe.limits import MAX_PROBLEMS
from qnnbuild.engine.recipe.schema import NAME_MESSAGE, fill_defaults, recipe_schema, stage_schema
from qnnbuild.engine.recipe.yamlsrc import Located, YamlPath, load_file, load_text
from qnnbuild.errors import Problem, RecipeError
from qnnbuild.stages import KINDS
from qnnbuild.toolchain.runtime.targets import TARGETS


@dataclass(frozen=True)
class Stage:
    """One named stage of a recipe, parameters complete with defaults."""

    name: str
    kind: str
    params: dict[str, Any]
    refs: dict[str, str]  # input name → stage name
    after: tuple[str, ...]
    files: dict[str, Path]  # input name → absolute path


@dataclass(frozen=True)
class Recipe:
    path: Path  # absolute
    shown: str  # as the user typed it, for messages
    name: str
    targets: tuple[str, ...]
    stages: dict[str, Stage]

    @property
    def root(self) -> Path:
        return self.path.parent


def _errors_in_file_order(data: Any) -> Iterator[Any]:
    """The schema's errors, the top level first, then stage by stage in the file's order: jsonschema walks a
    mapping's extra keys as a set, so a recipe cut off after 50 problems would otherwise show random ones."""
    schema = recipe_schema()
    validator = jsonschema.Draft202012Validator(schema)
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not stages:
        yield from validator.iter_errors(data)
        return
    yield from (e for e in validator.iter_errors({**data, "stages": {}}) if e.validator != "minProperties")
    for name, spec in stages.items():
        yield from validator.descend({name: spec}, schema["properties"]["stages"], path="stages")


def _schema_problems(doc: Located) -> list[Problem]:
    problems: list[Problem] = []
    for err in _errors_in_file_order(doc.data):  # lazy: stop once enough is known (a hostile recipe has 20,000)
        if len(problems) >= MAX_PROBLEMS:  # placed where the next problem is, so it reads last
            problems.append(doc.problem(tuple(err.absolute_path), f"… stopped after the first {MAX_PROBLEMS} "
                                        "problems; fix these and run again"))
            break
        path: YamlPath = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = sorted(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(allowed)):
                problems.append(doc.problem((*path, extra), f"unknown key {extra!r}; allowed: {', '.join(allowed)}",
                                            key=True))
        elif "propertyNames" in err.schema_path:
            problems.append(doc.problem((*path, err.instance), f"stage {err.instance!r} {NAME_MESSAGE}", key=True))
        elif err.validator == "pattern" and "x-message" in err.schema:
            problems.append(doc.problem(path, f"{err.instance!r} {err.schema['x-message']}"))
        elif err.validator == "if":
            continue
        else:
            problems.append(doc.problem(path, err.message))
    return problems


def _semantic_problems(doc: Located, root: Path) -> list[Problem]:
    data = doc.data
    problems: list[Problem] = []
    stages = data.get("stages", {}) if isinstance(data.get("stages"), dict) else {}
    targets = data.get("targets", []) if isinstance(data.get("targets"), list) else []
    for i, target in enumerate(targets):
        if isinstance(target, str) and target not in TARGETS:
            problems.append(doc.problem(("targets", i), f"unknown target {target!r}; known: {', '.join(TARGETS)}"))
    edges: list[tuple[str, str]] = []
    for name, spec in stages.items():
        if len(problems) >= MAX_PROBLEMS:
            return problems
        if isinstance(spec, dict) and spec.get("kind") in KINDS:
            problems.extend(_stage_problems(doc, root, name, spec, stages, edges, bool(targets)))
    problems.extend(_cycle_problems(doc, list(stages), edges))
    return problems


def _stage_problems(doc: Located, root: Path, name: str, spec: dict[str, Any], stages: dict[str, Any],
                    edges: list[tuple[str, str]], has_targets: bool) -> list[Problem]:
    """What one stage gets wrong beyond the schema; appends its DAG edges to `edges`."""
    problems: list[Problem] = []
    kind = KINDS[spec["kind"]]
    params = {k: v for k, v in spec.items() if k not in ("kind", "after")}
    try:
        refs = kind.refs(params)
        files = kind.files(params)
        checks = kind.checks(params)
    except (TypeError, AttributeError, KeyError, ValueError):
        return problems  # the schema pass already reported why these parameters are malformed
    for ref_path, upstream in refs.items():
        where: YamlPath = ("stages", name, *ref_path.split("."))
        if upstream not in stages:
            problems.append(doc.problem(where, f"unknown stage {upstream!r}; stages: {', '.join(stages)}"))
        else:
            edges.append((upstream, name))
    for i, before in enumerate(spec.get("after", []) if isinstance(spec.get("after"), list) else []):
        if before not in stages:
            problems.append(doc.problem(("stages", name, "after", i),
                                        f"unknown stage {before!r}; stages: {', '.join(stages)}"))
        else:
            edges.append((before, name))
    for file_path, rel in files.items():
        if not (root / rel).exists():
            problems.append(doc.problem(("stages", name, *file_path.split(".")),
                                        f"file not found: {rel} (looked in {root})"))
    problems.extend(doc.problem(("stages", name, *p), msg) for p, msg in checks)
    if kind.fans_out and not has_targets:
        problems.append(doc.problem(("stages", name, "kind"),
                                    f"a {kind.name} stage builds per target, but the recipe lists no targets"))
    return problems


def _cycle_problems(doc: Located, names: list[str], edges: list[tuple[str, str]]) -> list[Problem]:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    graph.add_edges_from(edges)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return []
    members = [a for a, _ in cycle]
    loop = " → ".join([*members, members[0]])
    return [doc.problem(("stages", members[0]), f"stages form a cycle: {loop}", key=True)]


def _stage(path: Path, name: str, kind_name: str, spec: dict[str, Any], after: tuple[str, ...]) -> Stage:
    kind = KINDS[kind_name]
    params = fill_defaults(stage_schema(kind.name), kind.expand({**spec, "kind": kind_name}))
    params.pop("kind")
    # absolute but as written: a symlink stays a symlink, so re-pointing it is seen (a digest follows it; a
    # resolved path would keep naming the old target)
    return Stage(name=name, kind=kind.name, params=params, refs=kind.refs(params), after=after,
                 files={k: Path(os.path.normpath(path.parent / v)) for k, v in kind.files(params).items()})


def _build(doc: Located, path: Path) -> Recipe:
    stages: dict[str, Stage] = {}
    for name, spec in doc.data["stages"].items():
        params = dict(spec)
        after = tuple(params.pop("after", ()))
        stage = _stage(path, name, spec["kind"], params, after)
        unfolded = KINDS[stage.kind].unfold(name, stage.params)
        if unfolded is not None:  # compile's parts: each its own stage, then this one joins them
            for extra, (kind, extra_params) in unfolded.stages.items():
                stages[extra] = _stage(path, extra, kind, extra_params, after)
            stage = _stage(path, name, stage.kind, unfolded.params, after)
        stages[name] = stage
    return Recipe(path=path, shown=doc.file, name=doc.data["recipe"], targets=tuple(doc.data.get("targets", [])),
                  stages=stages)


def load_recipe(path: Path, shown: str | None = None, raw: bytes | None = None) -> Recipe:
    """Load and check a recipe (its bytes, when the caller has read them already); raises RecipeError carrying
    every problem found."""
    shown = shown if shown is not None else str(path)
    path = path.resolve()
    doc = load_file(path, shown) if raw is None else load_text(raw, shown)
    if not isinstance(doc.data, dict):
        raise RecipeError([doc.problem((), "a recipe is a mapping with schema_version, recipe and stages")])
    problems = _schema_problems(doc)
    if len(problems) <= MAX_PROBLEMS:
        problems += _semantic_problems(doc, path.parent)
    if problems:
        raise RecipeError(problems)
    return _build(doc, path)
