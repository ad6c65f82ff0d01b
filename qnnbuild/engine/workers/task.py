"""The task a Dask worker runs for one stale instance: its inputs from the shared cache, the stage in a fresh
process (process.spawn, as locally) in the worker's own store, its entry back to the shared cache, manifest
last. A stage that fails is an answer, not an exception, so Dask does not retry what would fail again; a worker
lost mid-stage has published nothing, and Dask gives the task to another worker (`allowed-failures`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qnnbuild.common.faults import checkpoint
from qnnbuild.common.hashing import sha256_file
from qnnbuild.engine.keys.document import DIST, declared_of, key_of, with_found
from qnnbuild.engine.keys.proof import disagreements
from qnnbuild.engine.keys.versions import installed
from qnnbuild.engine.store.blobs import get_blob
from qnnbuild.engine.store.files import remove_tree
from qnnbuild.engine.store.local import Store
from qnnbuild.engine.store.remote import CacheDown, RemoteCache
from qnnbuild.engine.workers.place import CACHE_ENV, fetch_inputs, project_folder, this_worker, worker_store
from qnnbuild.engine.workers.process import spawn
from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import StageRun

RELAY_EVERY_S = 0.5


def run_on_worker(request: dict[str, Any], cache_url: str) -> dict[str, Any]:
    """On a Dask worker: inputs from the shared cache, the stage in a fresh process, the entry back there. A
    stage that spreads its shards over the cluster gives up its worker slot while it runs (it only waits)."""
    worker = this_worker()
    seceded = bool(request.get("spreads")) and worker is not None
    if seceded:
        from distributed import rejoin, secede

        secede()
    try:
        return _build_here(request, cache_url, worker)
    finally:
        if seceded:
            rejoin()


def _build_here(request: dict[str, Any], cache_url: str, worker: Any) -> dict[str, Any]:
    started = time.monotonic()
    phases = Phases()
    warnings: list[str] = []
    remote = RemoteCache(cache_url, "readwrite", warn=warnings.append)
    store = worker_store(worker)
    key = request["key"]
    me = str(worker.address) if worker else "local"
    refused = set(request.get("refused") or ())  # shared entries the client refused (bad, or untrusted)
    forced = bool(request.get("forced"))  # `run --force`: built again, whatever this worker or the cache holds
    try:
        if store.has(key) and store.damaged(key):
            store.quarantine(key)
        if store.has(key) and not forced:  # the client came because it could not use the shared entry: give it
            remote.push(key, store, replace=key in refused, instance=request["run"]["instance"])
            return {"ok": True, "worker": me, "seconds": time.monotonic() - started,
                    "note": "already in this worker's store; uploaded to the shared cache"}
        # checked as the client checks it (every file against the manifest); a bad entry is rebuilt and replaced
        if not forced and remote.fetch(key, store) is not None:
            return {"ok": True, "worker": me, "seconds": time.monotonic() - started, "note": "already in the cache"}
        refusal = _disagreements(request, me)
        if refusal:
            return refusal
        with phases.timed("inputs"):
            run = _localize(request, remote, store)
        work = store.new_workdir(key)
        try:
            run = dataclasses.replace(run, out=work.resolve(), progress_file=_progress_file(store, work))
            spread = {"scheduler": worker.scheduler.address, "upstream": request["upstream"],
                      "file_digests": request["file_digests"]} if request.get("spreads") and worker else None
            with _relayed(run.progress_file, worker, request.get("progress_topic")), phases.timed("stage"):
                spawn(request["kind"], run, run.out, spread=spread, env={CACHE_ENV: cache_url} if spread else None)
            checkpoint("cluster:ran", run.instance)
            key, document, found = _rekey(work, request["document"], run.root, request.get("project") or {})
            store.publish(work, key, document, time.monotonic() - started, instance=run.instance, replace=forced)
        except StageFailed as exc:
            log = work / ".qnnbuild" / "stage.log"
            return {"ok": False, "worker": me, "message": str(exc),
                    "log": log.read_text(errors="replace") if log.is_file() else ""}
        finally:
            if work.exists():
                remove_tree(work)
            if run.progress_file:
                run.progress_file.unlink(missing_ok=True)
        store.remember_discovered(key_of(declared_of(document)), found)  # pushed beside the entry
        with phases.timed("upload"):
            remote.push(key, store, replace=forced or key in refused or key in remote.refused, instance=run.instance)
    except CacheDown as exc:
        return {"ok": False, "worker": me, "message": f"on worker {me}: {exc}", "log": "\n".join(warnings)}
    return {"ok": True, "worker": me, "seconds": time.monotonic() - started, "key": key, "document": document,
            "found": found, "phases": phases.seconds}


class Phases:
    """Where a worker-built instance's time went (its inputs fetched, the stage, the upload on the worker; the
    restore on the client): a cluster's cost beside the stage's own, shown on the instance's line."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = seconds or {}

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.monotonic() - began, 3)


