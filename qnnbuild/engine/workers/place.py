"""Where a Dask task finds itself: the worker running it, that worker's own store, and a job's inputs fetched
there from the shared cache (upstream entries by key, declared files by digest). Shared by the task that builds
an instance (task.py) and the task that runs one shard (spread.py)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from qnnbuild.common.hashing import sha256_json
from qnnbuild.engine.store.blobs import get_blob
from qnnbuild.engine.store.files import remove_tree
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


def project_folder(store: Store, layout: dict[str, Path]) -> Path:
    """The recipe's folder as a job sees it on this worker: `layout` (a path inside the client's recipe folder →
    the fetched file) in place, so a stage finds a helper module, an ONNX file's external data or a tokenizer
    where the recipe's folder had them, and nothing else of any project. Content-addressed (the fetched files
    are named by digest), built aside and renamed: jobs on one worker share it, and a half-built one is never
    seen. Files are copies, not links: onnx refuses external data with several hard links (a "hardlink
    attack"), and a stage must not be able to alter the fetched copy others check by digest."""
    folder = store.root / ".projects" / sha256_json({rel: str(src) for rel, src in sorted(layout.items())})[:32]
    if folder.is_dir():
        return folder
    building = folder.with_name(f".{uuid.uuid4().hex}.part")
    building.mkdir(parents=True)
    for rel, src in layout.items():
        dest = building / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
    try:
        building.rename(folder)
    except OSError:  # another job of this worker built the same folder first
        remove_tree(building)
    return folder

