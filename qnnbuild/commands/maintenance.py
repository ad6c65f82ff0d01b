"""Commands that look after the artifacts folder rather than build: clean, gc, verify, doctor."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from qnnbuild.common.child import start_module
from qnnbuild.engine.recipe.plan import parse_instance_id
from qnnbuild.engine.store.files import remove_tree
from qnnbuild.engine.store.local import Store
from qnnbuild.errors import UsageError


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _recipe_name(arg: str) -> str:
    """A recipe is named by its file (read its `recipe:`) or by the name itself."""
    path = Path(arg)
    if path.is_file():
        from qnnbuild.engine.recipe.plancache import load_plan

        return load_plan(arg, Path(), cached=False).recipe
    if "/" in arg or arg.startswith("."):
        raise UsageError(f"{arg}: no such recipe file")
    return arg


def cmd_clean(args: argparse.Namespace) -> int:
    artifacts = Path(args.artifacts)
    if args.recipe:
        name = _recipe_name(args.recipe)
        remove_tree(artifacts / name)
        print(f"removed {artifacts / name} (store entries stay until `qnnbuild gc`)")
        return 0
    if not artifacts.is_dir():
        return 0
    freed = 0
    for child in artifacts.iterdir():
        if child.name != ".gitkeep":
            freed += _size(child) if child.is_dir() else 0
            remove_tree(child)
    print(f"removed everything under {artifacts}/ ({freed / 1e6:.1f} MB)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    store = Store(Path(args.artifacts))
    dropped, freed = 0, 0
    with store.exclusive():  # the live set after any run we waited for has written its lock, never before
        live = {entry["key"] for lock in store.all_locks().values() for entry in lock.get("instances", {}).values()}
        for key in store.entries():
            if key not in live:
                freed += _size(store.entry(key))
                remove_tree(store.entry(key))
                dropped += 1
        remove_tree(store.root / ".tmp")
    print(f"dropped {dropped} store entries ({freed / 1e6:.1f} MB); kept {len(live)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if args.rebuild:
        if not args.recipe:
            raise UsageError("verify --rebuild needs a recipe file")
        from qnnbuild.commands.release import verify_rebuild
        from qnnbuild.engine.recipe.plancache import load_plan

        return verify_rebuild(load_plan(args.recipe, Path(args.artifacts)), Path(args.artifacts), args.jobs)
    store = Store(Path(args.artifacts))
    locks = store.all_locks()
    if args.recipe:
        name = _recipe_name(args.recipe)
        if name not in locks:
            raise UsageError(f"no build of {name!r} under {args.artifacts}")
        locks = {name: locks[name]}
        keys = sorted({e["key"] for e in locks[name]["instances"].values()})
    else:
        keys = store.entries()
    bad: list[str] = []
    for key in keys:
        bad.extend(store.damaged(key))
    for name, lock in locks.items():
        for inst_id, entry in lock.get("instances", {}).items():
            view = store.view(name, *parse_instance_id(inst_id))
            if not store.view_is(view, entry["key"]):
                bad.append(f"{view} (does not show the locked build {entry['key'][:12]})")
            else:
                manifest = store.manifest(entry["key"]) or {}
                if {k: v["sha256"] for k, v in manifest.get("files", {}).items()} != entry.get("outputs"):
                    bad.append(f"{view} (outputs differ from the lock file)")
    for line in bad:
        print(f"BAD  {line}")
    print(f"verified {len(keys)} store entries and {sum(len(lk.get('instances', {})) for lk in locks.values())} "
          f"views: {'all good' if not bad else f'{len(bad)} bad'}")
    return 1 if bad else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Runs the probe in a child process: libQnnHtp writes to fd 1 when it loads."""
    proc = start_module("qnnbuild.commands.doctor", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(out + err)
        print("doctor: the probe crashed; see above")
        return 1
    for name, value in report["versions"].items():
        print(f"{name:<16} {value}")
    for name, (ok, detail) in report["backends"].items():
        print(f"backend {name:<8} {'works' if ok else 'unavailable'}  ({detail})")
    for advice in report["advice"]:
        print(f"advice: {advice}")
    return 0 if report["ok"] else 1
