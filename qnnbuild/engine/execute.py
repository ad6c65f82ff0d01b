"""The one module that talks to doit.

Each stage instance becomes a doit task: `task_dep` carries the DAG's edges, the up-to-date check is the
stage key (in the store, shown by the view), the action runs the stage through the Session. doit supplies
ordering, parallel execution (`-n N`, threads: the work itself happens in child processes), keep-going
after a failure and its dependency database under the artifacts folder.
"""

from __future__ import annotations

import time
from typing import Any

from doit.cmd_base import TaskLoader2
from doit.doit_cmd import DoitMain
from doit.exceptions import BaseFail, TaskFailed, UnmetDependency
from doit.task import Task

from qnnbuild.console import Console
from qnnbuild.engine.graph import Instance
from qnnbuild.engine.session import Session
from qnnbuild.errors import StageFailed


def _reporter_for(session: Session, console: Console) -> type:
    by_id = session.plan.by_id()

    class Reporter:
        """doit's reporter protocol, turned into qnnbuild's progress lines and results."""

        def __init__(self, outstream: Any, options: Any) -> None:
            self.started: dict[str, float] = {}

        def initialize(self, tasks: Any, selected_tasks: Any) -> None: ...

        def get_status(self, task: Task) -> None: ...

        def execute_task(self, task: Task) -> None:
            self.started[task.name] = time.monotonic()
            console.started(task.name)

        def add_success(self, task: Task) -> None:
            console.ended(session.results[task.name])

        def skip_uptodate(self, task: Task) -> None:
            console.ended(session.results[task.name])

        def add_failure(self, task: Task, fail: BaseFail) -> None:
            inst = by_id[task.name]
            seconds = time.monotonic() - self.started.get(task.name, time.monotonic())
            if isinstance(fail, UnmetDependency):
                bad = [d for d in inst.deps if session.results.get(d) and
                       session.results[d].status in ("failed", "skipped")]
                session.fail(inst, "skipped", f"(upstream {', '.join(bad) or 'stage'} failed)")
            elif task.name not in session.results or session.results[task.name].status != "failed":
                session.fail(inst, "failed", _first_line(fail.get_msg()), seconds)
            else:
                session.results[task.name].seconds = seconds
            console.ended(session.results[task.name])

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


def _task(session: Session, inst: Instance) -> Task:
    def up_to_date(task: Task) -> bool:
        return session.current(inst)

    def action() -> TaskFailed | None:
        try:
            session.execute(inst)
        except StageFailed as exc:
            session.fail(inst, "failed", str(exc), log=exc.log)
            return TaskFailed(str(exc))
        return None

    return Task(inst.id, actions=[(action, (), {})], task_dep=list(inst.deps), uptodate=[up_to_date], verbosity=2,
                doc=f"{inst.kind} stage {inst.stage}")


class _Loader(TaskLoader2):  # type: ignore[misc]
    def __init__(self, session: Session, console: Console) -> None:
        super().__init__()
        self.session = session
        self.console = console

    def setup(self, opt_values: Any) -> None: ...

    def load_doit_config(self) -> dict[str, Any]:
        # verbosity 2: doit must not swap sys.stdout to capture actions (ours print nothing, and with the
        # thread runner two swaps interleave and leave sys.stdout pointing at a capture buffer)
        return {"reporter": _reporter_for(self.session, self.console), "verbosity": 2}

    def load_tasks(self, cmd: Any, pos_args: Any) -> list[Task]:
        return [_task(self.session, inst) for inst in self.session.plan.instances]


def run_with_doit(session: Session, console: Console, selected: list[str], jobs: int) -> None:
    """Run `selected` instances (and what they need) through doit; results land in `session.results`."""
    db = session.artifacts / ".qnnbuild" / "doit.sqlite3"
    db.parent.mkdir(parents=True, exist_ok=True)
    argv = ["run", "--db-file", str(db), "--backend", "sqlite3", "--continue", "-n", str(max(1, jobs)),
            "-P", "thread", *selected]
    DoitMain(_Loader(session, console), config_filenames=()).run(argv)
