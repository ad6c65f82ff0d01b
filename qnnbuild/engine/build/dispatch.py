"""Sending one stale instance to the Dask cluster: its upstream entries and declared files go to the shared
cache first (workers read only from there), the worker builds and publishes, and the client restores the
entry from the cache like any other hit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages import KINDS

if TYPE_CHECKING:
    from qnnbuild.engine.recipe.plan import Instance
    from qnnbuild.engine.build.session import Session


def on_cluster(session: Session, inst: Instance, key: str, document: dict[str, Any]) -> str | None:
    """Build the instance on a worker and restore its entry here; returns the worker's address, or None when the
    cache failed (the instance then runs here: a cache error never fails a build)."""
    from qnnbuild.engine.store.remote import CacheDown

    remote, cluster = session.remote, session.executor
    if remote is None or cluster is None:
        return None
    upstream = {name: str(session.results[up].key) for name, up in inst.inputs.items()}
    try:
        for up_key in upstream.values():  # a worker reads its inputs from the cache: make sure they are there
            remote.push(up_key, session.store)
        digests = {}
        for name, path in sorted(inst.files.items()):
            with session.guard:
                digests[name] = session.stat.digest(Path(path))
            cluster.ship(Path(path), digests[name])
    except CacheDown:
        return None
    request = {"kind": inst.kind, "key": key, "document": document, "upstream": upstream, "file_digests": digests,
               "run": session.stage_run(inst, Path("/nonexistent")).to_json(), "spreads": KINDS[inst.kind].spreads}
    progress = session.progress_file(inst)
    try:
        reply = cluster.run(request, progress)
    finally:
        progress.unlink(missing_ok=True)
    if not reply["ok"]:
        log = session.failure_log(inst)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(reply.get("log", ""))
        raise StageFailed(f"{reply['message']} (on {reply['worker']})", log)
    try:
        restored = remote.fetch(key, session.store, replace=True)  # this run's log and timings
    except CacheDown:
        restored = None
    if restored is None:
        raise StageFailed(f"worker {reply['worker']} built {inst.id}, but the shared cache holds no valid entry "
                          "for it")
    return str(reply["worker"])
