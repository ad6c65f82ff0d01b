"""`qnnbuild status RECIPE`: each stage instance, fresh or stale, and why (which parameter, input or tool
changed), without building or changing anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_status(args: argparse.Namespace) -> int:
    from qnnbuild.engine.build.session import Session
    from qnnbuild.engine.recipe.plancache import load_plan

    plan = load_plan(args.recipe, Path(args.artifacts))
    session = Session(plan, Path(args.artifacts), readonly=True)
    by_id = plan.by_id()
    rows = []
    for v in session.assess():
        inst = by_id[v.id]
        manifest = session.store.manifest(v.key) if v.key and v.fresh else None
        view = session.view(inst)
        rows.append({"id": v.id, "stage": inst.stage, "target": inst.target,
                     "status": "fresh" if v.fresh else "stale", "reason": "; ".join(v.reasons),
                     "key": v.key, "outputs": [str(view / r) for r in (manifest or {}).get("files", {})]})
    session.save_caches()
    if args.json:
        print(json.dumps({"recipe": plan.recipe, "stages": rows}, indent=1))
    else:
        for row in rows:
            print(f"{row['id']:<30} {row['status']:<6} {row['reason']}")
    return 0
