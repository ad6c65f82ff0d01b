"""Recipe file → Plan, remembered by content so a no-op run skips YAML, jsonschema and networkx.

The cache key covers the recipe's bytes and absolute path and the qnnbuild code itself, so any edit to
either replans. Input files are not part of it: their digests are taken on every run anyway, and a file
that vanished fails there and sends us back through the full, well-reported check.
"""

from __future__ import annotations

import json
from pathlib import Path

from qnnbuild.common.atomic import write_json
from qnnbuild.common.hashing import sha256_json
from qnnbuild.common.stamps import package_stamp_json
from qnnbuild.common.version import VERSION
from qnnbuild.engine.recipe.limits import MAX_BYTES
from qnnbuild.engine.recipe.plan import Plan
from qnnbuild.errors import Problem, RecipeError


def _read(path: Path, shown: str) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError([Problem(shown, 1, 1, "", f"cannot read recipe: {exc.strerror}")]) from None


def full_plan(path: Path, shown: str, raw: bytes) -> Plan:
    from qnnbuild.engine.recipe.checks import load_recipe
    from qnnbuild.engine.recipe.plan import plan_of

    return plan_of(load_recipe(path, shown, raw))


def load_plan(recipe: str, artifacts: Path, *, cached: bool = True) -> Plan:
    path = Path(recipe)
    raw = _read(path, recipe)
    if not cached:
        return full_plan(path, recipe, raw)
    digest = sha256_json([VERSION, package_stamp_json(), str(path.resolve()), raw.hex()])
    cache = artifacts / ".qnnbuild" / "plans" / f"{digest}.json"
    try:
        plan = Plan.from_json(json.loads(cache.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    else:
        if all(Path(p).exists() for inst in plan.instances for p in inst.files.values()):
            return plan  # else: a file vanished since; the full check names it with file:line:col
    plan = full_plan(path, recipe, raw)
    write_json(cache, plan.to_json(), sort_keys=False)  # inputs: order is data
    return plan
