"""`qnnbuild diff A B`: two builds side by side — accuracy, SQNR, cycles, slowest ops, binary size — with the
change in each, so choosing between w8a8, w8a16 and mixed precision is one look.

A and B are recipe files (their last build, read from the artifacts folder) or lock files
(`artifacts/<recipe>/qnnbuild.lock`, e.g. from two branches' artifacts folders). Figures come from the store
entries the locks name, so a diff never rebuilds anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qnnbuild.engine.recipe.plan import parse_instance_id
from qnnbuild.engine.store.local import Store
from qnnbuild.errors import UsageError
from qnnbuild.stages import KINDS


def _lock(arg: str, artifacts: Path) -> tuple[str, dict[str, Any], Store]:
    path = Path(arg)
    if path.suffix == ".lock" or path.name == "qnnbuild.lock":
        try:
            lock = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{arg}: cannot read the lock file: {exc}") from None
        return f"{lock.get('recipe', path.parent.name)} ({path})", lock, Store(path.parent.parent)
    from qnnbuild.engine.recipe.plancache import load_plan

    plan = load_plan(arg, artifacts)
    store = Store(artifacts)
    lock = store.read_lock(plan.recipe)
    if not lock.get("instances"):
        raise UsageError(f"{arg}: {plan.recipe} has not been built in {artifacts}; run it first")
    return plan.recipe, lock, store


def figures(lock: dict[str, Any], store: Store) -> dict[str, dict[str, float | str]]:
    """target → figure → value: what each locked instance's stage kind says of its entry (StageKind.summarize)."""
    found: dict[str, dict[str, float | str]] = {}
    for inst_id, entry in lock.get("instances", {}).items():
        kind = KINDS.get(entry.get("document", {}).get("kind", ""))
        if kind is not None:
            target = parse_instance_id(inst_id)[1] or "-"
            found.setdefault(target, {}).update(kind.summarize(store.entry(str(entry["key"]))))
    return {t: r for t, r in sorted(found.items()) if r}


def _change(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        delta = b - a
        pct = f" ({delta / a:+.1%})" if a else ""
        return f"{delta:+.4g}{pct}"
    return "same" if a == b else "changed"


def table(fa: dict[str, dict[str, Any]], fb: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for target in sorted(set(fa) | set(fb)):
        a, b = fa.get(target, {}), fb.get(target, {})
        for metric in sorted(set(a) | set(b)):
            va, vb = a.get(metric, "–"), b.get(metric, "–")
            rows.append([target, metric, str(va), str(vb), _change(va, vb) if metric in a and metric in b else "–"])
    return rows


def cmd_diff(args: argparse.Namespace) -> int:
    artifacts = Path(args.artifacts)
    name_a, lock_a, store_a = _lock(args.a, artifacts)
    name_b, lock_b, store_b = _lock(args.b, artifacts)
    fa, fb = figures(lock_a, store_a), figures(lock_b, store_b)
    rows = table(fa, fb)
    if args.json:
        print(json.dumps({"a": name_a, "b": name_b, "rows": [dict(zip(["target", "metric", "a", "b", "change"], r,
                                                                       strict=True)) for r in rows]}, indent=1))
        return 0
    if not rows:
        print("no figures to compare: neither build has validate, profile or context-binary outputs")
        return 0
    head = ["target", "metric", name_a, name_b, "change"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0
