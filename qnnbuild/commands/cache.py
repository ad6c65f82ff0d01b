"""`qnnbuild cache push|gc`: fill the shared cache from what a recipe built here, and trim it by age."""

from __future__ import annotations

import argparse
from pathlib import Path

from qnnbuild.engine.build.console import Console
from qnnbuild.engine.store.local import Store
from qnnbuild.engine.store.remote import CacheDown, RemoteCache
from qnnbuild.errors import CacheError, UsageError


def _remote(args: argparse.Namespace, console: Console, mode: str = "readwrite") -> RemoteCache:
    if not args.cache:
        raise UsageError("name the shared cache: --cache URL or QNNBUILD_CACHE")
    return RemoteCache(args.cache, mode, True, warn=console.warn)


def cmd_push(args: argparse.Namespace) -> int:
    """Upload every entry the recipes' lock files name and the local store holds; already there is skipped."""
    from qnnbuild.engine.recipe.plancache import load_plan

    console = Console()
    remote = _remote(args, console)
    store = Store(Path(args.artifacts))
    uploaded = present = missing = 0
    for recipe in args.recipe:
        plan = load_plan(recipe, Path(args.artifacts))
        for inst_id, entry in sorted(store.read_lock(plan.recipe).get("instances", {}).items()):
            key = str(entry["key"])
            if not store.has(key):
                missing += 1
                console.say(f"  - {plan.recipe}:{inst_id:<28} not in the local store (run it first)")
                continue
            try:
                sent = remote.push(key, store)
            except CacheDown:
                raise CacheError(f"cache push: {remote.failure}") from None
            uploaded += sent
            present += not sent
            console.say(f"  ✓ {plan.recipe}:{inst_id:<28} {'uploaded' if sent else 'already there'}")
    console.say(f"{remote.shown}: {uploaded} uploaded, {present} already there, {missing} not built here")
    return 0 if not missing else 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Delete entries whose manifest is older than --older-than days (manifest first: readers stop at once)."""
    console = Console()
    remote = _remote(args, console)
    try:
        entries = remote.entries()
        old = [key for key, age in entries if age > args.older_than]
        for key in old:
            remote.delete(key)
    except CacheDown:
        raise CacheError(f"cache gc: {remote.failure}") from None
    console.say(f"{remote.shown}: removed {len(old)} of {len(entries)} entries older than {args.older_than:g} days")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    return cmd_push(args) if args.verb == "push" else cmd_gc(args)
