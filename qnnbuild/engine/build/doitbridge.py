"""The one module that talks to doit.

Each stage instance becomes a doit task: `task_dep` carries the DAG's edges, the up-to-date check is the
stage key (in the store, shown by the view), the action runs the stage through the Session. doit supplies
ordering, parallel execution (`-n N`, threads: the work itself happens in child processes), keep-going
after a failure and its dependency database under the artifacts folder.
"""

from __future__ import annotations

import os
import time
from typing import Any

from doit.cmd_base import TaskLoader2
from doit.doit_cmd import DoitMain
from doit.exceptions import BaseFail, TaskFailed, UnmetDependency
from doit.task import Task

from qnnbuild.engine.build.console import Console
from qnnbuild.engine.build.session import Session, label
from qnnbuild.engine.recipe.plan import Instance
from qnnbuild.errors import StageFailed

Named = dict[str, tuple[Session, Instance]]


def _names(sessions: list[Session]) -> Named:
    """doit task name → (session, instance): the instance id, prefixed by its recipe when several are built."""
    return {label(sessions, s, inst.id): (s, inst) for s in sessions for inst in s.plan.instances}


def _reporter_for(named: Named, console: Console) -> type:
    class Reporter:
        """doit's reporter protocol, turned into qnnbuild's progress lines and results."""

        def __init__(self, outstream: Any, options: Any) -> None:
            self.started: dict[str, float] = {}

        def initialize(self, tasks: Any, selected_tasks: Any) -> None: ...

        def get_status(self, task: Task) -> None: ...

        def execute_task(self, task: Task) -> None:
            self.started[task.name] = time.monotonic()
            session, inst = named[task.name]
            console.started(task.name, session.progress_file(inst))

        def add_success(self, task: Task) -> None:
            session, inst = named[task.name]
            console.ended(session.results[inst.id], task.name)

        def skip_uptodate(self, task: Task) -> None:
            self.add_success(task)

        def add_failure(self, task: Task, fail: BaseFail) -> None:
            session, inst = named[task.name]
            seconds = time.monotonic() - self.started.get(task.name, time.monotonic())
            results = session.results
            if isinstance(fail, UnmetDependency):
                bad = [d for d in inst.deps if results.get(d) and results[d].status in ("failed", "skipped")]
                session.fail(inst, "skipped", f"(upstream {', '.join(bad) or 'stage'} failed)")
            elif inst.id not in results or results[inst.id].status != "failed":
                session.fail(inst, "failed", _first_line(fail.get_msg()), seconds)
            else:
                results[inst.id].seconds = seconds
            console.ended(results[inst.id], task.name)

        def skip_ignore(self, task: Task) -> None: ...

        def cleanup_error(self, exception: Any) -> None:
            console.say(f"cleanup error: {exception}")

        def runtime_error(self, msg: str) -> None:
            console.say(f"doit: {msg}")

        def teardown_task(self, task: Task) -> None: ...

        def complete_run(self) -> None: ...

    return Reporter


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def _task(name: str, session: Session, inst: Instance, prefix: str) -> Task:
    def up_to_date(task: Task) -> bool:
        return session.current(inst)

    def action() -> TaskFailed | None:
        try:
            session.execute(inst)
        except StageFailed as exc:
            session.fail(inst, "failed", str(exc), log=exc.log)
            return TaskFailed(str(exc))
        return None

    return Task(name, actions=[(action, (), {})], task_dep=[prefix + d for d in inst.deps], uptodate=[up_to_date],
                verbosity=2, doc=f"{inst.kind} stage {inst.stage}")


class _Loader(TaskLoader2):  # type: ignore[misc]
    def __init__(self, named: Named, console: Console) -> None:
        super().__init__()
        self.named = named
        self.console = console

    def setup(self, opt_values: Any) -> None: ...

    def load_doit_config(self) -> dict[str, Any]:
        # verbosity 2: doit must not swap sys.stdout to capture actions (ours print nothing, and with the
        # thread runner two swaps interleave and leave sys.stdout pointing at a capture buffer)
        return {"reporter": _reporter_for(self.named, self.console), "verbosity": 2}

    def load_tasks(self, cmd: Any, pos_args: Any) -> list[Task]:
        return [_task(name, session, inst, name[: len(name) - len(inst.id)])
                for name, (session, inst) in self.named.items()]


def run_with_doit(sessions: list[Session], console: Console, selected: list[str], jobs: int) -> None:
    """Run `selected` tasks (and what they need) of every session in one doit run; results land in each
    session's `results`. Task names are instance ids, prefixed `recipe:` when there are several sessions."""
    db = sessions[0].artifacts / ".qnnbuild" / "doit.sqlite3"
    db.parent.mkdir(parents=True, exist_ok=True)
    argv = ["run", "--db-file", str(db), "--backend", "sqlite3", "--continue", "-n", str(max(1, jobs)),
            "-P", "thread", *selected]
    before = os.environ.get("QNNBUILD_JOBS")
    os.environ["QNNBUILD_JOBS"] = str(max(1, jobs))  # stage workers inherit it: validate's default shard count
    try:
        DoitMain(_Loader(_names(sessions), console), config_filenames=()).run(argv)
    finally:
        if before is None:
            os.environ.pop("QNNBUILD_JOBS", None)
        else:
            os.environ["QNNBUILD_JOBS"] = before
