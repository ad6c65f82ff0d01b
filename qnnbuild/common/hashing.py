"""Content digests of input files and folders, paid once per file version.

A stat cache remembers (size, mtime_ns, inode) → sha256, so a 50 MB input is not re-hashed on every run.
After a `touch` the stat changes, the file is hashed once more, the digest is found unchanged (so no stage
reruns) and the new stat is remembered. sha256 because it is the store's digest and, with SHA-NI, faster
here than md5.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qnnbuild.common.stamps import StampCache

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

    FORMAT = 1

    def __init__(self, file: Path) -> None:
        self.cache = StampCache(file, self.FORMAT)  # a missing or damaged cache only costs re-hashing

    def digest(self, path: Path) -> str:
        """sha256 of a file, or of a folder's (relative name, file digest) pairs in sorted order."""
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return sha256_json([[p.relative_to(path).as_posix(), self.digest(p)] for p in files])
        st = path.stat()
        key = str(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.cache.data.get(key)
        if hit is not None and hit[:3] == stamp:
            return str(hit[3])
        value = sha256_file(path)
        self.cache.put(key, [*stamp, value])
        return value

    def save(self) -> None:
        self.cache.save()
