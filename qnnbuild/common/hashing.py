"""Content digests of input files and folders, paid once per file version.

A stat cache remembers (size, mtime_ns, inode) → sha256, so a 50 MB input is not re-hashed on every run.
After a `touch` the stat changes, the file is hashed once more, the digest is found unchanged (so no stage
reruns) and the new stat is remembered. sha256 because it is the store's digest and, with SHA-NI, faster
here than md5.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(value: object) -> str:
    """Digest of canonical JSON: sorted keys, no whitespace, so equal data always gives equal digests."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StatCache:
    """path → digest, trusted while the file's size, mtime_ns and inode are unchanged."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.entries: dict[str, list[object]] = {}
        self.dirty = False
        try:
            raw = json.loads(file.read_text())
            if isinstance(raw, dict) and raw.get("version") == 1:
                self.entries = raw["entries"]
        except (OSError, ValueError, KeyError):
            pass  # a missing or damaged cache only costs re-hashing

    def digest(self, path: Path) -> str:
        """sha256 of a file, or of a folder's (relative name, file digest) pairs in sorted order."""
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return sha256_json([[p.relative_to(path).as_posix(), self.digest(p)] for p in files])
        st = path.stat()
        key = str(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit is not None and hit[:3] == stamp:
            return str(hit[3])
        value = sha256_file(path)
        self.entries[key] = [*stamp, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if not self.dirty:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "entries": self.entries}))
        tmp.replace(self.file)
        self.dirty = False
