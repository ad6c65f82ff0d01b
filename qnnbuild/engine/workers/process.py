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
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qnnbuild.common.child import child_env, die_with_parent, start_module, top_modules
from qnnbuild.common.faults import checkpoint
from qnnbuild.common.stamps import package_stamp
from qnnbuild.engine.keys.document import DIST
from qnnbuild.engine.keys.versions import site_stamp
from qnnbuild.errors import StageFailed
from qnnbuild.stages import KINDS
from qnnbuild.stages.base import StageRun

EXIT_STAGE_FAILED = 3


# imported once by the fork server, by name; a stage in a new interpreter imports them too, so that the distributions
# it loaded (its key's libraries) are the same either way
PRELOAD = ["qnnbuild.stages", "qnnbuild.toolchain.runtime.preload", "qnnbuild.engine.workers.libraries"]
_server: Any = None
_server_stamp: Any = None  # qnnbuild's files and the site folders as they were when the server imported PRELOAD


def _code_stamp() -> Any:
    """Taken now (not once per process): qnnbuild's modules and the site folders distributions live in."""
    return [package_stamp.__wrapped__(), site_stamp()]


def _forkserver() -> Any:
    """multiprocessing's fork server, started once per qnnbuild process with PRELOAD imported and the hash seed
    fixed (children inherit both; a hash seed cannot change after a process starts)."""
    global _server, _server_stamp  # noqa: PLW0603 - one per process
    if _server is None:
        import multiprocessing

        _server_stamp = _code_stamp()
        os.environ["PYTHONHASHSEED"] = "0"  # for the server, which every stage process is forked from
        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(PRELOAD)
    return _server


def _use_forkserver() -> bool:
    """Unless QNNBUILD_FORKSERVER=0, or the server's preloaded code is no longer what is installed: a long-lived
    Dask worker whose qnnbuild or distributions were upgraded underneath it then runs each stage in a new
    interpreter (the versions it proves and keys are the installed ones; the server's would be older)."""
    if os.environ.get("QNNBUILD_FORKSERVER", "1") == "0":
        return False
    if _server_stamp is not None and _code_stamp() != _server_stamp:
        _say_once("qnnbuild's code or installed distributions changed since this process started its stage "
                  "server; stages now start new interpreters")
        return False
    return True


_said: set[str] = set()


def _say_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(f"warning: {text}", file=sys.stderr)


_starting = threading.Lock()


@contextlib.contextmanager
def _starting_children() -> Iterator[None]:
    """While the fork server or a stage process starts: allowed from a daemonic process (a Dask nanny's
    worker), and without the caller's main module. multiprocessing refuses daemonic processes children so none
    outlives them; ours cannot: the server exits when its client does, and every stage process is SIGKILLed
    when the server dies (PR_SET_PDEATHSIG in _forked). And a child re-imports its parent's `__main__` (the
    `dask` command's, pytest's, `qnnbuild`'s own script): the stage would then load whatever its caller's
    script loads, and the distributions in its key (its `libraries`) would depend on who started it."""
    import multiprocessing
    import types

    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    with _starting:
        daemon, main = config.get("daemon"), sys.modules["__main__"]
        config["daemon"] = False
        sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to re-import
        try:
            yield
        finally:
            config["daemon"] = daemon
            sys.modules["__main__"] = main


def warm() -> None:
    """Start the fork server now, so its imports run while qnnbuild plans and hashes (a cold MobileNetV2 build's
    first stage paid them otherwise); a no-op where stages start new interpreters."""
    if _use_forkserver():
        from multiprocessing import forkserver

        _forkserver()
        with _starting_children():
            forkserver.ensure_running()


def stop_server() -> None:
    """End the fork server now, when a run that warmed it will run no stage (a recipe error): it inherited this
    process's stdout and stderr, and a caller reading them to the end (CI, `subprocess.run`) would otherwise wait
    for its imports (~1 s) to finish."""
    if _server is None:
        return
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


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
        with _starting_children():
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
    import importlib

    from qnnbuild.engine.workers import libraries, reads

    for module in PRELOAD:  # already there when forked from the server
        importlib.import_module(module)
    request = Path(argv[0])
    raw = json.loads(request.read_text())
    ctx = StageRun.from_json(raw["run"])
    engine = frozenset[str]()
    if raw.get("spread"):
        before = top_modules()
        from qnnbuild.engine.workers.spread import DaskSpread

        engine = frozenset(top_modules() - before)  # Dask's client: the engine's, not the stage's
        ctx = dataclasses.replace(ctx, spread=DaskSpread(**raw["spread"]))
    error_file = request.with_name("error.txt")
    seen = reads.watch()
    try:
        checkpoint("stage:running", ctx.instance)
        KINDS[raw["kind"]].run(ctx)
        files = {str(p.resolve()) for p in ctx.reads}  # what native code read, as the stage reported it
        files.update(str(p) for p in reads.project_reads(seen, ctx.root, [*ctx.files.values(), *ctx.inputs.values(),
                                                                        ctx.out]))
        found = sorted(files) + [f"{DIST}{d}" for d in libraries.loaded(engine)]
        request.with_name("discovered.json").write_text(json.dumps(found))
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
