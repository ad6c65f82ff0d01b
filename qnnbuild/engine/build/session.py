"""One build of one plan into one artifacts folder: keys, cache hits, running a stage, publishing it.

Shared by `run` (through doit), `status` and the no-op fast path, so all three agree on what a key is. The
shared cache's traffic lives in `store/sync` (given keys and callables), sending an instance to Dask in
`workers/client` (given a Job); every way an instance ends up current (found here, restored from the cache,
built here or on a worker) goes through one tail, `_adopt`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qnnbuild.common.faults import checkpoint
from qnnbuild.common.hashing import StatCache
from qnnbuild.engine.build.lock import write_lock
from qnnbuild.engine.build.result import Result
from qnnbuild.engine.keys.code import CodeDigests
from qnnbuild.engine.keys.document import DIST, declared_of, key_of
from qnnbuild.engine.keys.instance import InstanceKeys
from qnnbuild.engine.keys.status import Verdict, assess
from qnnbuild.engine.keys.versions import VersionCache
from qnnbuild.engine.recipe.plan import Instance, Plan
from qnnbuild.engine.store.files import remove_tree
from qnnbuild.engine.store.local import Store, manifest_bytes
from qnnbuild.errors import StageFailed
from qnnbuild.stages import KINDS
from qnnbuild.stages.base import StageRun

if TYPE_CHECKING:  # the shared cache, the cluster and the worker spawner load only when a run needs them
    from qnnbuild.engine.store.remote import RemoteCache
    from qnnbuild.engine.store.sync import SharedSync
    from qnnbuild.engine.workers.client import Built, Cluster, Job


def label(sessions: list[Session], session: Session, inst_id: str) -> str:
    """How an instance is named in a run (doit's task, the console line): prefixed by its recipe when a run
    builds several."""
    return f"{session.plan.recipe}:{inst_id}" if len(sessions) > 1 else inst_id


def stale(session: Session, ids: set[str]) -> list[str]:
    """The instances among `ids` and what they depend on whose current build is not what the recipe and its
    inputs now say (not built, or built from an older state): what a release refuses and `infer` warns about."""
    needed = session.plan.upstream(ids)
    return [v.id for v in session.assess() if v.id in needed and not (v.fresh and v.view_current)]


class Session:
    """One plan's build. Sessions of one run (`run a.yaml b.yaml`) share a peer's caches and key locks, so an
    instance whose key another recipe is building waits for it and then takes it from the store."""

    def __init__(self, plan: Plan, artifacts: Path, forced: frozenset[str] = frozenset(),
                 remote: RemoteCache | None = None, peer: Session | None = None, executor: Cluster | None = None,
                 *, readonly: bool = False) -> None:
        self.plan = plan
        self.artifacts = artifacts
        self.store = Store(artifacts)
        self.stat: StatCache = peer.stat if peer else StatCache(artifacts / ".qnnbuild" / "statcache.json")
        self.versions: VersionCache = peer.versions if peer else VersionCache(artifacts / ".qnnbuild" / "versions.json")
        self.code: CodeDigests = peer.code if peer else CodeDigests(artifacts / ".qnnbuild" / "code.json")
        self.forced = forced
        self.readonly = readonly  # status, report, release: look at the store without the run lock, never change it
        self.remote = remote
        self.executor = executor
        self.locked: dict[str, Any] = self.store.read_lock(plan.recipe).get("instances", {})
        self.results: dict[str, Result] = {}
        self.keys: dict[str, tuple[str, dict[str, Any]]] = {}
        self.guard: threading.Lock = peer.guard if peer else threading.Lock()
        self.keying = InstanceKeys(plan, self.stat, self.code, self.guard, self.store, readonly=readonly)
        self.sync: SharedSync | None = None
        if remote is not None:
            from qnnbuild.engine.store.sync import SharedSync

            self.sync = SharedSync(remote, self.store, self.guard)
        self._building: dict[str, threading.Lock] = peer._building if peer else {}
        # built on a worker and left in the shared cache until a stage here reads it or the run ends: instance id
        # → (key, its manifest there)
        self.deferred: dict[str, tuple[str, dict[str, Any]]] = {}

    def _key_lock(self, key: str) -> threading.Lock:
        with self.guard:
            return self._building.setdefault(key, threading.Lock())

    def view(self, inst: Instance) -> Path:
        return self.store.view(self.plan.recipe, inst.stage, inst.target)

    def assess(self, *, look_only: bool = False) -> list[Verdict]:
        """Every instance's verdict. `look_only`: never move a damaged entry aside (the no-op check runs without
        the store's lock; a damaged entry makes its verdict stale, and the run that follows, holding the lock,
        moves it)."""
        was = self.keying.readonly
        self.keying.readonly = was or look_only
        try:
            return assess(self.plan, self.keying.key_for, self.keying.output_digest,
                          lambda inst, key: self.store.view_is(self.view(inst), key), self.locked, self.forced)
        finally:
            self.keying.readonly = was

    def accept(self, verdicts: list[Verdict]) -> list[Result]:
        """Record fresh, current verdicts as cached results without running anything."""
        by_id = self.plan.by_id()
        return [self._record(by_id[v.id], "cached", 0.0, str(v.key), v.document or {}) for v in verdicts]

    def _upstream_digests(self, inst: Instance) -> dict[str, str]:
        return {name: str(self.results[up].digest) for name, up in inst.inputs.items()}

    # --- doit's up-to-date check and action -----------------------------------------------------------------
    def current(self, inst: Instance) -> bool:
        """True when the key is in the store and the view shows it: doit then skips the instance."""
        key, document = self.keying.key_for(inst, self._upstream_digests(inst))
        self.keys[inst.id] = (key, document)
        if inst.id in self.forced or not self.store.view_is(self.view(inst), key):
            return False
        try:
            if self.keying.output_digest(key) is None:
                return False
        except StageFailed:  # damaged and not movable: the action tries again and fails the stage, naming it
            return False
        self._record(inst, "cached", 0.0, key, document)
        return True

    def execute(self, inst: Instance) -> Result:
        started = time.monotonic()
        key, document = self.keys.get(inst.id) or self.keying.key_for(inst, self._upstream_digests(inst))
        with self._key_lock(key):  # one build per key, however many recipes of this run share it
            # again: a peer that held the lock may have run it, so what it loaded (the full key) is known now
            key, document = self.keying.key_for(inst, self._upstream_digests(inst))
            return self._execute(inst, key, document, started)

    def _execute(self, inst: Instance, key: str, document: dict[str, Any], started: float) -> Result:
        forced = inst.id in self.forced
        if not forced and self.keying.output_digest(key) is not None:
            return self._adopt(inst, key, document, "cached", started)
        restored = self._restore(inst, key, document) if self.sync is not None and not forced else None
        if restored is not None:
            return self._adopt(inst, *restored, "cached", started, origin="remote")
        if self.executor is not None and not KINDS[inst.kind].stays_here(inst.params):
            built = self._on_worker(self.executor, inst, key, document)
            if built is not None:
                key, document = self._worker_key(inst, document, built)
                if built.manifest is None:
                    result = self._adopt(inst, key, document, "ran", started, worker=built.worker)
                else:  # nothing here reads it during the run: restore_deferred brings it at the end
                    result = self._record(inst, "ran", time.monotonic() - started, key, document, built.manifest)
                    result.worker = built.worker
                    with self.guard:
                        self.deferred[inst.id] = (key, built.manifest)
                    checkpoint("cluster:left", inst.id)
                result.phases = built.phases
                return result
        return self._build_here(inst, key, document, started)

    def _build_here(self, inst: Instance, key: str, document: dict[str, Any], started: float) -> Result:
        """Run the stage on this machine, publish its entry, show it, upload it."""
        forced = inst.id in self.forced
        self._inputs_here(inst)
        work = self.store.new_workdir(key)
        try:
            self._run_worker(inst, work)
            key, document = self._rekey(work, document)
            self.store.publish(work, key, document, time.monotonic() - started, replace=forced, instance=inst.id)
        except StageFailed as exc:
            log = self._keep_log(inst, work)
            raise StageFailed(str(exc), log) from None
        finally:
            if work.exists():
                remove_tree(work)
        result = self._adopt(inst, key, document, "ran", started)
        checkpoint("view:switched", inst.id)
        if self.sync is not None:
            self.sync.upload(inst.id, key, forced=forced)
        self.failure_log(inst).unlink(missing_ok=True)  # the last failure of this instance is history now
        return result

    def _restore(self, inst: Instance, key: str, document: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The entry from the shared cache: this key, or any variant of its declared key other machines ran."""
        if self.sync is None:
            return None
        declared = declared_of(document)
        return self.sync.restore(key, document, lambda found: self.keying.with_discovered(declared, found))

    def _worker_key(self, inst: Instance, document: dict[str, Any], built: Built) -> tuple[str, dict[str, Any]]:
        """The key a worker published under (what its run loaded), as this machine computes it: the two must
        agree, or the entry is not one this machine can ever find again."""
        declared = declared_of(document)
        self.store.remember_discovered(key_of(declared), built.found)
        key, mine = self.keying.with_discovered(declared, built.found)
        if key != built.key:
            theirs, ours = built.document.get("libraries", {}), mine.get("libraries", {})
            differ = [f"{d} {theirs.get(d, '(none)')} there, {ours.get(d, '(none)')} here"
                      for d in sorted(set(theirs) | set(ours)) if theirs.get(d) != ours.get(d)]
            raise StageFailed(f"worker {built.worker} built {inst.id} with other distributions than this machine's "
                              f"({'; '.join(differ) or 'its key differs'}); give every worker the client's versions")
        return key, mine

    def _on_worker(self, executor: Cluster, inst: Instance, key: str, document: dict[str, Any]) -> Built | None:
        """Build on a worker; None when it runs here instead: the cache failed, a file it reads lies outside the
        recipe's folder (only this machine has it), or the files sent were a guess and the stage failed there."""
        from qnnbuild.engine.workers.client import FailedThere

        project, guessed = self._project(inst, document)
        if project is None:
            return None
        try:
            return executor.build(self._job(inst, key, document, project), self.store, restore=self._read_here(inst))
        except FailedThere as exc:
            if not guessed:
                raise
            why = str(exc).splitlines()[0][:160]
            executor.remote.warn(f"{inst.id} failed on a worker, which had only the project files known before this "
                                 f"key's first build ({why}); building it here")
            return None

    def _project(self, inst: Instance, document: dict[str, Any]) -> tuple[dict[str, tuple[Path, str]] | None, bool]:
        """The undeclared files of the recipe's folder a worker needs, and whether they are a guess: what the
        run behind this key read, or, before a declared key's first run, what the instance's last build read
        and what its declared files name (`expects`); a helper added since is missing there: the stage then
        fails on the worker and runs here."""
        kind = KINDS[inst.kind]
        known: dict[str, str] | None = document.get("discovered")
        guessed = known is None and kind.discovers(inst.params)
        if guessed:
            last = set(self.locked.get(inst.id, {}).get("document", {}).get("discovered", {}))
            last.update(os.path.relpath(p, self.keying.root)
                        for p in kind.expects(inst.params, {n: Path(f) for n, f in inst.files.items()}))
            known = self.keying.with_discovered({}, sorted(last))[1].get("discovered", {})
        project = {}
        for rel, digest in (known or {}).items():
            if rel.startswith(os.pardir) or Path(rel).is_absolute():
                return None, guessed
            if digest != "missing":
                project[rel] = (self.keying.root / rel, digest)
        return project, guessed

    def _job(self, inst: Instance, key: str, document: dict[str, Any], project: dict[str, tuple[Path, str]]
             ) -> Job:
        """What a worker needs to build `inst`, and nothing of this Session (its files' digests are the key's)."""
        from qnnbuild.engine.workers.client import Job

        files = {name: (Path(path), document["files"][name]) for name, path in sorted(inst.files.items())}
        return Job(inst.id, inst.kind, key, document, {name: str(self.results[up].key) for name, up in
                                                        inst.inputs.items()},
                   files, project, self.stage_run(inst, Path("/nonexistent")).to_json(), KINDS[inst.kind].spreads,
                   inst.id in self.forced, self.progress_file(inst), self.failure_log(inst), self._near(inst))

    def _near(self, inst: Instance) -> str | None:
        """The worker that built this instance's largest input in this run (a part's compile: where its split
        ran), where the job is best placed: the worker holds that entry and need not fetch it."""
        ups = [(up, self.results[up]) for up in inst.inputs.values()]
        built = [(self._entry_bytes(up, str(r.key)), r.worker) for up, r in ups if r.worker and r.key]
        return max(built)[1] if built else None

    def _entry_bytes(self, inst_id: str, key: str) -> int:
        with self.guard:
            left = self.deferred.get(inst_id)
        return manifest_bytes(left[1]) if left else self.store.entry_bytes(key)

    # --- entries left in the shared cache ------------------------------------------------------------------------
    def _read_here(self, inst: Instance) -> bool:
        """Whether a stage kept on this machine reads the instance's entry (a join of an LLM's parts reads the
        compiled parts): then a worker's entry is restored at once. Any other is left in the shared cache while
        the run goes on, so the next stage, on a worker, starts without waiting for a download here (a split
        part's 0.5 GB) that competes with the workers for the disk."""
        return any(KINDS[d.kind].stays_here(d.params) for d in self.plan.instances if inst.id in d.inputs.values())

    def _inputs_here(self, inst: Instance) -> None:
        """The instance's inputs in this store, for a stage about to run here: a worker-built entry left in the
        shared cache is restored now, or, when the cache has lost it or gone down since, built here again (as
        it would be without a cache: a cache error costs a warning, never the build)."""
        for up in inst.inputs.values():
            try:
                self._bring_here(up)
            except StageFailed as exc:
                if self.remote is not None:
                    self.remote.warn(f"{exc}; {inst.id} reads it: building it here")
                upstream = self.plan.by_id()[up]
                key, document = self.keying.key_for(upstream, self._upstream_digests(upstream))
                with self._key_lock(key):
                    self._build_here(upstream, key, document, time.monotonic())
                with self.guard:
                    self.deferred.pop(up, None)

    def restore_deferred(self) -> tuple[int, int]:
        """After the run: every worker-built entry left in the shared cache restored here and shown by its view,
        as after any run. Returns (entries, bytes); an entry the cache cannot give back costs a warning (the next
        run restores or rebuilds it), never the build."""
        count = size = 0
        for inst_id in list(self.deferred):
            try:
                got = self._bring_here(inst_id)
            except StageFailed as exc:  # raised only with a shared cache
                if self.remote is not None:
                    self.remote.warn(f"{exc}: the next run restores or rebuilds it")
                continue
            if got is not None:
                count, size = count + 1, size + got
        return count, size

    def _bring_here(self, inst_id: str) -> int | None:
        """A worker-built entry left in the shared cache, restored here and shown by its view; its bytes (None when
        it was not left there). Raises StageFailed when the cache no longer gives a valid entry."""
        from qnnbuild.engine.store.remote import CacheDown

        with self.guard:
            left = self.deferred.get(inst_id)
        if left is None or self.remote is None:
            return None
        key, manifest = left
        with self._key_lock(key):
            with self.guard:
                if inst_id not in self.deferred:  # another stage's thread brought it meanwhile
                    return None
            here = self.store.has(key) and inst_id not in self.forced  # a forced run brings its own log and timings
            try:
                restored = here or self.remote.fetch(key, self.store, replace=True) is not None
            except CacheDown:
                restored = False
            if not restored:
                raise StageFailed(f"{inst_id} was built on a worker, but the shared cache no longer gives a valid "
                                  "entry for it")
            self._show(self.plan.by_id()[inst_id], key)
            with self.guard:
                del self.deferred[inst_id]
        return manifest_bytes(manifest)

    def _adopt(self, inst: Instance, key: str, document: dict[str, Any], status: str, started: float, *,
               origin: str = "local", worker: str | None = None) -> Result:
        """The one tail of every way an entry becomes this instance's (a worker's entry left in the shared cache
        is recorded at once and shown when restored: `_bring_here`): shown, then its result recorded."""
        self._show(inst, key)
        result = self._record(inst, status, time.monotonic() - started, key, document)
        result.origin, result.worker = origin, worker
        return result

    def _show(self, inst: Instance, key: str) -> None:
        """The entry here becomes the instance's: its stats remembered (later runs check it by stat), then the
        view switched to it."""
        self._remember_stats(key)
        self.store.set_view(self.view(inst), key)

    def push_pending(self) -> tuple[int, int]:
        """Upload what an earlier run could not: (uploaded, dropped) (see sync.SharedSync.push_pending)."""
        return self.sync.push_pending() if self.sync is not None else (0, 0)

    def _remember_stats(self, key: str) -> None:
        """Remember the published files' stats: later runs check them by stat only."""
        manifest = self.store.manifest(key) or {"files": {}}
        with self.guard:
            for rel in manifest["files"]:
                self.stat.digest(self.store.entry(key) / rel)

    def _rekey(self, work: Path, document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """After a run: the key from the declared inputs, the files the stage reported reading and the
        distributions it loaded."""
        report = work / ".qnnbuild" / "discovered.json"
        if not report.is_file():
            return key_of(document), document
        declared = declared_of(document)
        found = sorted(e if e.startswith(DIST) else os.path.relpath(e, self.keying.root)
                       for e in json.loads(report.read_text()))
        report.unlink()
        self.store.remember_discovered(key_of(declared), found)
        return self.keying.with_discovered(declared, found)

    def stage_run(self, inst: Instance, work: Path) -> StageRun:
        return StageRun(recipe=self.plan.recipe, stage=inst.stage, instance=inst.id, params=inst.params,
                        inputs={name: self.store.entry(str(self.results[up].key)).resolve()
                                for name, up in inst.inputs.items()},
                        files={name: Path(p) for name, p in inst.files.items()}, out=work,
                        target=self.keying.target_of(inst), root=self.keying.root,
                        targets=self.keying.targets() if KINDS[inst.kind].all_targets else [],
                        progress_file=self.progress_file(inst))

    def progress_file(self, inst: Instance) -> Path:
        """Where a running instance's worker reports its progress (StageRun.progress) for the console."""
        folder = (self.artifacts / ".qnnbuild" / "progress").resolve()  # workers run in their own folder
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{self.plan.recipe}.{inst.id}.json"

    def _run_worker(self, inst: Instance, work: Path) -> None:
        from qnnbuild.engine.workers.process import spawn

        work = work.resolve()
        try:
            spawn(inst.kind, self.stage_run(inst, work), work)
        finally:
            self.progress_file(inst).unlink(missing_ok=True)

    def failure_log(self, inst: Instance) -> Path:
        return self.artifacts / self.plan.recipe / "logs" / (inst.id.replace("[", "-").replace("]", "") + ".log")

    def _keep_log(self, inst: Instance, work: Path) -> Path:
        dest = self.failure_log(inst)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / ".qnnbuild" / "stage.log", dest)
        return dest

    def _record(self, inst: Instance, status: str, seconds: float, key: str, document: dict[str, Any],
                manifest: dict[str, Any] | None = None) -> Result:
        """The instance's result, from its entry's manifest (here, or `manifest` of an entry in the shared cache)."""
        manifest = manifest or self.store.manifest(key) or {"files": {}, "digest": None}
        view = self.view(inst)
        result = Result(inst.id, inst.stage, inst.target, status, seconds, key,
                        [str(view / rel) for rel in manifest["files"]], manifest["digest"], document,
                        {rel: info["sha256"] for rel, info in manifest["files"].items()})
        with self.guard:
            self.results[inst.id] = result
        return result

    def fail(self, inst: Instance, status: str, message: str, seconds: float = 0.0, log: Path | None = None) -> None:
        with self.guard:
            self.results[inst.id] = Result(inst.id, inst.stage, inst.target, status, seconds,
                                           self.keys.get(inst.id, (None,))[0], message=message,
                                           log=str(log) if log else None)

    # --- after the run -----------------------------------------------------------------------------------------
    def write_lock(self) -> None:
        """The lock file of this build (build/lock.py), then the caches."""
        write_lock(self.store, self.plan, self.locked, list(self.results.values()))
        self.save_caches()

    def save_caches(self) -> None:
        """Input digests and tool versions, so the next run pays a stat per file instead of re-reading them."""
        self.stat.save()
        self.versions.save()
        self.code.save()

    def ordered_results(self) -> list[Result]:
        return [self.results[i.id] for i in self.plan.instances if i.id in self.results]