def _rekey(work: Path, document: dict[str, Any], root: Path, shipped: dict[str, str]
           ) -> tuple[str, dict[str, Any], list[str]]:
    """After the run: the key of what it did (the project files it read, by their digests, and the distributions
    its process loaded, at this worker's versions, which its proof found equal to the client's for what the
    client knew of). Files are named relative to the recipe's folder, as the client names them."""
    report = work / ".qnnbuild" / "discovered.json"
    found = json.loads(report.read_text()) if report.is_file() else []
    report.unlink(missing_ok=True)
    base, files = os.path.realpath(root), {}
    for entry in (e for e in found if not e.startswith(DIST)):
        rel = os.path.relpath(entry, base)
        if rel.startswith(os.pardir):
            raise StageFailed(f"read {entry}, outside the recipe's folder, which a worker cannot key: such a stage "
                              "runs on the client")
        files[rel] = shipped.get(rel) or sha256_file(Path(entry))
    libraries = {e.removeprefix(DIST): installed(e.removeprefix(DIST)) for e in found if e.startswith(DIST)}
    document = with_found(declared_of(document), files, libraries)
    return key_of(document), document, [*sorted(files), *(e for e in found if e.startswith(DIST))]


def _disagreements(request: dict[str, Any], me: str) -> dict[str, Any] | None:
    """A refusal when this worker's toolchain for the job's kind differs from the key document's (it would
    publish its own output under the client's key), naming the worker and what differs; None when it agrees."""
    differs = disagreements(request["kind"], request["run"]["params"], request["document"])
    if not differs:
        return None
    return {"ok": False, "worker": me, "refused": differs, "log": "",
            "message": f"the worker refused {request['run']['instance']}: its toolchain differs from the key's ("
                       f"{'; '.join(differs)}); give every worker the client's versions"}


def _progress_file(store: Store, work: Path) -> Path:
    folder = (store.artifacts / ".qnnbuild" / "progress").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{work.name}.json"


@contextlib.contextmanager
def _relayed(progress: Path | None, worker: Any, topic: str | None) -> Iterator[None]:
    """While the stage runs, its progress file goes to the client as Dask events on `topic` (the client writes
    them where its console reads), whenever the file changes."""
    if progress is None or worker is None or not topic:
        yield
        return
    stop = threading.Event()

    def relay() -> None:
        sent = ""
        while not stop.wait(RELAY_EVERY_S):
            with contextlib.suppress(OSError):
                text = progress.read_text()
                if text and text != sent:
                    worker.log_event(topic, text)
                    sent = text

    thread = threading.Thread(target=relay, name="qnnbuild-progress-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _localize(request: dict[str, Any], remote: RemoteCache, store: Store) -> StageRun:
    """The request's StageRun with paths on this worker: upstream entries fetched here, and the recipe's folder
    rebuilt from the declared files inside it and the project files the client sent (`project`: path → digest,
    what earlier runs of the instance read), so the stage reads nothing else of any folder of this machine."""
    run = StageRun.from_json(request["run"])
    inputs, files = fetch_inputs(request["upstream"], request["file_digests"],
                                 {n: Path(p).name for n, p in run.files.items()}, remote, store)
    layout = {rel: get_blob(remote, digest, store.root / ".files" / digest, Path(rel).name)
              for rel, digest in (request.get("project") or {}).items()}
    inside = {name: os.path.relpath(path, run.root) for name, path in run.files.items()}
    inside = {name: rel for name, rel in inside.items() if not rel.startswith(os.pardir) and rel != os.curdir}
    layout.update({rel: files[name] for name, rel in inside.items()})
    root = project_folder(store, layout)
    files.update({name: root / rel for name, rel in inside.items()})
    return dataclasses.replace(run, root=root, inputs={**run.inputs, **inputs}, files={**run.files, **files})
