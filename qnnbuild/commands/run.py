"""`qnnbuild run RECIPE...`: build what is stale (locally, or on a Dask cluster with a shared cache) and say
how each stage instance ended; `--json` prints the run as one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def remote_cache(args: argparse.Namespace, console: Any) -> Any:
    """The shared cache the arguments name, or None."""
    if not args.cache:
        return None
    from qnnbuild.engine.store.remote import RemoteCache

    return RemoteCache(args.cache, args.cache_mode, args.cache_required, warn=console.warn)


def artifacts_folder(path: str) -> Path:
    """The --artifacts folder, made if missing; a usage error naming it when it cannot be made or written."""
    import os

    from qnnbuild.errors import UsageError

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--artifacts {path}: cannot make that folder ({exc.strerror})") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--artifacts {path}: that folder is not writable")
    return folder


def cmd_run(args: argparse.Namespace) -> int:
    from qnnbuild.engine.workers.process import stop_server, warm
    from qnnbuild.errors import QnnbuildError

    artifacts = artifacts_folder(args.artifacts)
    if not (artifacts / ".store").is_dir():  # a first build: everything will run
        warm()  # the fork server's imports (~0.5 s) overlap qnnbuild's own and the planning, not the first stage
    from qnnbuild.engine.build.console import Console
    from qnnbuild.engine.build.run import Request, build

    started = time.monotonic()
    console = Console()
    remote = remote_cache(args, console)
    cluster = None
    if args.scheduler:
        from qnnbuild.engine.workers.client import Cluster

        cluster = Cluster(args.scheduler, remote)
        console.say(f"Dask cluster {args.scheduler}: {cluster.slots} worker thread(s)")
    jobs = args.jobs or (cluster.slots + 1 if cluster else 1)  # +1: one submitted or restored while all work
    request = Request(args.recipe, artifacts, args.only, args.force, jobs, remote, cluster)
    try:
        sessions = build(request, console)
    except QnnbuildError:  # bad input: nothing will run, and a warming stage server would hold our output open
        stop_server()
        raise
    finally:
        if cluster is not None:
            cluster.close()
    console.close()
    every = [r for s in sessions for r in s.ordered_results()]
    seconds = time.monotonic() - started
    console.summary(every, seconds)
    ok = all(r.status in ("ran", "cached") for r in every)
    if remote is not None and remote.failure and args.cache_required:
        console.say(f"qnnbuild: --cache-required: {remote.failure}")
        ok = False
    if args.json:
        entries = [{"recipe": s.plan.recipe, "ok": all(r.status in ("ran", "cached") for r in s.ordered_results()),
                    "stages": [r.to_json() for r in s.ordered_results()]} for s in sessions]
        single = {**entries[0], "ok": ok} if len(entries) == 1 else {"ok": ok, "recipes": entries}
        print(json.dumps({**single, "seconds": round(seconds, 3)}, indent=1))
    return 0 if ok else 1
