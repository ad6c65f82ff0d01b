"""What is stale and why: a pure function of the plan, the keys, the store and the last lock.

Like doit's DependencyStatus, every verdict carries its reasons, so `status` can say which parameter, input
or tool version changed. It takes its side effects (key computation, store look-ups) as functions, so it is
tested on literal plans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qnnbuild.engine.keys.document import explain
from qnnbuild.engine.recipe.plan import Instance, Plan


@dataclass(frozen=True)
class Verdict:
    id: str
    fresh: bool
    reasons: list[str] = field(default_factory=list)
    key: str | None = None  # None when an upstream stage must run first
    document: dict[str, Any] | None = None
    view_current: bool = False


KeyFn = Callable[[Instance, dict[str, str]], tuple[str, dict[str, Any]]]


def assess(plan: Plan, key_for: KeyFn, output_digest: Callable[[str], str | None],
           view_current: Callable[[Instance, str], bool], locked: dict[str, Any],
           forced: frozenset[str] = frozenset()) -> list[Verdict]:
    """One Verdict per instance, in plan order.

    `key_for(instance, upstream digests)` → (key, key document); `output_digest(key)` → the stored entry's
    output digest or None when the key is not in the store; `locked` → the last lock's instances.
    """
    digests: dict[str, str] = {}
    verdicts: list[Verdict] = []
    for inst in plan.instances:
        pending = [d for d in inst.inputs.values() if d not in digests]
        if pending:
            verdicts.append(Verdict(inst.id, False, [f"input {p} will be rebuilt first" for p in pending]))
            continue
        key, document = key_for(inst, {name: digests[up] for name, up in inst.inputs.items()})
        stored = output_digest(key)
        if inst.id in forced:
            verdicts.append(Verdict(inst.id, False, ["forced"], key, document))
        elif stored is not None:
            digests[inst.id] = stored
            current = view_current(inst, key)
            verdicts.append(Verdict(inst.id, True, [] if current else ["in the store; view will be updated"],
                                    key, document, current))
        else:
            before = locked.get(inst.id)
            if before is None:
                reasons = ["never built"]
            elif before.get("key") == key:
                reasons = ["output missing from the store"]
            else:
                reasons = explain(before.get("document") or {}, document)
            verdicts.append(Verdict(inst.id, False, reasons, key, document))
    return verdicts
