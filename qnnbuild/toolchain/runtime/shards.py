"""Per-sample work (validation, layer error) spread over processes: the samples are cut into contiguous shards,
each shard runs in a fresh process with its own sessions, and the results come back in sample order, so the
merged figures are the ones one process computes (every sample's outputs are the same wherever it runs).

Why a process per shard: the HTP emulator runs one sample at a time per session and spreads it over the cores
it is allowed, so two sessions in one process contend, and QNN's state leaks within a process. Locally, the
shards' processes are left to the OS scheduler (pinning shard i to core i put the shards of every instance
running side by side onto the same cores); on a Dask cluster (`spread`, given by the engine) each shard is a
task and its process runs on the worker that took it. The process is a new interpreter (`python -m
qnnbuild.toolchain.runtime.shards FOLDER`), not a multiprocessing child, because a Dask worker is a daemonic process,
which multiprocessing refuses children.

A shard whose process dies (killed, out of memory, a crash in native code) is run again in a fresh process,
once; a shard that raises fails the whole collection with its own message and the tail of its log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import write_bytes
from qnnbuild.common.child import loaded_in_shards, start_module, top_modules
from qnnbuild.common.faults import checkpoint
from qnnbuild.errors import StageFailed

Work = Callable[[dict[str, Any], int, int], Any]  # (spec, start, stop) → that range's result
Report = Callable[[int], None]  # samples of one shard done so far
# (spec, start, stop, report) → ((result, the shard process's top-level modules), seconds)
RunRange = Callable[..., tuple[Any, float]]
Spread = Callable[[RunRange, dict[str, Any], list[tuple[int, int]], Report], list[tuple[Any, float]]]
RETRIES = 1
POLL_S = 0.5
_done: Callable[[], None] | None = None  # one sample done: set while work runs


class ShardLost(ChildProcessError):
    """A shard's process died before it answered: the shard may run again (elsewhere, on a cluster)."""


def tick() -> None:
    """One sample done (the work function calls it): feeds the stage's progress display."""
    if _done is not None:
        _done()


def ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """`count` samples as `shards` contiguous ranges, the first ones one longer when it does not divide."""
    shards = max(1, min(shards, count))
    size, extra = divmod(count, shards)
    found, start = [], 0
    for i in range(shards):
        stop = start + size + (1 if i < extra else 0)
        found.append((start, stop))
        start = stop
    return found


def span(part: tuple[int, int]) -> str:
    return f"{part[0]}-{part[1] - 1}"


def run(work: Work, spec: dict[str, Any], count: int, workers: int,
        progress: Callable[[int, int], None] = lambda done, total: None,
        spread: Spread | None = None, ticks: int = 1) -> tuple[list[Any], list[float]]:
    """work(spec, start, stop) over `count` samples in `workers` shards: processes here, or tasks on the
    cluster through `spread`; each shard's result in sample order, and its seconds. One
    shard and no cluster: the work runs in this process (a stage process already is a fresh one). `ticks`: how
    many times the work calls tick() per sample (once per model, where it runs its models in turn)."""
    parts = ranges(count, workers)
    total = count * ticks
    if len(parts) == 1 and spread is None:
        return _here(work, spec, count, lambda done: progress(done, total))
    print(f"{count} samples in {len(parts)} shard(s) " + ("as Dask tasks" if spread else "over processes"),
          flush=True)
    answers = (spread or _local)(functools.partial(isolated, work), spec, parts,
                                 lambda done: progress(min(done, total), total))
    for (_, modules), _seconds in answers:  # what ran in shards ran for this stage (its key's libraries)
        loaded_in_shards(set(modules))
    return [a[0][0] for a in answers], [a[1] for a in answers]


def _here(work: Work, spec: dict[str, Any], count: int, progress: Report) -> tuple[list[Any], list[float]]:
    global _done  # noqa: PLW0603 - set for the work running here, cleared after
    done = [0]

    def counted() -> None:
        done[0] += 1
        progress(done[0])

    _done = counted
    try:
        started = time.perf_counter()
        result = work(spec, 0, count)
        return [result], [time.perf_counter() - started]
    finally:
        _done = None


