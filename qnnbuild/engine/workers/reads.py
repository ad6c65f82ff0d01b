"""The files a stage's process opened for reading, seen as it runs: what enters its key besides what it declared.

Python's audit hook `open` reports every file opened through Python (builtins.open, io, os.open), whatever
library does it; a file read by native code alone (onnx's C++ loader reading external data, tokenizers' Rust)
is not seen, so a stage reports those itself (`StageRun.read`). tests/engine/test_traced_inputs.py runs every
stage kind under strace, which sees native opens too, and fails on a read no key covers.

Only files inside the recipe's folder count: the project's inputs. What a process reads elsewhere (the
interpreter and its distributions: keyed by version; /etc; caches in the home folder) is the environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

_READ_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def watch() -> list[str]:
    """Start recording the paths this process opens for reading (for the rest of its life: audit hooks cannot
    be removed, and a stage's process runs one stage)."""
    seen: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or len(args) < 3:
            return
        path, mode, flags = args[0], args[1], args[2]
        if isinstance(path, int) or path is None:
            return  # an fd: opened (and seen) before
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return
        if isinstance(flags, int) and flags & _READ_FLAGS:
            return
        seen.append(str(Path.cwd() / os.fsdecode(path)))  # an absolute path stays itself; a relative one: from here

    sys.addaudithook(hook)
    return seen


def project_reads(seen: list[str], root: Path, given: list[Path]) -> list[Path]:
    """The regular files among `seen` inside `root` and outside every path of `given` (declared inputs, the
    store entries the stage was given, its own output folder): its undeclared inputs."""
    base = os.path.realpath(root)
    skip = [os.path.realpath(p) for p in given]
    found = set()
    for raw in seen:
        path = os.path.realpath(raw)
        if not path.startswith(base + os.sep) or not Path(path).is_file():
            continue
        if any(path == s or path.startswith(s + os.sep) for s in skip):
            continue
        found.add(path)
    return [Path(p) for p in sorted(found)]
