"""Where a Dask task finds itself: the worker running it, that worker's own store, and a job's inputs fetched
there from the shared cache (upstream entries by key, declared files by digest). Shared by the task that builds
an instance (task.py) and the task that runs one shard (spread.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from qnnbuild.engine.store.blobs import get_blob
from qnnbuild.engine.store.local import Store
from qnnbuild.engine.store.remote import CacheDown, RemoteCache

CACHE_ENV = "QNNBUILD_SPREAD_CACHE"  # the cache URL reaches the stage's process by environment, never a file
CONNECT_TIMEOUT_S = 20


def worker_threads(client: Any) -> int:
    """The cluster's worker threads (at least 1): how many instances, or shards, it runs at once."""
    workers = client.scheduler_info()["workers"].values()
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers))


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


def fetch_inputs(upstream: dict[str, str], digests: dict[str, str], names: dict[str, str], remote: RemoteCache,
                 store: Store) -> tuple[dict[str, Path], dict[str, Path]]:
    """Upstream entries (name → key) and declared files (name → digest, saved as names[name]) in this worker's
    store, fetched from the shared cache unless already here."""
    inputs = {}
    for name, key in upstream.items():
        if not (store.has(key) or remote.fetch(key, store) is not None):
            raise CacheDown(f"upstream entry {key[:16]} ({name}) is not in the shared cache")
        inputs[name] = store.entry(key).resolve()
    files = {name: get_blob(remote, digest, store.root / ".files" / digest, names[name])
             for name, digest in digests.items()}
    return inputs, files
