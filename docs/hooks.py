"""mkdocs hook: the recipe reference, the targets table and one page per stage kind, generated at build time from
the stage declarations and the recipe JSON Schema (qnnbuild.stages.KINDS, qnnbuild.engine.recipe.schema), so the
documentation cannot drift from the code. A stage kind without a page in mkdocs.yml's nav fails the strict build."""

from __future__ import annotations

import json
from typing import Any

from mkdocs.structure.files import File, Files


def _type(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "oneOf" in spec:
        return " or ".join(_type(s) for s in spec["oneOf"])
    kind = spec.get("type", "object")
    if kind == "array":
        return f"list of {_type(spec.get('items', {}))}"
    if kind == "object" and "properties" in spec:
        return "mapping: " + ", ".join(f"`{k}`" for k in spec["properties"])
    return str(kind)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def stage_page(name: str) -> str:
    from qnnbuild.engine.recipe.schema import stage_schema
    from qnnbuild.stages import KINDS

    kind, schema = KINDS[name], stage_schema(name)
    required = set(schema["required"])
    rows = ["| parameter | type | default | what it does |", "|---|---|---|---|"]
    for param, spec in schema["properties"].items():
        default = f"`{json.dumps(spec['default'])}`" if "default" in spec else ("required" if param in required
                                                                                 else "")
        rows.append(f"| `{param}` | {_cell(_type(spec))} | {_cell(default)} | {_cell(spec.get('description', ''))} |")
    facts = [f"- runs once per target: {'yes' if kind.fans_out else 'when an input does'}",
             f"- tools whose versions enter its key: {', '.join(kind.tools_for({})) or 'none'}",
             f"- outputs byte-reproducible: {'yes' if kind.reproducible else 'no (it measures time)'}"]
    if kind.unkeyed:
        facts.append(f"- parameters left out of the key (they change how it runs, not what it writes): "
                     f"{', '.join(f'`{u}`' for u in kind.unkeyed)}")
    return "\n".join([f"# `{name}`", "", kind.summary, "", *facts, "", "## Parameters", "",
                      "Generated from the stage's declaration; `qnnbuild schema` prints the same as JSON Schema.",
                      "", *rows, ""])


def targets_page() -> str:
    from qnnbuild.toolchain.runtime.targets import TARGETS

    rows = ["| name | product | QNN soc_model | HTP architecture | VTCM (MB) |", "|---|---|---|---|---|"]
    rows += [f"| `{t.name}` | {t.product} | {t.soc_model} | v{t.htp_arch} | {t.vtcm_mb} |" for t in TARGETS.values()]
    return "\n".join(["# Targets", "", "The Snapdragon parts a recipe's `targets:` may name; per-target stages "
                      "(compile, context-binary, validate, profile) run once for each.", "", *rows, ""])


def recipe_page() -> str:
    from qnnbuild.engine.recipe.schema import recipe_schema
    from qnnbuild.stages import KINDS

    top = recipe_schema()["properties"]
    rows = ["| key | type | what it is |", "|---|---|---|"]
    rows += [f"| `{k}` | {_cell(_type(v))} | {_cell(v.get('description', ''))} |" for k, v in top.items()]
    kinds = [f"- [`{k}`](stages/{k}.md): {KINDS[k].summary}" for k in sorted(KINDS)]
    return "\n".join([
        "# Recipe", "", "A recipe is one YAML file: a name, the targets, and stages, each of one kind, naming the "
        "stages it reads by their names. qnnbuild checks it against the JSON Schema below (`qnnbuild schema`), "
        "then what a schema cannot say (references, cycles, files, per-kind checks), and reports every problem "
        "with its file, line and field.", "", *rows, "", "Every stage has `kind` and may have `after:` (stages "
        "that must finish first without feeding it data). The kinds:", "", *kinds, ""])


def on_files(files: Files, config: Any) -> Files:
    from qnnbuild.stages import KINDS

    pages = {"reference/recipe.md": recipe_page(), "reference/targets.md": targets_page(),
             **{f"reference/stages/{k}.md": stage_page(k) for k in KINDS}}
    for path, text in pages.items():
        files.append(File.generated(config, path, content=text))
    return files
