"""Stale instances sent to a Dask cluster (`--scheduler tcp://HOST:PORT` or `local:N`).

doit still orders and tracks the work: a task's action submits its instance and waits, so `-j` is the number
of instances in flight. On the worker, the instance runs exactly as the local runner runs it (a fresh process
per stage, `worker.spawn`) in a worker-local store: its upstream entries and its declared input files come
from the shared cache, and its entry goes back there, manifest last. The client then restores the entry
like any other cache hit. A worker lost mid-stage has published nothing; the scheduler gives the task to
another worker (Dask's `allowed-failures`). A stage that fails is an answer, not an exception, so Dask does
not retry what would fail again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import write_text
from qnnbuild.common.faults import checkpoint
from qnnbuild.engine.store.local import Store, remove_tree
from qnnbuild.engine.store.remote import CacheDown, RemoteCache
from qnnbuild.engine.workers.process import spawn
from qnnbuild.engine.workers.spread import CACHE_ENV, CONNECT_TIMEOUT_S, worker_threads
from qnnbuild.errors import StageFailed, UsageError
from qnnbuild.stages.base import StageRun

RELAY_EVERY_S = 0.5


class Cluster:
    """A Dask client for one run (and the LocalCluster it started, for `local:N`)."""

    def __init__(self, address: str, remote: RemoteCache | None) -> None:
        if remote is None:
            raise UsageError("--scheduler needs a shared cache (--cache URL or QNNBUILD_CACHE): workers read "
                             "their inputs from it and publish their outputs to it")
        if not remote.writes:
            raise UsageError("--scheduler needs --cache-mode readwrite: workers publish their outputs there")
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError("--scheduler needs the dask extra: pip install 'qnnbuild[dask]'") from None
        self.remote = remote
        self.local: Any = None
        if address.startswith("local:"):
            count = address.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise UsageError(f"--scheduler {address}: write local:N with N ≥ 1 worker processes")
            self.local = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=50)
            self.client = Client(self.local)
        else:
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise UsageError(f"--scheduler {address}: cannot reach the Dask scheduler ({exc})") from None
        self.address = address
        self.shipped: set[str] = set()

    @property
    def slots(self) -> int:
        """Worker threads in the cluster: the default number of instances in flight."""
        return worker_threads(self.client)

    def ship(self, path: Path, digest: str) -> None:
        """Put a declared input file into the shared cache, by digest, for workers to fetch."""
        if digest not in self.shipped:
            self.remote.put_blob(path, digest)
            self.shipped.add(digest)

    def run(self, request: dict[str, Any], progress: Path | None = None) -> dict[str, Any]:
        """Build one instance on a worker; its progress, relayed by the worker, lands in `progress`."""
        name = f"qnnbuild-{request['run']['instance']}-{uuid.uuid4().hex[:8]}"
        if progress is not None:
            request = {**request, "progress_topic": name}
            self.client.subscribe_topic(name, lambda event: _write_progress(progress, event[1]))
        try:
            future = self.client.submit(run_on_worker, request, self.remote.url, pure=False, key=name)
            reply: dict[str, Any] = future.result()
        finally:
            if progress is not None:
                self.client.unsubscribe_topic(name)
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.local is not None:
            with contextlib.suppress(Exception):
                self.local.close()


def _write_progress(path: Path, text: str) -> None:
    """A worker's progress, relayed, where the console reads it (atomically: it reads while we write)."""
    with contextlib.suppress(OSError):
        write_text(path, text)


def this_worker() -> Any:
    """The Dask worker running this task, or None outside one."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def worker_store(worker: Any) -> Store:
    """A store per worker process, under the worker's own directory (or the temp folder)."""
    return Store(Path(worker.local_directory if worker else tempfile.gettempdir()) / "qnnbuild")


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
    warnings: list[str] = []
    remote = RemoteCache(cache_url, "readwrite", warn=warnings.append)
    store = worker_store(worker)
    key = request["key"]
    me = str(worker.address) if worker else "local"
    try:
        # checked as the client checks it (every file against the manifest); a bad entry is rebuilt and replaced
        if store.has(key) or remote.fetch(key, store) is not None:
            return {"ok": True, "worker": me, "seconds": time.monotonic() - started, "note": "already in the cache"}
        run = _localize(request, remote, store)
        work = store.new_workdir(key)
        try:
            run = dataclasses.replace(run, out=work.resolve(), progress_file=_progress_file(store, work))
            spread = {"scheduler": worker.scheduler.address, "upstream": request["upstream"],
                      "file_digests": request["file_digests"]} if request.get("spreads") and worker else None
            with _relayed(run.progress_file, worker, request.get("progress_topic")):
                spawn(request["kind"], run, run.out, spread=spread, env={CACHE_ENV: cache_url} if spread else None)
            checkpoint("cluster:ran", run.instance)
            store.publish(work, key, request["document"], time.monotonic() - started, instance=run.instance)
        except StageFailed as exc:
            log = work / ".qnnbuild" / "stage.log"
            return {"ok": False, "worker": me, "message": str(exc),
                    "log": log.read_text(errors="replace") if log.is_file() else ""}
        finally:
            if work.exists():
                remove_tree(work)
            if run.progress_file:
                run.progress_file.unlink(missing_ok=True)
        remote.push(key, store, replace=key in remote.refused, instance=run.instance)
    except CacheDown as exc:
        return {"ok": False, "worker": me, "message": f"on worker {me}: {exc}", "log": "\n".join(warnings)}
    return {"ok": True, "worker": me, "seconds": time.monotonic() - started}


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


def fetch_inputs(upstream: dict[str, str], digests: dict[str, str], names: dict[str, str], remote: RemoteCache,
                 store: Store) -> tuple[dict[str, Path], dict[str, Path]]:
    """Upstream entries (name → key) and declared files (name → digest, saved as names[name]) in this worker's
    store, fetched from the shared cache unless already here."""
    inputs = {}
    for name, key in upstream.items():
        if not (store.has(key) or remote.fetch(key, store) is not None):
            raise CacheDown(f"upstream entry {key[:16]} ({name}) is not in the shared cache")
        inputs[name] = store.entry(key).resolve()
    files = {name: remote.get_blob(digest, store.root / ".files" / digest, names[name])
             for name, digest in digests.items()}
    return inputs, files


def _localize(request: dict[str, Any], remote: RemoteCache, store: Store) -> StageRun:
    """The request's StageRun with paths on this worker: upstream entries and input files fetched here."""
    run = StageRun.from_json(request["run"])
    inputs, files = fetch_inputs(request["upstream"], request["file_digests"],
                                 {n: Path(p).name for n, p in run.files.items()}, remote, store)
    return dataclasses.replace(run, inputs={**run.inputs, **inputs}, files={**run.files, **files})
