"""Runs one stage instance in a fresh process: `spawn()` in the parent, `python -m qnnbuild.engine.workers.process
REQUEST.json` in the child.

Why a process per stage: QNN state leaks within a process (a second context generation differs by a few
kB; soc_model changes later sessions' numerics), libQnnHtp writes to file descriptor 1, and a crash in
native code must fail one stage, not the build. stdout and stderr are the stage's log file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qnnbuild.common.child import child_env, die_with_parent, start_module
from qnnbuild.common.faults import checkpoint
from qnnbuild.errors import StageFailed
from qnnbuild.stages import KINDS
from qnnbuild.stages.base import StageRun

EXIT_STAGE_FAILED = 3


PRELOAD = ["qnnbuild.stages", "qnnbuild.toolchain.runtime.preload"]  # imported once by the fork server, by name
_server: Any = None


def _forkserver() -> Any:
    """multiprocessing's fork server, started once per qnnbuild process with PRELOAD imported and the hash seed
    fixed (children inherit both; a hash seed cannot change after a process starts)."""
    global _server  # noqa: PLW0603 - one per process
    if _server is None:
        import multiprocessing

        os.environ["PYTHONHASHSEED"] = "0"  # for the server, which every stage process is forked from
        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(PRELOAD)
    return _server


def _use_forkserver() -> bool:
    """Unless QNNBUILD_FORKSERVER=0."""
    return os.environ.get("QNNBUILD_FORKSERVER", "1") != "0"


_daemon_flag = threading.Lock()


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a daemonic process (a Dask nanny's worker) start the fork server and its children. multiprocessing
    refuses daemonic processes children so none outlives them; ours cannot: the server exits when its client
    does, and every stage process is SIGKILLed when the server dies (PR_SET_PDEATHSIG in _forked)."""
    import multiprocessing

    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    with _daemon_flag:
        daemon = config.get("daemon")
        config["daemon"] = False
        try:
            yield
        finally:
            config["daemon"] = daemon


def warm() -> None:
    """Start the fork server now, so its imports run while qnnbuild plans and hashes (a cold MobileNetV2 build's
    first stage paid them otherwise); a no-op where stages start new interpreters."""
    if _use_forkserver():
        from multiprocessing import forkserver

        _forkserver()
        with _children_allowed():
            forkserver.ensure_running()


def _forked(request: str, work: str, log: str, env: dict[str, str]) -> None:
    """The stage process, forked from the server: the caller's environment now, its log as stdout and stderr,
    its work folder as cwd, SIGKILL when the server (so qnnbuild) dies; then what `python -m` would run."""
    from multiprocessing import forkserver

    # The server stays up while any child holds its "client alive" pipe, and hands every child one: closed here,
    # a qnnbuild killed mid-stage ends the server, whose death kills this process (PR_SET_PDEATHSIG below).
    os.close(forkserver._forkserver._forkserver_alive_fd)  # type: ignore[attr-defined]
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - fd 1 is the log
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(work)
    die_with_parent()
    sys.exit(main([request]))


def _run(request: Path, work: Path, log: Path, extra_env: dict[str, str]) -> int:
    """The stage in a fresh process: forked from the fork server (imports paid once), or a new interpreter
    (`python -m qnnbuild.engine.workers.process`) with QNNBUILD_FORKSERVER=0; its exit status."""
    if _use_forkserver():
        env = child_env(extra_env)
        warm()  # the first stage of a run that did not start it early (a no-op run never starts it)
        process = _forkserver().Process(target=_forked, args=(str(request), str(work), str(log), env))
        with _children_allowed():
            process.start()
        process.join()
        return int(process.exitcode if process.exitcode is not None else 1)
    with log.open("wb") as out:
        return start_module("qnnbuild.engine.workers.process", str(request), stdout=out, cwd=work,
                            env=extra_env).wait()


def spawn(kind: str, run: StageRun, work: Path, spread: dict[str, Any] | None = None,
          env: dict[str, str] | None = None) -> None:
    """Run the stage in a child process writing into `work` (its log: work/.qnnbuild/stage.log); on a Dask
    worker, `spread` lets it run its shards as tasks (engine/workers/spread.py) and `env` carries what must not touch
    a file (the cache URL)."""
    meta = work / ".qnnbuild"
    request = meta / "request.json"
    request.write_text(json.dumps({"kind": kind, "run": run.to_json(), "spread": spread}))
    returncode = _run(request, work, meta / "stage.log", env or {})
    request.unlink()
    if returncode != 0:
        error = meta / "error.txt"
        message = error.read_text().strip() if error.is_file() else f"worker died (status {returncode})"
        error.unlink(missing_ok=True)
        raise StageFailed(message)


def main(argv: list[str]) -> int:
    request = Path(argv[0])
    raw = json.loads(request.read_text())
    ctx = StageRun.from_json(raw["run"])
    if raw.get("spread"):
        from qnnbuild.engine.workers.spread import DaskSpread

        ctx = dataclasses.replace(ctx, spread=DaskSpread(**raw["spread"]))
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
