"""The one launcher of qnnbuild's own child processes (`python -m qnnbuild...`: a stage, a shard, QNN's verbose
probe, doctor's probe) and of a command stage's program, each of which dies with its parent.

Why children at all: QNN state leaks within a process, libQnnHtp writes to file descriptor 1, and a crash in
native code must fail one stage, not the build. Why they die with the parent: a killed `qnnbuild run` must not
leave a stage or shard building in the background (PR_SET_PDEATHSIG, SIGKILL). The hash seed is fixed so that
every child orders sets and dicts alike (a build is compared byte for byte).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

PR_SET_PDEATHSIG = 1
SIGKILL = 9
# the top-level modules a stage's shard processes loaded (comma-separated, in the stage process's environment):
# what the stage ran includes them, in one process or in shards (engine/workers/libraries reads it)
SHARD_MODULES = "QNNBUILD_SHARD_MODULES"


def top_modules() -> set[str]:
    """The top-level names of the modules loaded in this process."""
    return {name.partition(".")[0] for name in list(sys.modules)}


def loaded_in_shards(names: set[str]) -> None:
    """Count `names` (a shard process's top_modules()) as loaded by this process (see SHARD_MODULES)."""
    known = set(filter(None, os.environ.get(SHARD_MODULES, "").split(",")))
    if not names <= known:
        os.environ[SHARD_MODULES] = ",".join(sorted(known | names))


@functools.cache
def _prctl() -> Any:
    """libc's prctl, resolved in the parent: a child between fork and exec must not import or take locks."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def die_with_parent() -> None:
    """Receive SIGKILL when the parent dies (called in the child: before exec, or first thing after a fork)."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, SIGKILL)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(extra or {}), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}


def start_module(module: str, *args: str, stdout: IO[Any] | int | None = None,
                 stderr: IO[Any] | int | None = subprocess.STDOUT, cwd: Path | str | None = None,
                 env: dict[str, str] | None = None, text: bool = False) -> subprocess.Popen[Any]:
    """`python -m module args...` as a child that dies with this process; stdin is closed, stderr joins stdout
    unless given. `env` adds to (never replaces) this process's environment."""
    _prctl()  # resolved here, in the parent
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr, cwd=cwd, env=child_env(env), text=text,
                            preexec_fn=die_with_parent)  # noqa: PLW1509 - prctl resolved above; takes no lock


def run_program(argv: list[str], cwd: Path) -> int:
    """A user's program (a command stage's) to its end; its exit status. It dies with this process, as qnnbuild's
    own children do (the programs it starts in turn are its own to end)."""
    _prctl()
    return subprocess.run(argv, cwd=cwd, check=False,
                          preexec_fn=die_with_parent).returncode  # prctl resolved above: takes no lock