def _local(run_range: RunRange, spec: dict[str, Any], parts: list[tuple[int, int]],
           progress: Report) -> list[tuple[Any, float]]:
    """Every shard in its own process on this machine; a lost one runs again once."""
    counts = [0] * len(parts)
    results: dict[int, tuple[Any, float]] = {}
    pending = list(range(len(parts)))

    def report_for(index: int) -> Report:
        def report(done: int) -> None:
            counts[index] = done
            progress(sum(counts))
        return report

    for attempt in range(RETRIES + 1):
        lost = []
        with concurrent.futures.ThreadPoolExecutor(len(pending)) as pool:
            futures = {pool.submit(run_range, spec, *parts[i], report_for(i)): i for i in pending}
            for future in concurrent.futures.as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except ShardLost:
                    lost.append(futures[future])
        if not lost:
            break
        named = ", ".join(span(parts[i]) for i in sorted(lost))
        if attempt == RETRIES:
            raise StageFailed(f"validation worker(s) died twice on samples {named}; see the stage log")
        print(f"warning: a validation worker died on samples {named}; running them again in a fresh process",
              flush=True)
        pending = sorted(lost)
    return [results[i] for i in range(len(parts))]


def isolated(work: Work, spec: dict[str, Any], start: int, stop: int, report: Report = lambda done: None
             ) -> tuple[Any, float]:
    """work(spec, start, stop) in a new interpreter, calling `report` with its samples done while it runs;
    ((its result, the top-level modules its process loaded), seconds). Raises ShardLost when the process dies,
    StageFailed (with the tail of its log) when the work raises."""
    with tempfile.TemporaryDirectory(prefix="qnnbuild-shard-") as tmp:
        folder = Path(tmp)
        (folder / "job.pkl").write_bytes(pickle.dumps((work, spec, start, stop)))
        with (folder / "log").open("wb") as log:
            proc = start_module("qnnbuild.toolchain.runtime.shards", tmp, stdout=log)
            try:
                _watch(proc, folder / "done", report)
            finally:
                if proc.poll() is None:  # our caller was interrupted: no orphan keeps running
                    proc.kill()
                    proc.wait()
        answer = folder / "answer.pkl"
        tail = (folder / "log").read_text(errors="replace")[-2000:].strip()
        if not answer.is_file():
            raise ShardLost(f"samples {span((start, stop))}: the shard's process died (status {proc.returncode})"
                            + (f"; its log ends:\n{tail}" if tail else ""))
        outcome = pickle.loads(answer.read_bytes())  # noqa: S301 - written by our own child, just now
    if outcome[0] == "error":
        raise StageFailed(f"samples {span((start, stop))}: {outcome[1]}" + (f"\n{tail}" if tail else ""))
    return outcome[1], outcome[2]


def _watch(proc: subprocess.Popen[bytes], counter: Path, report: Report) -> None:
    """Wait for the shard's process, reporting its count (a file it rewrites) whenever the count moves."""
    seen = -1
    while True:
        ended = proc.poll() is not None
        with contextlib.suppress(OSError, ValueError):
            done = int(counter.read_text() or 0)
            if done != seen:
                seen = done
                report(done)
        if ended:
            return
        time.sleep(POLL_S)


def _child(folder: Path) -> int:
    """The shard's process: the job from job.pkl, its count into `done`, its outcome into answer.pkl."""
    global _done  # noqa: PLW0603 - this process runs one shard
    work, spec, start, stop = pickle.loads((folder / "job.pkl").read_bytes())  # noqa: S301 - ours
    count = [0, 0.0]

    def counted() -> None:
        count[0] += 1
        if time.monotonic() - count[1] >= POLL_S / 2:
            count[1] = time.monotonic()
            write_bytes(folder / "done", str(count[0]).encode())

    _done = counted
    checkpoint("shard", str(start))  # the crash tests' hook: QNNBUILD_KILL_AT=shard@<first sample>
    started = time.perf_counter()
    try:
        result = work(spec, start, stop)
        outcome: tuple[Any, ...] = ("ok", (result, sorted(top_modules())), time.perf_counter() - started)
    except Exception as exc:  # the shard's own error: its message goes to the parent
        outcome = ("error", str(exc).strip() if isinstance(exc, StageFailed) else f"{type(exc).__name__}: {exc}")
    write_bytes(folder / "done", str(count[0]).encode())
    write_bytes(folder / "answer.pkl", pickle.dumps(outcome))
    return 0 if outcome[0] == "ok" else 1


if __name__ == "__main__":  # through the imported module: the work's tick() calls reach the same _done
    import importlib

    raise SystemExit(importlib.import_module("qnnbuild.toolchain.runtime.shards")._child(Path(sys.argv[1])))
