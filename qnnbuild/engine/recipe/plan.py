"""Recipe → DAG of stage instances (after the per-target fan-out) → an ordered, serialisable Plan.

A stage runs once per target when its kind fans out (compile) or when anything it consumes does; otherwise
once. The Plan is plain data so a no-op run can reload it without networkx, jsonschema or YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qnnbuild.stages import KINDS

if TYPE_CHECKING:
    from qnnbuild.engine.recipe.checks import Recipe


@dataclass(frozen=True)
class Instance:
    """One stage on one target (or the single instance of a target-independent stage)."""

    id: str
    stage: str
    kind: str
    target: str | None
    params: dict[str, Any]
    inputs: dict[str, str]  # input name → upstream instance id (data edges)
    after: tuple[str, ...]  # instance ids that must finish first (order only)
    files: dict[str, str]  # input name → absolute path

    @property
    def deps(self) -> list[str]:
        return sorted({*self.inputs.values(), *self.after})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "kind": self.kind, "target": self.target,
                "params": self.params, "inputs": self.inputs, "after": list(self.after), "files": self.files}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Instance:
        return cls(raw["id"], raw["stage"], raw["kind"], raw["target"], raw["params"], raw["inputs"],
                   tuple(raw["after"]), raw["files"])


@dataclass(frozen=True)
class Plan:
    recipe: str
    recipe_file: str  # absolute
    instances: tuple[Instance, ...]  # topological order
    generations: tuple[tuple[str, ...], ...]  # instances that may run side by side
    targets: tuple[str, ...] = ()  # the recipe's targets (for kinds that judge a model against all of them)

    def by_id(self) -> dict[str, Instance]:
        return {i.id: i for i in self.instances}

    def of_stage(self, stage: str) -> list[Instance]:
        return [i for i in self.instances if i.stage == stage]

    def downstream(self, ids: set[str]) -> set[str]:
        """`ids` and everything that (transitively) depends on them."""
        out = set(ids)
        for inst in self.instances:  # topological order: one pass suffices
            if any(d in out for d in inst.deps):
                out.add(inst.id)
        return out

    def upstream(self, ids: set[str]) -> set[str]:
        out = set(ids)
        for inst in reversed(self.instances):
            if inst.id in out:
                out.update(inst.deps)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "recipe_file": self.recipe_file,
                "instances": [i.to_json() for i in self.instances],
                "generations": [list(g) for g in self.generations], "targets": list(self.targets)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        return cls(raw["recipe"], raw["recipe_file"], tuple(Instance.from_json(i) for i in raw["instances"]),
                   tuple(tuple(g) for g in raw["generations"]), tuple(raw.get("targets", ())))


def instance_id(stage: str, target: str | None) -> str:
    return f"{stage}[{target}]" if target else stage


def parse_instance_id(inst_id: str) -> tuple[str, str | None]:
    """`compile[SM8650]` → ("compile", "SM8650"); `export` → ("export", None): instance_id's inverse."""
    stage, _, rest = inst_id.partition("[")
    return stage, rest.removesuffix("]") or None


def _per_target(recipe: Recipe) -> dict[str, bool]:
    import networkx as nx

    stage_graph = nx.DiGraph()
    stage_graph.add_nodes_from(recipe.stages)
    for stage in recipe.stages.values():
        stage_graph.add_edges_from((up, stage.name) for up in (*stage.refs.values(), *stage.after))
    fan: dict[str, bool] = {}
    for name in nx.topological_sort(stage_graph):
        stage = recipe.stages[name]
        fan[name] = KINDS[stage.kind].fans_out or any(fan[u] for u in (*stage.refs.values(), *stage.after))
    return fan


def build_graph(recipe: Recipe) -> Any:
    """The networkx DiGraph of instances; node attribute `instance` holds the Instance."""
    import networkx as nx

    fan = _per_target(recipe)
    graph = nx.DiGraph()
    for stage in recipe.stages.values():
        for target in (recipe.targets if fan[stage.name] else (None,)):
            def upstream(name: str, target: str | None = target) -> str:
                return instance_id(name, target if fan[name] else None)

            inst = Instance(
                id=instance_id(stage.name, target), stage=stage.name, kind=stage.kind, target=target,
                params=stage.params, inputs={k: upstream(v) for k, v in stage.refs.items()},
                after=tuple(upstream(a) for a in stage.after),
                files={k: str(v) for k, v in stage.files.items()},
            )
            graph.add_node(inst.id, instance=inst)
    for node in list(graph.nodes):
        for dep in graph.nodes[node]["instance"].deps:
            graph.add_edge(dep, node)
    return graph


def plan_of(recipe: Recipe) -> Plan:
    import networkx as nx

    graph = build_graph(recipe)
    order = list(nx.lexicographical_topological_sort(graph))
    generations = tuple(tuple(sorted(g)) for g in nx.topological_generations(graph))
    return Plan(recipe.name, str(recipe.path), tuple(graph.nodes[n]["instance"] for n in order), generations,
                recipe.targets)


def render(plan: Plan, fmt: str) -> str:
    """The DAG as text (one line per instance, by generation), mermaid or Graphviz dot."""
    if fmt == "mermaid":
        ids = {inst.id: f"n{i}" for i, inst in enumerate(plan.instances)}
        lines = ["flowchart LR"]
        lines += [f'    {ids[i.id]}["{i.id}<br/><small>{i.kind}</small>"]' for i in plan.instances]
        lines += [f"    {ids[d]} --> {ids[i.id]}" for i in plan.instances for d in i.inputs.values()]
        lines += [f"    {ids[d]} -.-> {ids[i.id]}" for i in plan.instances for d in i.after]
        return "\n".join(lines) + "\n"
    if fmt == "dot":
        lines = [f'digraph "{plan.recipe}" {{', "    rankdir=LR;", "    node [shape=box];"]
        lines += [f'    "{i.id}" [label="{i.id}\\n{i.kind}"];' for i in plan.instances]
        lines += [f'    "{d}" -> "{i.id}";' for i in plan.instances for d in i.inputs.values()]
        lines += [f'    "{d}" -> "{i.id}" [style=dashed];' for i in plan.instances for d in i.after]
        return "\n".join([*lines, "}"]) + "\n"
    by_id = plan.by_id()
    lines = [f"{plan.recipe}: {len(plan.instances)} stage instances in {len(plan.generations)} generations"]
    for n, gen in enumerate(plan.generations, 1):
        for inst_id in gen:
            inst = by_id[inst_id]
            feeds = [f"{k}={v}" for k, v in inst.inputs.items()] + [f"after {a}" for a in inst.after]
            lines.append(f"  {n}. {inst_id:<28} {inst.kind:<15} {'  '.join(feeds)}")
    return "\n".join(lines) + "\n"
