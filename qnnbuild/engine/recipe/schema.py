"""The recipe's JSON Schema, assembled from the stage kinds' own parameter schemas.

`schemas/recipe.schema.json` in the repository is a published copy of `recipe_schema()` (a test keeps the
two equal; `qnnbuild schema` prints it). The code is the source of truth so an installed package never
depends on a file outside it.
"""

from __future__ import annotations

import copy
from typing import Any

from qnnbuild.stages import KINDS
from qnnbuild.toolchain.runtime.targets import TARGETS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # names become folder names: no dots, no separators
NAME_MESSAGE = "is not a valid name: use letters, digits, '_' and '-' (at most 64), starting with a letter or digit"


def stage_schema(kind_name: str) -> dict[str, Any]:
    kind = KINDS[kind_name]
    props: dict[str, Any] = {
        "kind": {"const": kind.name, "description": kind.summary},
        "after": {"type": "array", "items": {"type": "string"}, "uniqueItems": True,
                  "description": "stages that must finish first without feeding this one any data"},
    }
    props.update(copy.deepcopy(kind.params))
    return {"type": "object", "properties": props, "required": ["kind", *kind.required],
            "additionalProperties": False, **copy.deepcopy(kind.extra_schema)}


def recipe_schema() -> dict[str, Any]:
    kinds = sorted(KINDS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://qnnbuild.dev/schemas/recipe.schema.json",
        "title": "qnnbuild recipe",
        "type": "object",
        "required": ["schema_version", "recipe", "stages"],
        "additionalProperties": False,
        "properties": {
            "schema_version": {"const": 1},
            "recipe": {"type": "string", "pattern": NAME_PATTERN, "x-message": NAME_MESSAGE,
                       "description": "names the folder artifacts/<recipe>/"},
            "targets": {"type": "array", "items": {"type": "string"}, "uniqueItems": True,
                        "description": f"Snapdragon parts: {', '.join(TARGETS)}"},
            "stages": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": NAME_PATTERN, "x-message": NAME_MESSAGE},
                "additionalProperties": {"$ref": "#/$defs/stage"},
            },
        },
        "$defs": {
            "stage": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"enum": kinds}},
                "allOf": [
                    {"if": {"properties": {"kind": {"const": k}}, "required": ["kind"]},
                     "then": {"$ref": f"#/$defs/{k}"}}
                    for k in kinds
                ],
            },
            **{k: stage_schema(k) for k in kinds},
        },
    }


def fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    """`value` with every missing property that has a schema default filled in, recursively.

    Defaults enter the stage key, so a recipe that spells out a default and one that omits it share a key.
    """
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = fill_defaults(sub, out[name])
    return out
