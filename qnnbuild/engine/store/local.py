"""The content-addressed store under the artifacts folder, the human views, and the lock files.

    artifacts/.store/<key>/...outputs...          one entry per stage key, read-only once published
    artifacts/.store/<key>/.qnnbuild/manifest.json file digests, output digest, key document
    artifacts/.store/<key>/.qnnbuild/stage.log     what the stage (and QNN) printed
    artifacts/<recipe>/<stage>[/<target>]          symlink to the current entry, for people
    artifacts/<recipe>/qnnbuild.lock               keys, output digests and tool versions of the last build

An entry is built in `.store/.tmp/`, described by its manifest and then renamed into place (luigi's atomic
file, for a folder): a key present in the store is complete by construction.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import write_json
from qnnbuild.common.faults import checkpoint
from qnnbuild.common.hashing import sha256_file, sha256_json
from qnnbuild.engine.store.files import META, alive, output_files, remove_tree
from qnnbuild.errors import StageFailed, StoreError

# Files beside the manifest that are not outputs (not keyed, not compared by `verify`): what the stage printed
# and its wall-clock figures. The manifest still records their digests, so a copy from a cache is checked.
META_FILES = ("stage.log", "timings.json")
LOCK_SCHEMA_VERSION = 1
MAX_VARIANTS = 8  # import lists remembered per declared key


class Store:
    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self.root = artifacts / ".store"

    # --- entries -------------------------------------------------------------------------------------------
    def entry(self, key: str) -> Path:
        return self.root / key

    def manifest(self, key: str) -> dict[str, Any] | None:
        try:
            raw = json.loads((self.entry(key) / META / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    def entry_bytes(self, key: str) -> int:
        """The size of an entry's output files, from its manifest (0 for an entry not here)."""
        return manifest_bytes(self.manifest(key) or {})

    def has(self, key: str) -> bool:
        return (self.entry(key) / META / "manifest.json").is_file()

    def new_workdir(self, key: str) -> Path:
        work = self.root / ".tmp" / f"{key[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        (work / META).mkdir(parents=True)
        return work

    def timings(self, key: str) -> dict[str, Any]:
        """The entry's wall-clock figures (`StageRun.timings`), or {}."""
        try:
            raw = json.loads((self.entry(key) / META / "timings.json").read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def publish(self, work: Path, key: str, document: dict[str, Any], seconds: float, *,
                replace: bool = False, instance: str = "", checked: dict[str, str] | None = None
                ) -> dict[str, Any]:
        """Describe `work` in a manifest and rename it to the entry for `key`; returns the manifest. `checked`:
        digests of files under `work` (relative paths) already computed from these very bytes, not read again
        (a fetched entry's files, checked against the shared cache's manifest as they came: GBs for an LLM)."""
        checked = checked or {}

        def digest(path: Path) -> str:
            return checked.get(path.relative_to(work).as_posix()) or sha256_file(path)

        files: dict[str, dict[str, Any]] = {}
        for path in output_files(work):
            rel = path.relative_to(work).as_posix()
            if path.is_symlink() or not path.is_file():
                raise StageFailed(f"output {rel} is a symlink or special file; outputs must be regular files")
            files[rel] = {"sha256": digest(path), "size": path.stat().st_size}
        if not files:
            raise StageFailed("the stage produced no output files")
        meta = {name: digest(work / META / name) for name in META_FILES if (work / META / name).is_file()}
        manifest = {"key": key, "digest": sha256_json({k: v["sha256"] for k, v in files.items()}),
                    "files": files, "meta": meta, "document": document, "seconds": round(seconds, 3)}
        write_json(work / META / "manifest.json", manifest)
        for path in output_files(work):
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        checkpoint("publish:manifest", instance)
        target = self.entry(key)
        if replace and target.exists():
            self._discard(target)
        try:
            work.rename(target)
        except OSError:
            if not self.has(key):
                raise
            if not self.damaged(key):
                self._discard(work)  # someone published the same key first; theirs is as good as ours
            else:  # never keep a damaged entry over a fresh build
                self.quarantine(key)
                work.rename(target)
        checkpoint("publish:renamed", instance)
        return manifest

    def sweep(self) -> int:
        """Remove work folders of runs that died (SIGKILL, power loss); their pid is in the name."""
        swept = 0
        tmp = self.root / ".tmp"
        for work in sorted(tmp.iterdir()) if tmp.is_dir() else []:
            parts = work.name.split(".")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is None or not alive(pid):
                remove_tree(work)
                swept += 1
        return swept

    def _discard(self, path: Path) -> None:
        trash = self.root / ".tmp" / f"trash.{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            path.rename(trash)
            remove_tree(trash)

    def quarantine(self, key: str) -> None:
        """Move a damaged entry out of the store (kept under .store/.damaged/ for inspection)."""
        damaged = self.root / ".damaged"
        try:
            damaged.mkdir(parents=True, exist_ok=True)
            self.entry(key).rename(damaged / f"{key}.{uuid.uuid4().hex[:8]}")
        except FileNotFoundError:
            return  # gone already: nothing damaged is left to serve
        except OSError as exc:  # a damaged entry left in place would be served: fail loudly instead
            raise StageFailed(f"store entry {key[:16]} is damaged and could not be moved aside "
                              f"({exc.strerror or exc}); remove {self.entry(key)} and run again") from None

    def entries(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def damaged(self, key: str) -> list[str]:
        """Files of an entry whose bytes no longer match its manifest (or that are missing or extra)."""
        manifest = self.manifest(key)
        entry = self.entry(key)
        if manifest is None:
            return [f"{entry}/{META}/manifest.json (missing or unreadable)"]
        bad = []
        listed = manifest["files"]
        present = {p.relative_to(entry).as_posix(): p for p in output_files(entry)}
        for rel, info in listed.items():
            path = present.get(rel)
            if path is None:
                bad.append(f"{entry / rel} (missing)")
            elif path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
                bad.append(f"{entry / rel} (content differs from manifest)")
        bad.extend(f"{entry / rel} (not in manifest)" for rel in sorted(set(present) - set(listed)))
        return bad

    # --- discovered inputs (a depfile per declared key) -----------------------------------------------------
    def discovered(self, declared_key: str) -> list[list[str]]:
        """The sets of files that runs of `declared_key` reported reading, most recent first."""
        try:
            raw = json.loads((self.root / ".deps" / f"{declared_key}.json").read_text())
        except (OSError, ValueError):
            return []
        return [list(v) for v in raw] if isinstance(raw, list) else []

    def remember_discovered(self, declared_key: str, files: list[str]) -> None:
        """Put `files` first among the variants of `declared_key` (a reverted import list stays a cache hit)."""
        variants = [files, *(v for v in self.discovered(declared_key) if v != files)][:MAX_VARIANTS]
        write_json(self.root / ".deps" / f"{declared_key}.json", variants)

    # --- views ----------------------------------------------------------------------------------------------
    def view(self, recipe: str, stage: str, target: str | None) -> Path:
        base = self.artifacts / recipe / stage
        return base / target if target else base

    def view_is(self, view: Path, key: str) -> bool:
        try:
            return view.readlink().name == key and self.has(key)
        except OSError:
            return False

    def set_view(self, view: Path, key: str) -> None:
        view.parent.mkdir(parents=True, exist_ok=True)
        if view.exists() and not view.is_symlink():
            raise StoreError(f"{view} is not a link qnnbuild made; move it away and run again")
        link = view.with_name(f".{view.name}.{uuid.uuid4().hex[:8]}.link")
        link.symlink_to(os.path.relpath(self.entry(key), view.parent))
        link.replace(view)

    # --- locks ----------------------------------------------------------------------------------------------
    def lock_path(self, recipe: str) -> Path:
        return self.artifacts / recipe / "qnnbuild.lock"

    def read_lock(self, recipe: str) -> dict[str, Any]:
        try:
            raw = json.loads(self.lock_path(recipe).read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) and raw.get("schema_version") == LOCK_SCHEMA_VERSION else {}

    def write_lock(self, recipe: str, lock: dict[str, Any]) -> None:
        write_json(self.lock_path(recipe), {"schema_version": LOCK_SCHEMA_VERSION, **lock})

    def all_locks(self) -> dict[str, dict[str, Any]]:
        if not self.artifacts.is_dir():
            return {}
        out = {}
        for path in sorted(self.artifacts.glob("*/qnnbuild.lock")):
            lock = self.read_lock(path.parent.name)
            if lock:
                out[path.parent.name] = lock
        return out

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One writer at a time per artifacts folder; the OS drops the lock if its holder is killed."""
        import fcntl

        path = self.artifacts / ".qnnbuild" / "run.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another qnnbuild run on {self.artifacts} ...", flush=True,
                      file=sys.stderr)
                started = time.monotonic()
                fcntl.flock(fh, fcntl.LOCK_EX)
                print(f"... got it after {time.monotonic() - started:.1f} s", file=sys.stderr)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def manifest_bytes(manifest: dict[str, Any]) -> int:
    """The size of the output files a manifest (here, or the shared cache's) describes."""
    return sum(int(f.get("size", 0)) for f in manifest.get("files", {}).values() if isinstance(f, dict))
