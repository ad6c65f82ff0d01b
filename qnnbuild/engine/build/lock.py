"""A recipe's lock file after a run: every instance that ended ran or cached with its key, key document, output
digest and files; the last good entry of the others kept; the tool versions and the platform. Rewritten only
when it changed, so a no-op run leaves it (and its mtime) alone."""

from __future__ import annotations

from typing import Any

from qnnbuild.engine.build.result import Result
from qnnbuild.engine.keys.document import environment
from qnnbuild.engine.keys.versions import tool_versions
from qnnbuild.engine.recipe.plan import Plan
from qnnbuild.engine.store.local import Store
from qnnbuild.stages import KINDS


def write_lock(store: Store, plan: Plan, locked: dict[str, Any], results: list[Result]) -> None:
    instances = {k: v for k, v in locked.items() if k in plan.by_id()}
    for result in results:
        if result.status in ("ran", "cached"):
            instances[result.id] = {"key": result.key, "digest": result.digest, "document": result.document,
                                    "outputs": result.files}
    tools = sorted({t for inst in plan.instances for t in KINDS[inst.kind].tools_for(inst.params)})
    lock = {"recipe": plan.recipe, "tools": tool_versions(tuple(tools)), "platform": environment(),
            "instances": dict(sorted(instances.items()))}
    old = store.read_lock(plan.recipe)
    old.pop("schema_version", None)
    if old != lock:
        store.write_lock(plan.recipe, lock)
