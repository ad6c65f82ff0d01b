"""The versions of the distributions a stage runs, for its key document and the lock file.

importlib.metadata costs ~30 ms a run, so versions are remembered across runs in a stamp cache, trusted while
no folder of sys.path changed (installing, removing or upgrading a distribution renames a `.dist-info` folder,
which changes the mtime of the folder holding it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from qnnbuild.common.stamps import StampCache

_versions: dict[str, str] = {}


def installed(dist: str) -> str:
    """The version of `dist` installed here now, read fresh ("missing" when it is not)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def tool_version(dist: str) -> str:
    """installed(dist), remembered for the process (and across runs by VersionCache)."""
    if dist not in _versions:
        _versions[dist] = installed(dist)
    return _versions[dist]


def tool_versions(dists: tuple[str, ...]) -> dict[str, str]:
    return {d: tool_version(d) for d in dists}


def site_stamp() -> list[object]:
    """A stat per folder of sys.path but the first (the working or script folder, which changes with every
    build): installing, removing or upgrading a distribution there renames a `.dist-info` folder. Every entry
    counts, not only those named site-packages: a PYTHONPATH folder's distributions shadow the installed ones."""
    stamp: list[object] = []
    for entry in sys.path[1:]:
        try:
            st = Path(entry).stat()
        except OSError:
            continue
        stamp.append([entry, st.st_mtime_ns, st.st_ino])
    return stamp


class VersionCache:
    """Distribution versions remembered in `file`, trusted while no sys.path site folder changed."""

    def __init__(self, file: Path) -> None:
        self.cache = StampCache(file, site_stamp())
        for dist, value in self.cache.data.items():
            _versions.setdefault(dist, str(value))

    def save(self) -> None:
        for dist, value in _versions.items():
            if self.cache.data.get(dist) != value:
                self.cache.put(dist, value)
        self.cache.save()
