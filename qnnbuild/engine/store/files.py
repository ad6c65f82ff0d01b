"""Files of the store as plain files: what a stage produced (its outputs, in a stable order, without
qnnbuild's metadata), removing trees of read-only files, and whether a work folder's process still lives."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

META = ".qnnbuild"


def output_files(folder: Path) -> list[Path]:
    """Files a stage produced, in a stable order, without qnnbuild's own metadata."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == folder and d == META))
        found.extend(Path(dirpath) / f for f in sorted(filenames))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: Path) -> None:
    """rmtree that also removes the read-only files the store publishes."""
    def make_writable(func: Any, p: str, _exc: Any) -> None:
        parent = Path(p).parent
        parent.chmod(parent.stat().st_mode | stat.S_IWUSR)
        Path(p).chmod(stat.S_IWUSR | stat.S_IRUSR)
        func(p)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable)
        else:  # pragma: no cover - 3.11
            shutil.rmtree(path, onerror=make_writable)
