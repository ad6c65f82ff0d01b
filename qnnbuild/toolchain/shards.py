"""Validation's per-sample work spread over worker processes: the samples are cut into contiguous shards, each
shard runs in its own process with its own sessions, and the outputs come back in sample order, so the merged
figures are the ones one process computes (every sample's outputs are the same wherever it runs).

Why processes: the HTP emulator runs one sample at a time per session and spreads it over the cores it is
allowed, so two sessions in one process contend; two processes pinned to a core each run side by side. A shard
whose process dies (killed, out of memory, a crash in native code) is run again in a fresh process, once; a
shard that raises fails the whole collection with its own message.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from qnnbuild.errors import StageFailed

Work = Callable[[dict[str, Any], int, int], Any]  # (spec, start, stop) → that range's result
RETRIES = 1
_done: Any = None  # samples done: a counter shared with the parent in a shard process, a callback in one process


def tick() -> None:
    """One sample done (the work function calls it): feeds the stage's progress display."""
    if callable(_done):
        _done()
    elif _done is not None:
        with _done.get_lock():
            _done.value += 1


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


def _init(slot: Any, done: Any) -> None:
    """Worker initializer: the shared progress counter, and the next free core (a shared counter), so N shards
    on N cores never share one."""
    global _done  # noqa: PLW0603 - one per shard process
    _done = done
    with slot.get_lock():
        index = slot.value
        slot.value += 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[index % len(cores)]})


def _crash_point(start: int) -> None:
    """The crash tests' hook (engine/faults.py's variables; the toolchain does not import the engine):
    QNNBUILD_KILL_AT=shard@<start> kills the shard starting at that sample, once per QNNBUILD_KILL_ONCE file."""
    if os.environ.get("QNNBUILD_KILL_AT") != f"shard@{start}":
        return
    try:
        os.close(os.open(os.environ["QNNBUILD_KILL_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except (FileExistsError, KeyError):
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _call(work: Work, spec: dict[str, Any], start: int, stop: int) -> tuple[Any, float]:
    _crash_point(start)
    started = time.perf_counter()
    return work(spec, start, stop), time.perf_counter() - started


def run(work: Work, spec: dict[str, Any], count: int, workers: int,
        progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[list[Any], list[float]]:
    """work(spec, start, stop) over `count` samples in `workers` processes (each pinned to its own core when
    there are cores enough); returns each shard's result in sample order and the seconds each took. With one
    worker the work runs here, in this process, as before sharding existed."""
    global _done  # noqa: PLW0603 - set for the work running here, cleared after
    parts = ranges(count, workers)
    if len(parts) == 1:
        done = [0]

        def counted() -> None:
            done[0] += 1
            progress(done[0], count)

        _done = counted
        try:
            result, seconds = _call(work, spec, 0, count)
        finally:
            _done = None
        return [result], [seconds]
    results: dict[int, tuple[Any, float]] = {}
    pending = list(range(len(parts)))
    for attempt in range(RETRIES + 1):
        lost = _round(work, spec, parts, pending, results, progress, count)
        if not lost:
            break
        if attempt == RETRIES:
            raise StageFailed(f"validation worker(s) died twice on samples {', '.join(_span(parts[i]) for i in lost)}"
                              "; see the stage log")
        print(f"warning: a validation worker died on samples {', '.join(_span(parts[i]) for i in lost)}; "
              "running them again in a fresh process", flush=True)
        pending = lost
    return [results[i][0] for i in range(len(parts))], [results[i][1] for i in range(len(parts))]


def _span(part: tuple[int, int]) -> str:
    return f"{part[0]}-{part[1] - 1}"


def _round(work: Work, spec: dict[str, Any], parts: list[tuple[int, int]], pending: list[int],
           results: dict[int, tuple[Any, float]], progress: Callable[[int, int], None], count: int) -> list[int]:
    """One process per pending shard (its own executor: a process that dies takes only its shard down); fills
    `results`, returns the shards whose process died."""
    context = multiprocessing.get_context("spawn")  # QNN's threads and state must not be forked
    slot, done = context.Value("i", 0), context.Value("i", sum(parts[i][1] - parts[i][0] for i in results))
    pools = [concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=_init, initargs=(slot, done))
             for _ in pending]
    lost = []
    try:
        futures = {pool.submit(_call, work, spec, *parts[i]): i for pool, i in zip(pools, pending, strict=True)}
        for future in _as_completed(futures, lambda: progress(min(done.value, count), count)):
            index = futures[future]
            try:
                results[index] = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                lost.append(index)
                continue
            except Exception as exc:  # the shard's own error, named with its samples
                raise StageFailed(f"samples {_span(parts[index])}: {str(exc).strip()}") from None
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)
    return sorted(lost)


def _as_completed(futures: dict[Any, int], poll: Callable[[], None]) -> Any:
    """concurrent.futures.as_completed, calling `poll` (the progress display) twice a second while it waits."""
    waiting = set(futures)
    while waiting:
        finished, waiting = concurrent.futures.wait(waiting, timeout=0.5,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
        poll()
        yield from finished
