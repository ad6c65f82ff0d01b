"""A stage's shards as Dask tasks (toolchain/runtime/shards.Spread), for a stage that runs on a cluster worker.

The stage's process (on one worker) connects to the scheduler and submits one task per shard, shard i to
worker i (modulo the workers), so two shards never queue behind each other while a worker idles. A task
fetches the stage's inputs from the shared cache by key, as an instance's inputs are fetched (an entry
already in that worker's store is not fetched again), runs its shard in a fresh process there, and reports
its count as a Dask event, which the stage's process sums into its own progress. A worker lost mid-shard
is Dask's to retry (`allowed-failures`); a shard's process that dies is run again once, on another worker
when there is one; a shard's error fails the stage with its message and log tail.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from qnnbuild.engine.store.remote import CacheDown, RemoteCache
from qnnbuild.engine.workers.place import (
    CACHE_ENV,
    CONNECT_TIMEOUT_S,
    fetch_inputs,
    this_worker,
    worker_store,
    worker_threads,
)
from qnnbuild.errors import StageFailed

POLL_S = 0.5


class DaskSpread:
    """Runs shards on the cluster at `scheduler`, their inputs from the shared cache: `upstream` maps a stage
    input to its entry key, `file_digests` a declared file to its blob digest."""

    def __init__(self, scheduler: str, upstream: dict[str, str], file_digests: dict[str, str]) -> None:
        self.scheduler, self.upstream, self.file_digests = scheduler, upstream, file_digests
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from distributed import Client

            self._client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)  # type: ignore[no-untyped-call]
        return self._client

    @property
    def slots(self) -> int:
        """Worker threads in the cluster: the default number of shards."""
        return worker_threads(self.client())

    def __call__(self, run_range: Any, spec: dict[str, Any], parts: list[tuple[int, int]],
                 progress: Any) -> list[tuple[Any, float]]:
        client, topic = self.client(), f"qnnbuild-shards-{uuid.uuid4().hex}"
        counts = [0] * len(parts)
        client.subscribe_topic(topic, lambda event: counts.__setitem__(event[1]["shard"], event[1]["done"]))
        template = {**spec, "inputs": {n: self.upstream[n] for n in spec["inputs"]},
                    "files": {n: [self.file_digests[n], Path(p).name] for n, p in spec["files"].items()}}
        workers = sorted(client.scheduler_info()["workers"])
        cache = os.environ[CACHE_ENV]

        held: dict[Any, list[str]] = {}  # a lost shard's retry → the workers it is held to (not where it died)

        def submit(index: int, avoid: str | None = None) -> Any:
            wanted = [w for w in workers if w != avoid] if avoid else [workers[index % len(workers)]]
            # a retry waits for another worker, even while the one it died on is the only one free
            strict = bool(avoid and wanted)
            future = client.submit(shard_task, run_range, template, parts[index], index, cache, topic, pure=False,
                                   key=f"qnnbuild-shard-{index}-{uuid.uuid4().hex[:8]}", workers=wanted or None,
                                   allow_other_workers=not strict)
            if strict:
                held[future] = wanted
            return future

        def release_orphans() -> None:
            """A held retry whose workers all left the cluster goes to whichever worker remains."""
            alive = set(client.scheduler_info()["workers"]) if held else set()
            for future, wanted in list(held.items()):
                if future in futures and not alive & set(wanted):
                    index = futures.pop(future)
                    future.cancel()
                    del held[future]
                    futures[submit(index)] = index

        futures = {submit(i): i for i in range(len(parts))}
        results: dict[int, tuple[Any, float]] = {}
        retried: set[int] = set()
        try:
            while futures:
                time.sleep(POLL_S)
                progress(sum(counts))
                release_orphans()
                for future in [f for f in futures if f.done()]:
                    index = futures.pop(future)
                    answer = _answer(future)
                    if answer[0] == "ok":
                        results[index] = (answer[1], answer[2])
                        print(f"shard {index} (samples {parts[index][0]}-{parts[index][1] - 1}) ran on {answer[3]}",
                              flush=True)
                    elif answer[0] == "lost" and index not in retried:
                        print(f"warning: shard {index} lost on {answer[2]} ({answer[1]}); running it again on "
                              "another worker", flush=True)
                        retried.add(index)
                        counts[index] = 0
                        futures[submit(index, avoid=answer[2])] = index
                    else:
                        raise StageFailed(f"{answer[1]} (shard {index} on {answer[2]})")
        finally:
            client.unsubscribe_topic(topic)
            for future in futures:
                future.cancel()
        return [results[i] for i in range(len(parts))]


def _answer(future: Any) -> tuple[Any, ...]:
    """A shard task's answer; a task Dask gave up on (its workers died too often) as an error."""
    try:
        return tuple(future.result())
    except Exception as exc:  # KilledWorker, a cancelled future: the cluster's verdict, not the shard's
        return ("error", f"{type(exc).__name__}: {exc}", "the cluster")


def shard_task(run_range: Any, template: dict[str, Any], part: tuple[int, int], index: int, cache_url: str,
               topic: str) -> tuple[Any, ...]:
    """On a worker: the shard's inputs from the shared cache, the shard in a fresh process, its answer as
    ("ok", result, seconds, worker) or ("lost" | "error", message, worker): exceptions stay inside the task, so
    Dask retries only what a lost worker left undone."""
    worker = this_worker()
    me = str(worker.address) if worker else "local"
    store = worker_store(worker)
    try:
        inputs, files = fetch_inputs(template["inputs"], {n: d for n, (d, _) in template["files"].items()},
                                     {n: name for n, (_, name) in template["files"].items()},
                                     RemoteCache(cache_url, "read", warn=print), store)
    except CacheDown as exc:
        return ("error", f"the shard's inputs: {exc}", me)
    spec = {**template, "inputs": {n: str(p) for n, p in inputs.items()}, "files": {n: str(p) for n, p in
                                                                                    files.items()}}

    def report(done: int) -> None:
        if worker is not None:
            worker.log_event(topic, {"shard": index, "done": done})

    try:
        result, seconds = run_range(spec, *part, report)
    except ChildProcessError as exc:  # toolchain/runtime/shards.ShardLost
        return ("lost", str(exc).splitlines()[0], me)
    except Exception as exc:
        return ("error", str(exc), me)
    return ("ok", result, seconds, me)
