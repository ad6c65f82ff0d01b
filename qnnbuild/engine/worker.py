"""Runs one stage instance in a fresh process: `spawn()` in the parent, `python -m qnnbuild.engine.worker
REQUEST.json` in the child.

Why a process per stage: QNN state leaks within a process (a second context generation differs by a few
kB; soc_model changes later sessions' numerics), libQnnHtp writes to file descriptor 1, and a crash in
native code must fail one stage, not the build. stdout and stderr are the stage's log file.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from qnnbuild.engine.faults import checkpoint
from qnnbuild.errors import StageFailed
from qnnbuild.stages import KINDS
from qnnbuild.stages.base import StageRun

EXIT_STAGE_FAILED = 3


@functools.cache
def _prctl() -> Any:
    """libc's prctl, resolved in the parent: the child between fork and exec must not import or lock."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def _die_with_parent() -> None:
    """In the worker, before exec: receive SIGKILL when qnnbuild dies, so no orphan keeps building."""
    prctl = _prctl()  # already cached by the parent (see _run_worker)
    if prctl is not None:
        prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def spawn(kind: str, run: StageRun, work: Path) -> None:
    """Run the stage in a child process writing into `work` (its log: work/.qnnbuild/stage.log)."""
    meta = work / ".qnnbuild"
    request = meta / "request.json"
    request.write_text(json.dumps({"kind": kind, "run": run.to_json()}))
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
    _prctl()
    with (meta / "stage.log").open("wb") as log:
        proc = subprocess.run([sys.executable, "-m", "qnnbuild.engine.worker", str(request)],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env,
                              check=False, preexec_fn=_die_with_parent)
    request.unlink()
    if proc.returncode != 0:
        error = meta / "error.txt"
        message = error.read_text().strip() if error.is_file() else f"worker died (status {proc.returncode})"
        error.unlink(missing_ok=True)
        raise StageFailed(message)


def main(argv: list[str]) -> int:
    request = Path(argv[0])
    raw = json.loads(request.read_text())
    ctx = StageRun.from_json(raw["run"])
    error_file = request.with_name("error.txt")
    try:
        checkpoint("stage:running", ctx.instance)
        KINDS[raw["kind"]].run(ctx)
        if ctx.reads:
            reads = sorted({str(p.resolve()) for p in ctx.reads})
            request.with_name("discovered.json").write_text(json.dumps(reads))
    except StageFailed as exc:
        error_file.write_text(str(exc))
        print(f"stage failed: {exc}", file=sys.stderr)
        return EXIT_STAGE_FAILED
    except Exception as exc:
        traceback.print_exc()
        error_file.write_text(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    raise SystemExit(main(sys.argv[1:]))
