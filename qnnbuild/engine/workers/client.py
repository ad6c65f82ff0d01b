"""Stale instances sent to a Dask cluster (`--scheduler tcp://HOST:PORT` or `local:N`).

doit still orders and tracks the work: a task's action submits its instance and waits, so `-j` is the number
of instances in flight. On the worker, the instance runs exactly as the local runner runs it (a fresh process
per stage, `process.spawn`) in a worker-local store: its upstream entries and its declared input files come
from the shared cache, and its entry goes back there, manifest last. The client then restores the entry
like any other cache hit. A worker lost mid-stage has published nothing; the scheduler gives the task to
another worker (Dask's `allowed-failures`). A stage that fails is an answer, not an exception, so Dask does
not retry what would fail again.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import write_text
from qnnbuild.engine.keys.document import DIST
from qnnbuild.engine.store.blobs import put_blob
from qnnbuild.engine.store.local import Store
from qnnbuild.engine.store.remote import CacheDown, RemoteCache
from qnnbuild.engine.workers.place import CONNECT_TIMEOUT_S, worker_threads
from qnnbuild.engine.workers.task import Phases, run_on_worker
from qnnbuild.errors import StageFailed, UsageError


@dataclass(frozen=True)
class Job:
    """One stale instance as a worker needs it, built by the Session: no Session crosses to the cluster."""

    instance: str
    kind: str
    key: str
    document: dict[str, Any]
    upstream: dict[str, str]  # input name → the upstream entry's key
    files: dict[str, tuple[Path, str]]  # declared input name → (path here, digest)
    project: dict[str, tuple[Path, str]]  # undeclared files the stage reads, by path in the recipe's folder
    run: dict[str, Any]  # the StageRun as JSON; paths are replaced on the worker
    spreads: bool  # the stage may run its shards as tasks of their own
    forced: bool  # `run --force`: the worker builds it again, whatever it or the shared cache holds
    progress: Path  # where the relayed progress lands for the console
    failure_log: Path  # where a failed stage's log is kept
    near: str | None = None  # the worker that holds its largest input: preferred, not required


class FailedThere(StageFailed):
    """The stage itself failed on a worker (not a refusal of the job, not the cache)."""


@dataclass(frozen=True)
class Built:
    """A worker's answer: the key it published under (from what its run loaded: `found`, as the entries a run
    reports) and that key's document."""

    worker: str
    key: str
    document: dict[str, Any]
    found: list[str]
    phases: dict[str, float]  # seconds: inputs, stage, upload on the worker; restore here
    manifest: dict[str, Any] | None = None  # the shared entry's manifest when it was left there (not restored)


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
        self._preferred: set[str] = set()  # workers a job in flight was sent to by preference
        self._guard = threading.Lock()

    @property
    def slots(self) -> int:
        """Worker threads in the cluster: the default number of instances in flight."""
        return worker_threads(self.client)

    def ship(self, path: Path, digest: str) -> None:
        """Put a declared input file into the shared cache, by digest, for workers to fetch."""
        if digest not in self.shipped:
            put_blob(self.remote, path, digest)
            self.shipped.add(digest)

    def run(self, request: dict[str, Any], progress: Path | None = None, near: str | None = None) -> dict[str, Any]:
        """Build one instance on a worker; its progress, relayed by the worker, lands in `progress`. `near` holds
        its largest input and is preferred unless another job of this run was already sent there by preference:
        Dask queues a preferred job behind that worker's task, so two splits of one quantize entry would pile on
        one worker while another idles (seen in the parts test); the second goes wherever Dask places it."""
        name = f"qnnbuild-{request['run']['instance']}-{uuid.uuid4().hex[:8]}"
        if progress is not None:
            request = {**request, "progress_topic": name}
            self.client.subscribe_topic(name, lambda event: _write_progress(progress, event[1]))
        with self._guard:
            prefer = near if near and near not in self._preferred else None
            if prefer:
                self._preferred.add(prefer)
        placed: dict[str, Any] = {"workers": [prefer], "allow_other_workers": True} if prefer else {}
        try:
            future = self.client.submit(run_on_worker, request, self.remote.url, pure=False, key=name, **placed)
            reply: dict[str, Any] = future.result()
        finally:
            if prefer:
                with self._guard:
                    self._preferred.discard(prefer)
            if progress is not None:
                self.client.unsubscribe_topic(name)
        return reply

    def build(self, job: Job, store: Store, *, restore: bool = True) -> Built | None:
        """Build the job on a worker and restore its entry into `store` (with `restore`; otherwise only its
        manifest is read: the entry stays in the shared cache for now); what the worker built, or None when the
        cache failed (the instance then runs here: a cache error never fails a build)."""
        remote = self.remote
        try:
            for up_key in job.upstream.values():  # a worker reads its inputs from the cache: make sure they are there
                if store.has(up_key):
                    remote.push(up_key, store)
                elif remote.manifest(up_key) is None:  # left there by a worker, and lost since: built here
                    return None
            for path, digest in [*job.files.values(), *job.project.values()]:
                self.ship(path, digest)
        except CacheDown:
            return None
        request = {"kind": job.kind, "key": job.key, "document": job.document, "upstream": job.upstream,
                   "file_digests": {name: digest for name, (_, digest) in sorted(job.files.items())},
                   "project": {rel: digest for rel, (_, digest) in sorted(job.project.items())},
                   "run": job.run, "spreads": job.spreads, "forced": job.forced,
                   # the shared entries this client refused: the worker replaces the one it then publishes
                   "refused": sorted(remote.refused)}
        try:
            reply = self.run(request, job.progress, job.near)
        finally:
            job.progress.unlink(missing_ok=True)
        if not reply["ok"]:
            job.failure_log.parent.mkdir(parents=True, exist_ok=True)
            job.failure_log.write_text(reply.get("log", ""))
            failed = StageFailed if reply.get("refused") else FailedThere
            raise failed(f"{reply['message']} (on {reply['worker']})", job.failure_log)
        key = str(reply.get("key", job.key))
        phases = Phases(dict(reply.get("phases", {})))
        try:
            if restore:
                with phases.timed("restore"):
                    found = remote.fetch(key, store, replace=True)  # this run's log and timings
            else:
                found = remote.manifest(key)
        except CacheDown:
            found = None
        if found is None:
            raise StageFailed(f"worker {reply['worker']} built {job.instance}, but the shared cache holds no valid "
                              "entry for it")
        document = reply.get("document", job.document)
        return Built(str(reply["worker"]), key, document, list(reply.get("found", found_in(document))),
                     phases.seconds, None if restore else found)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.local is not None:
            with contextlib.suppress(Exception):
                self.local.close()


def found_in(document: dict[str, Any]) -> list[str]:
    """What the run behind a key document reported, as a run reports it (files, then `dist:NAME` entries)."""
    return [*document.get("discovered", {}), *(DIST + d for d in document.get("libraries", {}))]


def _write_progress(path: Path, text: str) -> None:
    """A worker's progress, relayed, where the console reads it (atomically: it reads while we write)."""
    with contextlib.suppress(OSError):
        write_text(path, text)
