"""`qnnbuild run RECIPE...`: one doit run over every recipe's instances, or the no-op when all are current."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnnbuild.engine.build.console import Console
from qnnbuild.engine.build.session import Session, label
from qnnbuild.engine.recipe.plancache import load_plan
from qnnbuild.errors import UsageError


@dataclass
class Request:
    recipes: list[str]
    artifacts: Path
    only: list[str] = field(default_factory=list)
    force: list[str] = field(default_factory=list)
    jobs: int = 1
    remote: Any = None  # RemoteCache | None
    executor: Any = None  # a Dask client wrapper (engine.cluster) or None for local worker processes


def sessions_for(request: Request) -> list[Session]:
    """One session per recipe, sharing caches and key locks; --only/--force name stages of any recipe."""
    plans = [load_plan(recipe, request.artifacts) for recipe in request.recipes]
    names = [p.recipe for p in plans]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two recipes are named {', '.join(twice)}: names share the artifacts folder")
    stages = {i.stage for p in plans for i in p.instances}
    for name in [*request.only, *request.force]:
        if name not in stages:
            raise UsageError(f"{', '.join(request.recipes)}: no stage named {name!r}; stages: "
                             f"{', '.join(sorted(stages))}")
    sessions: list[Session] = []
    for plan in plans:
        forced = frozenset(i.id for i in plan.instances if i.stage in request.force)
        sessions.append(Session(plan, request.artifacts, forced, request.remote, sessions[0] if sessions else None,
                                executor=request.executor))
    return sessions


def build(request: Request, console: Console) -> list[Session]:
    sessions = sessions_for(request)
    for s in sessions:
        console.say(f"qnnbuild: {s.plan.recipe} — {len(s.plan.instances)} stage instances → "
                    f"{request.artifacts}/{s.plan.recipe}"
                    + (f" (shared cache {request.remote.shown}, {request.remote.mode})" if request.remote else ""))
    verdicts = [s.assess(look_only=True) for s in sessions] if not (request.only or request.force) else []
    if verdicts and all(v.fresh and v.view_current for vs in verdicts for v in vs):
        for session, vs in zip(sessions, verdicts, strict=True):  # the no-op: no doit, no toolchain import
            for result in session.accept(vs):
                console.ended(result, label(sessions, session, result.id))
            _push_pending(session, console)
        sessions[0].save_caches()  # a touched input is re-hashed once, not on every later run
        return sessions
    from qnnbuild.engine.build.doitbridge import run_with_doit

    if request.remote is not None:
        request.remote.connect()  # a URL fsspec cannot open is a usage error before anything runs

    selected = [label(sessions, s, i.id) for s in sessions for i in s.plan.instances if i.stage in request.only]
    with sessions[0].store.exclusive():
        swept = sessions[0].store.sweep()
        if swept:
            console.say(f"removed {swept} unfinished work folder(s) left by an interrupted run")
        run_with_doit(sessions, console, selected, request.jobs)
        for session in sessions:
            _restore_deferred(session, console)
            _push_pending(session, console)
            session.write_lock()
    return sessions


def _restore_deferred(session: Session, console: Console) -> None:
    started = time.monotonic()
    count, size = session.restore_deferred()
    if count:
        console.say(f"restored {count} worker-built entr{'y' if count == 1 else 'ies'} from the shared cache "
                    f"({size / 1e6:,.1f} MB, {time.monotonic() - started:.1f} s)")


def _push_pending(session: Session, console: Console) -> None:
    pushed, gone = session.push_pending()
    if pushed:
        console.say(f"uploaded {pushed} entr{'y' if pushed == 1 else 'ies'} an earlier run could not")
    if gone:
        console.say(f"{gone} entr{'y' if gone == 1 else 'ies'} an earlier run could not upload no longer "
                    "exist here (removed since); not uploaded")
