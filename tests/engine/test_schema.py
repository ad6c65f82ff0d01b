import json
from pathlib import Path

from qnnbuild.engine.recipe.schema import fill_defaults, recipe_schema
from qnnbuild.stages import KINDS

ROOT = Path(__file__).resolve().parents[2]


def test_published_schema_is_in_sync_with_the_stage_kinds() -> None:
    published = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    assert published == recipe_schema(), "run: qnnbuild schema > schemas/recipe.schema.json"


def test_every_kind_and_object_refuses_unknown_keys() -> None:
    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    schema = recipe_schema()
    walk({k: v for k, v in schema["$defs"].items() if k != "stage"})  # `stage` only dispatches on kind
    walk(schema["properties"])
    assert set(schema["$defs"]) == {"stage", *KINDS}


def test_fill_defaults_nested() -> None:
    schema = {"type": "object", "properties": {"a": {"default": 1},
                                               "b": {"type": "object", "properties": {"c": {"default": 2}}}}}
    assert fill_defaults(schema, {"b": {}}) == {"a": 1, "b": {"c": 2}}
