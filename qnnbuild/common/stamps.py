"""Caches trusted while a stamp holds: a small JSON file `{"stamp": ..., "data": ...}` whose data counts only
while the stamp it was saved with equals the stamp taken now (site folders' mtimes for tool versions, the
package's files for code digests, a format version for file digests). A missing, damaged or stale file only
costs recomputing; saving goes through the one atomic write."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import write_json

PACKAGE = Path(__file__).resolve().parent.parent


class StampCache:
    """`data` is what `file` held under `stamp`, or {} when the stamps differ; `save()` writes it back if `put`
    changed it."""

    def __init__(self, file: Path, stamp: Any) -> None:
        self.file = file
        self.stamp = stamp
        self.data: dict[str, Any] = {}
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError):
            raw = None
        if isinstance(raw, dict) and raw.get("stamp") == stamp and isinstance(raw.get("data"), dict):
            self.data = raw["data"]
        self.dirty = False

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            write_json(self.file, {"stamp": self.stamp, "data": self.data}, indent=None)
            self.dirty = False


@functools.cache
def package_stamp() -> tuple[tuple[str, int, int], ...]:
    """(file, mtime_ns, size) of every module of qnnbuild, taken once per process: the stamp of what depends on
    qnnbuild's own code (code digests, the plan cache)."""
    found = []
    for p in sorted(PACKAGE.rglob("*.py")):
        st = p.stat()
        found.append((p.relative_to(PACKAGE).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(found)


def package_stamp_json() -> list[object]:
    return [list(entry) for entry in package_stamp()]
